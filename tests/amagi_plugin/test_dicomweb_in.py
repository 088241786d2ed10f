"""DICOMweb in, on loopback: videos uploaded to Orthanc (REST ``POST /instances``, with its
DICOMweb plugin and basic authentication) are found by QIDO-RS, retrieved by WADO-RS and
analysed by ``amagi process``, or queued exactly once by ``amagi poll`` and analysed by
``amagi serve``. What is expected is read from the uploaded files and from the case store,
never from the code under test.
"""

from __future__ import annotations

import json

import pydicom
import pytest
import sqlalchemy as sa

from amagi_plugin.config import load_config
from amagi_plugin.runtime import analyzer_from_config
from amagi_plugin.service.app import Service
from db import open_database
from db.schema import Instance, Job
from tests.amagi_plugin.serve_support import Orthanc, free_port, make_video, running, wait_until

pytestmark = pytest.mark.integration

USERS = {"amagi": "pw-from-the-environment"}
PASSWORD_ENV = "AMAGI_TEST_QIDO_PASSWORD"
STUDY = "1.2.826.0.1.3680043.10.5432.1"


def _auth(password_env: str = PASSWORD_ENV) -> list[str]:
    return ["--web-auth", "basic", "--web-username", "amagi", "--web-password-env", password_env]


def _model(tiny_checkpoint) -> list[str]:
    return ["--model-name", "amagi_tiny", "--model-checkpoint", str(tiny_checkpoint)]


def _upload(orthanc: Orthanc, path) -> pydicom.Dataset:
    orthanc.post("/instances", path.read_bytes())
    return pydicom.dcmread(path, stop_before_pixels=True)


def test_process_analyses_each_video_of_a_dicomweb_study(run_cli, tmp_path, tiny_checkpoint):
    with running(Orthanc(tmp_path / "orthanc", free_port(), dicomweb=True, users=USERS)) as o:
        a = _upload(o, make_video(tmp_path / "a.dcm", seconds=0.5, seed=1, study_uid=STUDY))
        b = _upload(o, make_video(tmp_path / "b.dcm", seconds=0.5, seed=2, study_uid=STUDY))
        other = _upload(o, make_video(tmp_path / "c.dcm", seconds=0.5, seed=3))
        out = tmp_path / "out"
        url = f"dicomweb+{o.dicomweb_url}/studies/{a.StudyInstanceUID}"
        env = {PASSWORD_ENV: USERS["amagi"]}
        r = run_cli("process", url, "-od", str(out), "--no-progress", *_model(tiny_checkpoint),
                    *_auth(), env=env)
        assert r.code == 0, r.stderr
        assert f"2 video instance(s) retrieved from {o.dicomweb_url}" in r.stdout
        analysed = {p.name for p in out.iterdir()}
        assert analysed == {a.SOPInstanceUID, b.SOPInstanceUID}  # nothing of the other study
        assert other.SOPInstanceUID not in analysed
        for uid in analysed:
            summary = json.loads((out / uid / "summary.json").read_text())
            assert summary["duration_s"] == pytest.approx(0.5, abs=0.05)
            assert any((out / uid / "dicom").iterdir())  # SR, SEG... for DICOM input

        # The secret's variable unset: a usage error before anything is fetched or loaded.
        r = run_cli("process", url, "-od", str(tmp_path / "out2"), *_auth(), env={})
        assert r.code == 2
        assert f"environment variable {PASSWORD_ENV} (its password) is not set" in r.stderr
        # A wrong password: Orthanc's 401, reported as a refusal, not retried.
        r = run_cli("process", url, "-od", str(tmp_path / "out3"), *_model(tiny_checkpoint),
                    *_auth(), env={PASSWORD_ENV: "wrong"})
        assert r.code == 3, r.stderr
        assert f"QIDO-RS: HTTP 401 Unauthorized from {o.dicomweb_url}" in r.stderr
        assert not (tmp_path / "out3").exists() or not any((tmp_path / "out3").iterdir())
        # A study without video: said so.
        r = run_cli("process", f"dicomweb+{o.dicomweb_url}/studies/1.2.3.4", "-od",
                    str(tmp_path / "out4"), *_model(tiny_checkpoint), *_auth(), env=env)
        assert r.code == 3
        assert "no video instance" in r.stderr and "study 1.2.3.4" in r.stderr


def _jobs(var) -> list[tuple[str, str]]:
    database = open_database(f"sqlite:///{var}/amagi.db")
    try:
        with database.session() as s:
            return [(uid, state.value) for uid, state in s.execute(
                sa.select(Instance.sop_instance_uid, Job.state).join(Job.instance)
                .order_by(Job.id))]
    finally:
        database.dispose()


def test_poll_queues_each_new_video_once_and_serve_analyses_it(run_cli, tmp_path,
                                                               tiny_checkpoint):
    var = tmp_path / "var"
    common = ["--storage-var-dir", str(var), *_model(tiny_checkpoint)]
    env = {PASSWORD_ENV: USERS["amagi"]}
    with running(Orthanc(tmp_path / "orthanc", free_port(), dicomweb=True, users=USERS)) as o:
        first = _upload(o, make_video(tmp_path / "a.dcm", seconds=0.5, seed=4))
        r = run_cli("poll", "--source", o.dicomweb_url, "--once", *common, *_auth(), env=env)
        assert r.code == 0, r.stderr
        assert "1 video instance(s) listed, 0 already known, 1 retrieved and queued" in r.stdout
        assert _jobs(var) == [(first.SOPInstanceUID, "queued")]
        spooled = var / "spool" / first.StudyInstanceUID / first.SeriesInstanceUID / \
            f"{first.SOPInstanceUID}.dcm"
        assert spooled.read_bytes() == (tmp_path / "a.dcm").read_bytes()
        assert not any((var / "spool" / ".webin").iterdir())

        # A second poll (a restarted poller): nothing new, nothing queued again.
        r = run_cli("poll", "--source", o.dicomweb_url + "/", "--once", *common, *_auth(),
                    env=env)
        assert r.code == 0, r.stderr
        assert "1 video instance(s) listed, 1 already known, 0 retrieved and queued" in r.stdout
        assert len(_jobs(var)) == 1

        # A new upload: only it is queued by the next poll.
        second = _upload(o, make_video(tmp_path / "b.dcm", seconds=0.5, seed=5))
        r = run_cli("poll", "--source", o.dicomweb_url, "--once", *common, *_auth(), env=env)
        assert r.code == 0, r.stderr
        assert "2 video instance(s) listed, 1 already known, 1 retrieved and queued" in r.stdout
        assert _jobs(var) == [(first.SOPInstanceUID, "queued"), (second.SOPInstanceUID, "queued")]

    # amagi serve on the same storage analyses the polled videos like pushed ones.
    cfg = load_config(None, environ={}, cwd=tmp_path, overrides={
        "storage.var_dir": str(var), "storage.reserve_mb": "16",
        "listener.port": str(free_port()), "listener.bind_address": "127.0.0.1",
        "model.name": "amagi_tiny", "model.checkpoint": str(tiny_checkpoint)})
    analyzer, spec = analyzer_from_config(cfg)
    svc = Service(cfg, analyzer, spec)
    svc.start()
    try:
        wait_until(lambda: {s for _, s in _jobs(var)} == {"done"}, 120,
                   what="the polled videos analysed")
    finally:
        svc.stop()
    assert len(_jobs(var)) == 2


def _old_video(tmp_path, name: str, seed: int, study_date: str):
    """A video of a study of ``study_date`` (a late upload to an older study)."""
    import numpy as np

    from dicom_io.encode import VideoMetadata, write_video_dicom

    rng = np.random.default_rng(seed)
    frames = [np.clip(rng.normal(120, 30, (96, 128, 3)), 0, 255).astype(np.uint8)
              for _ in range(15)]
    meta = VideoMetadata(patient_name="Test^Old", patient_id=f"OLD{seed}",
                         study_date=study_date)
    write_video_dicom(frames, tmp_path / name, fps=30.0, meta=meta)
    return tmp_path / name


def test_poll_of_recent_studies_between_full_listings(tmp_path, tiny_checkpoint):
    """With recent_days, polls between two full listings ask Orthanc only for the studies of
    the last days (its QIDO-RS range matching decides what is listed); a video added to an old
    study is found by the next full listing, and a failed retrieval is retried by the next
    poll even when that poll lists only recent studies."""
    import datetime as dt

    from amagi_plugin.config import ConfigError
    from amagi_plugin.modelspec import resolve_model
    from amagi_plugin.webin import Poller, WebOptions, web_source

    var = tmp_path / "var"
    cfg = load_config(None, environ={}, cwd=tmp_path, overrides={
        "storage.var_dir": str(var), "model.name": "amagi_tiny",
        "model.checkpoint": str(tiny_checkpoint)})
    spec = resolve_model(cfg.model)
    today = dt.date(2026, 11, 30)
    clock = [0.0]
    with running(Orthanc(tmp_path / "orthanc", free_port(), dicomweb=True, users=USERS)) as o:
        source = web_source(o.dicomweb_url, WebOptions(auth="basic", username="amagi",
                                                       password_env=PASSWORD_ENV),
                            {PASSWORD_ENV: USERS["amagi"]})
        database = open_database(cfg.database_url)
        try:
            with pytest.raises(ConfigError, match="at least 1"):
                Poller(cfg, spec, source, database, recent_days=0)
            poller = Poller(cfg, spec, source, database, recent_days=2,
                            full_every_s=3600.0, today=lambda: today,
                            clock=lambda: clock[0])
            old = _upload(o, _old_video(tmp_path, "old.dcm", 1, "20200101"))
            r = poller.poll_once()  # the first poll lists everything
            assert (r.full, r.found, r.queued) == (True, 1, 1)

            recent = _upload(o, _old_video(tmp_path, "recent.dcm", 2, "20261129"))
            late = _upload(o, _old_video(tmp_path, "late.dcm", 3, "20251001"))
            clock[0] = 60.0
            r = poller.poll_once()  # recent studies only: since 2026-11-28
            assert (r.full, r.since) == (False, "20261128")
            assert (r.found, r.known, r.queued, r.failed) == (1, 0, 1, 0)
            assert "(recent studies, since 20261128)" in str(r)
            assert [u for u, _ in _jobs(var)] == [old.SOPInstanceUID, recent.SOPInstanceUID]

            # A retrieval failing at the next full listing (the spool cannot be written) is
            # retried by the following poll, though that one lists only recent studies.
            clock[0] = 3600.0
            spool_file = var / "spool" / late.StudyInstanceUID
            spool_file.parent.mkdir(parents=True, exist_ok=True)
            spool_file.write_text("a file where the study's folder must go")
            r = poller.poll_once()
            assert (r.full, r.found, r.known, r.queued, r.failed) == (True, 3, 2, 0, 1)
            spool_file.unlink()
            clock[0] = 3660.0
            r = poller.poll_once()
            assert (r.full, r.found, r.known, r.queued, r.failed) == (False, 2, 1, 1, 0)
            assert [u for u, _ in _jobs(var)] == [old.SOPInstanceUID, recent.SOPInstanceUID,
                                                   late.SOPInstanceUID]
            assert not any((var / "spool" / ".webin").iterdir())
        finally:
            database.dispose()


def test_serve_polls_its_sources_and_analyses_what_they_hold(tmp_path, tiny_checkpoint, caplog):
    """poll.sources: amagi serve polls Orthanc itself (no 'amagi poll' beside it), analyses
    each video once, keeps polling when the server refuses it, and will not start without a
    source's secret."""
    import logging

    from amagi_plugin.errors import ConfigError

    var = tmp_path / "var"
    with running(Orthanc(tmp_path / "orthanc", free_port(), dicomweb=True, users=USERS)) as o:
        first = _upload(o, make_video(tmp_path / "a.dcm", seconds=0.5, seed=6))

        def service(password_env: str, environ: dict[str, str]) -> Service:
            cfg = load_config(None, environ={}, cwd=tmp_path, overrides={
                "storage.var_dir": str(var), "storage.reserve_mb": "16",
                "listener.port": str(free_port()), "listener.bind_address": "127.0.0.1",
                "model.name": "amagi_tiny", "model.checkpoint": str(tiny_checkpoint),
                "poll.interval_s": "0.5",
                "poll.sources": [{"url": o.dicomweb_url, "auth": "basic",
                                  "username": "amagi", "password_env": password_env}]})
            analyzer, spec = analyzer_from_config(cfg)
            return Service(cfg, analyzer, spec, environ=environ)

        # The secret's variable unset: refused before anything starts.
        with pytest.raises(ConfigError, match=f"environment variable {PASSWORD_ENV}"):
            service(PASSWORD_ENV, {}).start()
        assert not (var / "amagi.db").exists()

        # A refused query (a wrong password) is logged and retried; the service keeps serving.
        svc = service(PASSWORD_ENV, {PASSWORD_ENV: "wrong"})
        with caplog.at_level(logging.ERROR, logger="amagi_plugin.service.app"):
            svc.start()
            try:
                wait_until(lambda: sum("HTTP 401" in r.getMessage() for r in caplog.records)
                           >= 2, 30, what="two refused polls logged")
                assert any(t.name == "amagi-poll-0" and t.is_alive() for t in svc._threads)
            finally:
                svc.stop()
        assert _jobs(var) == []

        svc = service(PASSWORD_ENV, {PASSWORD_ENV: USERS["amagi"]})
        svc.start()
        try:
            wait_until(lambda: _jobs(var) == [(first.SOPInstanceUID, "done")], 120,
                       what="the polled video analysed")
            second = _upload(o, make_video(tmp_path / "b.dcm", seconds=0.5, seed=7))
            wait_until(lambda: _jobs(var) == [(first.SOPInstanceUID, "done"),
                                              (second.SOPInstanceUID, "done")], 120,
                       what="the video uploaded while serving analysed")
        finally:
            svc.stop()
    assert not any((var / "spool" / ".webin").iterdir())


def test_a_stopping_poller_retrieves_no_more(tmp_path, tiny_checkpoint):
    """A stop asked in the middle of a poll ends it before the next retrieval (a service
    that stops does not keep downloading); what was left is queued by the next poll."""
    import threading

    from amagi_plugin.modelspec import resolve_model
    from amagi_plugin.webin import Poller, WebOptions, web_source

    var = tmp_path / "var"
    cfg = load_config(None, environ={}, cwd=tmp_path, overrides={
        "storage.var_dir": str(var), "model.name": "amagi_tiny",
        "model.checkpoint": str(tiny_checkpoint)})
    stop = threading.Event()

    class StopAfterOne(Poller):
        def _take(self, inst) -> int:
            job = super()._take(inst)
            stop.set()  # as SIGTERM would, while the poll is under way
            return job

    with running(Orthanc(tmp_path / "orthanc", free_port(), dicomweb=True, users=USERS)) as o:
        for i in range(3):
            _upload(o, make_video(tmp_path / f"{i}.dcm", seconds=0.3, seed=20 + i))
        source = web_source(o.dicomweb_url, WebOptions(auth="basic", username="amagi",
                                                       password_env=PASSWORD_ENV),
                            {PASSWORD_ENV: USERS["amagi"]})
        database = open_database(cfg.database_url)
        try:
            total = StopAfterOne(cfg, resolve_model(cfg.model), source, database).run(
                60.0, stop=stop)
            assert (total.found, total.queued) == (3, 1)
            assert len(_jobs(var)) == 1
            again = Poller(cfg, resolve_model(cfg.model), source, database).run(60.0, once=True)
            assert (again.found, again.known, again.queued) == (3, 1, 2)
        finally:
            database.dispose()
