"""``amagi reprocess``: stored cases chosen with the ``cases list`` filters are queued for the
configured model, once; failed ones again; videos gone from the spool are named (exit 1)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

import db
from db.queue import claim_next, fail
from db.schema import Instance, Job, JobState
from tests.db.conftest import build_cohort


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

    r = run_cli("reprocess", *tiny, "--model", "amagi-sf50", "--dry-run", env=env)
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
