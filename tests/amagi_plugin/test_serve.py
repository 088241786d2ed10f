"""``amagi serve`` against real peers on loopback: DCMTK storescu/storescp, Orthanc, dciodvfy.

The model is the small AMAGI variant with deterministic random weights and a threshold near
zero, so every video yields one event and every result kind (SR, SEG, key image, KOS).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_fragments

from amagi_plugin.config import load_config
from amagi_plugin.runtime import analyzer_from_config
from amagi_plugin.service.app import Service
from db import open_database
from dicom_io.validate import run_dciodvfy
from tests.amagi_plugin.serve_support import (
    RESULT_MODALITIES,
    CommittingPACS,
    Orthanc,
    Services,
    StoreSCP,
    free_port,
    make_image_series,
    make_video,
    running,
    service_overrides,
    status_of,
    storescu,
    wait_until,
)

pytestmark = pytest.mark.integration




@pytest.fixture
def service(tmp_path, tiny_checkpoint):
    """``service(**overrides)`` starts an in-process service; stopped after the test."""
    services = Services(tmp_path, tiny_checkpoint)
    yield services.start
    services.stop()



def test_push_analyse_deliver_and_query(service, tmp_path, run_cli) -> None:
    with running(StoreSCP(tmp_path / "pacs")) as pacs:
        svc = service(**{"delivery.destinations": pacs.destination})
        video = make_video(tmp_path / "video.dcm", seconds=1.0)
        r = storescu(svc.port, video)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: len(pacs.files()) >= 5, 120, what="5 results at the destination")
        received = pacs.received()
        assert {ds.Modality for ds in received} == RESULT_MODALITIES
        src = pydicom.dcmread(video, stop_before_pixels=True)
        assert {ds.StudyInstanceUID for ds in received} == {src.StudyInstanceUID}
        assert src.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in received}
        for f in pacs.files():
            assert run_dciodvfy(f).errors == [], f

        cases = run_cli("cases", "list", "--format", "json", "--storage-var-dir",
                        str(tmp_path / "var"))
        assert cases.code == 0, cases.stderr
        (case,) = json.loads(cases.stdout)
        assert case["sop_instance_uid"] == src.SOPInstanceUID and case["event_count"] == 1
        report = run_cli("cases", "show", src.SOPInstanceUID, "--html", "--storage-var-dir",
                         str(tmp_path / "var"))
        assert report.code == 0, report.stderr
        page = Path(report.stdout.strip())
        assert page.parent.name == f"job-{case['case_id']}" and "<html" in page.read_text()
        missing = run_cli("cases", "show", src.SOPInstanceUID, "--html", "--storage-var-dir",
                          str(tmp_path / "var"), "--storage-results-dir",
                          str(tmp_path / "elsewhere"))
        assert missing.code == 3 and "has no HTML report" in missing.stderr

        # The same instance pushed again with the same model: no new job, nothing resent.
        assert storescu(svc.port, video).returncode == 0
        time.sleep(3)
        st = status_of(svc)
        assert sum(st["jobs"].values()) == 1 and st["jobs"]["done"] == 1
        assert len(pacs.files()) == 5 and st["deliveries"]["sent"] == 5


def test_received_identifiers_are_masked_while_the_service_runs_only(tmp_path,
                                                                    tiny_checkpoint) -> None:
    """The patient name and ID a service receives are masked in every log line while it runs,
    and forgotten when it stops: a later service in the process does not carry them."""
    from amagi_plugin.logsetup import PHI_FILTER, REDACTED

    def start(name: str) -> Service:
        cfg = load_config(environ={}, cwd=tmp_path, overrides=service_overrides(
            tmp_path / name, tiny_checkpoint, free_port()))
        analyzer, spec = analyzer_from_config(cfg)
        svc = Service(cfg, analyzer, spec)
        svc.start()
        return svc

    first = start("first")
    second: Service | None = None
    try:
        assert storescu(first.port, make_video(tmp_path / "v.dcm", seed=4321)).returncode == 0
        wait_until(lambda: PHI_FILTER.scrub("PID4321") == REDACTED, 30,
                   what="the received patient ID masked")
        second = start("second")  # runs on after the first stops
        first.stop()
        assert PHI_FILTER.scrub("PID4321 Test^Patient") == "PID4321 Test^Patient"
        assert second.phi is not None and len(second.phi) == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_destination_down_then_up(service, tmp_path) -> None:
    pacs = StoreSCP(tmp_path / "pacs")
    svc = service(**{"delivery.destinations": pacs.destination})
    assert storescu(svc.port, make_video(tmp_path / "v.dcm")).returncode == 0
    wait_until(lambda: status_of(svc)["jobs"]["done"] == 1, 120, what="the job")
    wait_until(lambda: any(r["last_error"] for r in status_of(svc)["deliveries"]["by_destination"]),
               30, what="a failed delivery attempt")
    assert status_of(svc)["deliveries"]["sent"] == 0
    with running(pacs):
        wait_until(lambda: len(pacs.files()) >= 5, 60, what="delivery after the peer came up")
        # Files land at the peer a moment before the deliveries are marked sent.
        wait_until(lambda: status_of(svc)["deliveries"]["sent"] == 5, 30, what="deliveries recorded")
    assert status_of(svc)["deliveries"]["pending"] == 0


def test_bad_inputs_fail_clearly_and_the_server_keeps_serving(service, tmp_path) -> None:
    svc = service(**{"worker.max_attempts": "1"})
    good = make_video(tmp_path / "good.dcm", seed=1)
    # A DICOM whose H.264 stream is cut short: accepted on the wire, fails in the pipeline.
    truncated = make_video(tmp_path / "trunc_src.dcm", seconds=2.0, seed=2)
    ds = pydicom.dcmread(truncated)
    stream = b"".join(generate_fragments(ds.PixelData))
    ds.PixelData = encapsulate([stream[: len(stream) // 5]])
    ds.save_as(tmp_path / "trunc.dcm")
    r = storescu(svc.port, tmp_path / "trunc.dcm")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: status_of(svc)["jobs"]["failed"] == 1, 120, what="the truncated video to fail")
    (failure,) = status_of(svc)["failed"]
    assert "truncated" in failure["error"], failure
    # Garbage that claims to be DICOM Part 10 is refused with a failure status.
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + os.urandom(2000))
    bad = storescu(svc.port, junk, extra=())
    assert bad.returncode != 0 or "Failed" in bad.stderr + bad.stdout
    # ... and the listener still serves.
    assert storescu(svc.port, good).returncode == 0
    wait_until(lambda: status_of(svc)["jobs"]["done"] >= 1, 120, what="the good video")


def test_storage_commitment_outcome_is_recorded(service, tmp_path) -> None:
    with running(CommittingPACS()) as pacs:
        svc = service(**{"delivery.destinations": pacs.destination,
                         "delivery.storage_commitment": "true"})
        assert storescu(svc.port, make_video(tmp_path / "v.dcm")).returncode == 0
        wait_until(lambda: len(pacs.stored) == 5, 120, what="5 results at the PACS")

        def commitments() -> list[str | None]:
            from db.schema import Delivery

            with svc.database.session() as s:
                return [d.commitment for d in s.query(Delivery)]

        wait_until(lambda: commitments() and all(c not in (None, "requested")
                                                 for c in commitments()),
                   60, what="commitment answers")
        assert commitments() == ["committed"] * 5


def test_orthanc_commitment_report_on_a_new_association_is_recorded(service, tmp_path,
                                                                     caplog) -> None:
    """Orthanc answers Storage Commitment on an association it opens to our listener."""
    import logging

    caplog.set_level(logging.INFO, logger="amagi_plugin.service")
    amagi_port = free_port()
    with running(Orthanc(tmp_path / "orthanc", amagi_port)) as pacs:
        svc = service(**{"listener.port": str(amagi_port),
                         "delivery.destinations": pacs.destination,
                         "delivery.storage_commitment": "true",
                         "delivery.commitment_report_wait_s": "0.5"})
        assert storescu(svc.port, make_video(tmp_path / "v.dcm")).returncode == 0

        def commitments() -> list[tuple[str | None, str | None]]:
            from db.schema import Delivery

            with svc.database.session() as s:
                return [(d.commitment, d.commitment_transaction_uid) for d in s.query(Delivery)]

        wait_until(lambda: len(commitments()) == 5 and all(
            c not in (None, "requested") for c, _ in commitments()), 120,
            what="Orthanc's commitment report recorded")
        assert {c for c, _ in commitments()} == {"committed"}
        assert len({tx for _, tx in commitments()}) == 1  # one request for the five
        with svc.database.session() as s:  # owed at one time: one sender's claim takes all
            from db.schema import Delivery

            assert len({d.created_at for d in s.query(Delivery)}) == 1
        # The report came on Orthanc's own association (here even before the request had
        # stopped waiting for it on ours).
        wait_until(lambda: any("awaiting its report on a new association" in r.getMessage()
                               for r in caplog.records), 10, what="the request to end")
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("storage commitment report ") and "5 committed, 0 failed" in m
                   and "from ORTHANC" in m for m in messages)


def test_single_frame_series_becomes_one_job_after_inactivity(service, tmp_path, run_cli) -> None:
    svc = service(**{"worker.series_timeout_s": "1", "analysis.threshold": "0.5"})
    images = make_image_series(tmp_path / "series", n=20)
    r = storescu(svc.port, *images, extra=())
    assert r.returncode == 0, r.stderr
    wait_until(lambda: status_of(svc)["jobs"]["done"] == 1, 120, what="the series job")
    assert sum(status_of(svc)["jobs"].values()) == 1  # one job for the 20 images
    (job_dir,) = (tmp_path / "var" / "results").iterdir()
    doc = json.loads((job_dir / "summary.json").read_text())
    assert doc["fps"] == pytest.approx(30.0, rel=0.01) and doc["duration_s"] == pytest.approx(0.667, abs=0.01)


def test_metrics_endpoint(service, tmp_path) -> None:
    import urllib.request

    port = free_port()
    svc = service(**{"metrics.enabled": "true", "metrics.port": str(port)})
    video = make_video(tmp_path / "v.dcm")
    assert storescu(svc.port, video).returncode == 0
    wait_until(lambda: status_of(svc)["jobs"]["done"] == 1, 120, what="the job")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    # The listener counts the spooled file (it differs from the sent file by its File Meta).
    assert float(values["amagi_received_bytes_total"]) > 0.9 * video.stat().st_size
    assert values['amagi_jobs{state="done"}'] == "1"
    assert float(values['amagi_stage_seconds_total{stage="video_network"}']) > 0


def test_disk_reserve_gives_a700_and_leaves_nothing(service, tmp_path) -> None:
    import shutil

    # Started 64 MiB above the reserve (below it, it would not start), then a filler file
    # takes the filesystem 64 MiB below it.
    free_mb = shutil.disk_usage(tmp_path).free >> 20
    svc = service(**{"storage.reserve_mb": str(free_mb - 64)})
    with (tmp_path / "filler").open("wb") as f:
        f.truncate(0)
        for _ in range(128):
            f.write(b"\0" * (1 << 20))
        f.flush()
        os.fsync(f.fileno())
    r = storescu(svc.port, make_video(tmp_path / "v.dcm"), extra=("-xn", "-v"))
    assert "refused: outofresources" in (r.stdout + r.stderr).lower()  # DCMTK's name for 0xA700
    spool = tmp_path / "var" / "spool"
    assert not [p for p in spool.rglob("*") if p.is_file()]


def test_calling_ae_allow_list(service, tmp_path) -> None:
    svc = service(**{"listener.allowed_calling_aes": "MODALITY1"})
    video = make_video(tmp_path / "v.dcm")
    assert storescu(svc.port, video, aet="INTRUDER").returncode != 0
    assert storescu(svc.port, video, aet="MODALITY1").returncode == 0


def test_twenty_concurrent_associations(service, tmp_path) -> None:
    svc = service(**{"analysis.threshold": "0.5"})
    videos = [make_video(tmp_path / f"v{i}.dcm", seconds=0.5, seed=100 + i) for i in range(20)]
    results: list[int] = []

    def push(v: Path) -> None:
        results.append(storescu(svc.port, v).returncode)

    threads = [threading.Thread(target=push, args=(v,)) for v in videos]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0] * 20
    wait_until(lambda: status_of(svc)["jobs"]["done"] == 20, 300, interval=1, what="20 jobs")
    assert sum(status_of(svc)["jobs"].values()) == 20


@pytest.mark.slow
def test_kill_during_inference_then_restart_delivers_once(tmp_path, tiny_checkpoint) -> None:
    """kill -9 while the worker runs; after restart the job resumes and results arrive once."""
    port = free_port()
    with running(StoreSCP(tmp_path / "pacs")) as pacs:
        overrides = service_overrides(tmp_path, tiny_checkpoint, port, **{
            "delivery.destinations": pacs.destination, "worker.lease_s": "3"})
        cfg = tmp_path / "amagi.toml"
        sections: dict[str, list[str]] = {}
        for k, v in overrides.items():
            sec, key = k.split(".")
            sections.setdefault(sec, []).append(f"{key} = {json.dumps(_typed(v))}")
        cfg.write_text("\n".join(f"[{s}]\n" + "\n".join(lines) for s, lines in sections.items()))
        cmd = [sys.executable, "-m", "amagi_plugin", "serve", "--config", str(cfg)]

        def start() -> subprocess.Popen[bytes]:
            p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                 stderr=open(tmp_path / "serve.log", "ab"))  # noqa: SIM115
            wait_until(lambda: _listening(port), 60, what="amagi serve to listen")
            return p

        proc = start()
        video = make_video(tmp_path / "long.dcm", seconds=8.0, size=(160, 208))
        assert storescu(port, video).returncode == 0
        database = open_database(f"sqlite:///{tmp_path / 'var' / 'amagi.db'}", upgrade=False)
        wait_until(lambda: _db_status(database)["jobs"]["running"] == 1, 60, interval=0.05,
                   what="the job to run")
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(pacs.files()) == 0
        proc = start()
        try:
            wait_until(lambda: _db_status(database)["jobs"]["done"] == 1, 180, interval=0.5,
                       what="the resumed job")
            wait_until(lambda: len(pacs.files()) >= 5, 60, what="delivery")
            time.sleep(2)
            received = pacs.received()
            assert len(received) == 5, [ds.Modality for ds in received]
            assert len({ds.SOPInstanceUID for ds in received}) == 5
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            database.dispose()


def _typed(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    if "@" in v:
        return [v]
    return v


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _db_status(database) -> dict:
    from db.queries import service_status

    with database.session() as s:
        return service_status(s)


def test_orthanc_pushes_video_and_receives_results(service, tmp_path) -> None:
    """Orthanc as the PACS: upload, ask Orthanc to send to amagi, find SR/SEG in the study."""
    amagi_port = free_port()
    with running(Orthanc(tmp_path / "orthanc", amagi_port)) as pacs:
        service(**{"listener.port": str(amagi_port), "delivery.destinations": pacs.destination})
        video = make_video(tmp_path / "video.dcm")
        uploaded = pacs.post("/instances", video.read_bytes())
        study = uploaded["ParentStudy"]
        pacs.post("/modalities/amagi/store", {"Resources": [uploaded["ID"]], "Synchronous": True})

        def modalities() -> set[str]:
            series = pacs.get(f"/studies/{study}/series")
            return {s["MainDicomTags"].get("Modality") for s in series}

        found = wait_until(lambda: (m := modalities()) >= {"SR", "SEG"} and m, 120,
                           what="SR and SEG in Orthanc's study")
        assert {"ES", "SR", "SEG", "KO"} <= found
