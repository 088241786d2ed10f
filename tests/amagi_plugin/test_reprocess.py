"""``amagi reprocess``: stored cases chosen with the ``cases list`` filters are queued for the
configured model, once; failed ones again; videos gone from the spool are named (exit 1)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

import db
from amagi_plugin.config import load_config
from amagi_plugin.runtime import analyzer_from_config
from amagi_plugin.service.app import Service
from db.queue import claim_next, fail
from db.schema import Delivery, DeliveryState, Instance, Job, JobState
from tests.amagi_plugin.serve_support import (
    StoreSCP,
    free_port,
    make_video,
    running,
    storescu,
    wait_until,
)
from tests.db.conftest import AUTHORS, build_cohort


def _cohort(tmp_path: Path) -> tuple[str, dict[str, int], dict[str, str]]:
    """The cohort of tests/db with its videos in a spool, F's missing; letter → SOP UID."""
    url = f"sqlite:///{tmp_path / 'var' / 'amagi.db'}"
    database = db.open_database(url)
    ids = build_cohort(database)
    spool = tmp_path / "spool"
    spool.mkdir()
    uids = {}
    with database.session() as s:
        for letter, case_id in ids.items():
            inst = s.get_one(Job, case_id).instance
            uids[letter] = inst.sop_instance_uid
            path = spool / f"{letter}.dcm"
            if letter != "F":
                path.write_bytes(b"video")
            inst.spool_path = str(path)
    database.dispose()
    return url, ids, uids


def _jobs(url: str, version: str) -> dict[str, JobState]:
    database = db.open_database(url, read_only=True)
    try:
        with database.session() as s:
            rows = s.execute(sa.select(Instance.sop_instance_uid, Job.state)
                             .join(Instance, Instance.id == Job.instance_id)
                             .where(Job.model_version == version)).all()
    finally:
        database.dispose()
    return {uid: JobState(state) for uid, state in rows}


def test_reprocess_queues_matching_cases_once(run_cli, tmp_path, tiny_checkpoint):
    url, _, uids = _cohort(tmp_path)
    env = {"AMAGI_DATABASE_URL": url}
    tiny = ("--model-name", "amagi_tiny", "--model-checkpoint", str(tiny_checkpoint))
    version = tiny_checkpoint.stem
    by_uid = {v: k for k, v in uids.items()}

    r = run_cli("reprocess", *tiny, "--model", AUTHORS[0], "--dry-run", env=env)
    assert r.code == 0, r.stderr
    assert "1 video(s) match; 1 would be queued for amagi_tiny amagi_tiny_test" in r.stdout
    assert _jobs(url, version) == {}

    r = run_cli("reprocess", *tiny, "--study-date-from", "2024-03-01", "--min-events", "1",
                env=env)
    assert r.code == 0, r.stderr
    assert "2 video(s) match: 2 queued for amagi_tiny amagi_tiny_test, 0 failed job(s) " \
        "queued again, 0 already analysed or queued with it" in r.stdout
    assert {by_uid[u]: s for u, s in _jobs(url, version).items()} == {
        "A": JobState.QUEUED, "D": JobState.QUEUED}

    r = run_cli("reprocess", *tiny, "--study-date-from", "2024-03-01", "--min-events", "1",
                env=env)
    assert r.code == 0 and "0 queued" in r.stdout and "2 already analysed" in r.stdout

    r = run_cli("reprocess", *tiny, env=env)  # every case; F's video is gone
    assert r.code == 1, r.stderr
    assert "6 video(s) match: 3 queued" in r.stdout and "2 already analysed" in r.stdout
    assert f"1 video(s) no longer in the spool, not queued: {uids['F']}" in r.stdout
    assert sorted(by_uid[u] for u in _jobs(url, version)) == ["A", "B", "C", "D", "E"]

    database = db.open_database(url)  # a worker running the tiny model fails on one
    with database.session() as s:
        claimed = claim_next(s, "h:1:w0", 60, model_version=version)
    with database.session() as s:
        fail(s, claimed.job_id, "h:1:w0", "decoder error", permanent=True)
    database.dispose()
    r = run_cli("reprocess", *tiny, "--model", version, "--state", "failed", env=env)
    assert r.code == 0, r.stderr
    assert "1 video(s) match: 0 queued for amagi_tiny amagi_tiny_test, 1 failed job(s) " \
        "queued again" in r.stdout
    assert set(_jobs(url, version).values()) == {JobState.QUEUED}


def test_reprocess_needs_the_model_files(run_cli, tmp_path):
    url, _, _ = _cohort(tmp_path)
    r = run_cli("reprocess", "--model-name", "amagi_tiny", "--model-checkpoint",
                str(tmp_path / "nope.pth"), env={"AMAGI_DATABASE_URL": url})
    assert r.code == 3 and "model checkpoint not found" in r.stderr


@pytest.mark.integration
def test_reprocessed_case_is_analysed_by_a_worker_of_the_new_model(tmp_path, tiny_checkpoint,
                                                                   run_cli):
    """A video analysed by the demo model, queued again for another model: a service running
    that model analyses it and delivers results whose SR names the first one."""
    port = free_port()
    base = {"storage.var_dir": str(tmp_path / "var"), "storage.reserve_mb": "16",
            "listener.port": str(port), "listener.bind_address": "127.0.0.1",
            "delivery.retry_initial_s": "0.5", "delivery.retry_max_s": "2"}
    tiny = {"model.name": "amagi_tiny", "model.checkpoint": str(tiny_checkpoint),
            "analysis.threshold": "1e-6"}
    video = make_video(tmp_path / "v.dcm", seconds=1.0)
    with running(StoreSCP(tmp_path / "pacs")) as pacs:
        base["delivery.destinations"] = pacs.destination

        def serve(overrides):
            cfg = load_config(environ={}, cwd=tmp_path, overrides=overrides)
            analyzer, spec = analyzer_from_config(cfg)
            svc = Service(cfg, analyzer, spec)
            svc.start()
            return svc, spec

        svc, demo = serve(base)
        try:
            assert storescu(port, video).returncode == 0
            wait_until(lambda: _done(svc) == 1, 120, what="the demo analysis")
            wait_until(lambda: _all_sent(svc), 60, what="the demo results")
        finally:
            svc.stop()
        first = {ds.SOPInstanceUID for ds in pacs.received() if ds.Modality == "SR"}
        assert len(first) == 1

        url = f"sqlite:///{tmp_path / 'var' / 'amagi.db'}"
        r = run_cli("reprocess", "--model-name", "amagi_tiny", "--model-checkpoint",
                    str(tiny_checkpoint), "--model", demo.version, env={"AMAGI_DATABASE_URL": url})
        assert r.code == 0 and "1 queued for amagi_tiny" in r.stdout, (r.stdout, r.stderr)

        svc, _ = serve({**base, **tiny})
        try:
            wait_until(lambda: _done(svc) == 2, 120, what="the re-analysis")
            wait_until(lambda: _all_sent(svc), 60, what="the new results")
        finally:
            svc.stop()
        (second,) = [ds for ds in pacs.received() if ds.Modality == "SR"
                     and ds.SOPInstanceUID not in first]
        refs = [item.ReferencedSOPInstanceUID for study in second.PredecessorDocumentsSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence]
        assert refs == list(first)
        assert second.ContentSequence  # a report, not an empty shell
        assert _jobs(url, tiny_checkpoint.stem) == {
            pydicom.dcmread(video, stop_before_pixels=True).SOPInstanceUID: JobState.DONE}


def _done(svc) -> int:
    with svc.database.session() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(Job)
                        .where(Job.state == JobState.DONE))


def _all_sent(svc) -> bool:
    """Every produced object is delivered (and there is one at least)."""
    with svc.database.session() as s:
        states = list(s.scalars(sa.select(Delivery.state)))
    return bool(states) and set(states) == {DeliveryState.SENT}
