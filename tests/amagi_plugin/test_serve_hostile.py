"""``amagi serve`` against hostile peers and input (issue #16), on real loopback associations.

Each test sends what a hostile or broken peer would, checks the outcome a hospital expects,
and then that a good video is still analysed.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from amagi_plugin.service import HEALTH_FILE
from db.schema import Job
from dicom_io.encode import VideoMetadata, write_video_dicom
from dicom_io.tools import dcmtk_program
from tests.amagi_plugin import test_serve
from tests.amagi_plugin.serve_support import (
    free_port,
    make_video,
    service_overrides,
    status_of,
    storescu,
    wait_until,
)
from tests.dicom_io.test_video_errors import _edit as _edited

service = test_serve.service  # the same fixture: an in-process service per test

pytestmark = pytest.mark.integration


def _video(path: Path, n: int, seed: int = 0, meta: VideoMetadata | None = None) -> Path:
    rng = np.random.default_rng(seed)
    frames = [np.clip(rng.normal(120, 30, (96, 128, 3)), 0, 255).astype(np.uint8)
              for _ in range(n)]
    write_video_dicom(frames, path, fps=30.0, meta=meta or VideoMetadata(
        patient_name="Test^Hostile", patient_id=f"H{seed:04d}"))
    return path




def _jobs(svc) -> dict[str, tuple[str, int, str | None]]:
    """SOP Instance UID → (state, attempts, last_error)."""
    from db.schema import Instance

    with svc.database.session() as s:
        rows = s.query(Instance.sop_instance_uid, Job.state, Job.attempts, Job.last_error) \
            .join(Job, Job.instance_id == Instance.id).all()
    return {uid: (getattr(state, "value", state), n, err) for uid, state, n, err in rows}


def _health(tmp_path: Path) -> dict:
    """What the service last published in ``var/workers.json`` ({} before the first time)."""
    try:
        return json.loads((tmp_path / "var" / HEALTH_FILE).read_text())
    except FileNotFoundError:
        return {}


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_input_that_can_never_succeed_fails_once_with_its_reason(service, tmp_path) -> None:
    svc = service()  # worker.max_attempts = 3
    good = _video(tmp_path / "good.dcm", 30, seed=1)
    bad = {
        "one frame": (_video(tmp_path / "one.dcm", 1, seed=2),
                      "too few frames: the video has 1 frame(s) and one clip needs 8"),
        "five frames": (_video(tmp_path / "five.dcm", 5, seed=3),
                        "too few frames: the video has 5 frame(s)"),
        "zero frames": (_edited(_video(tmp_path / "z_src.dcm", 30, seed=4), tmp_path / "zero.dcm",
                                NumberOfFrames=0), "Number of Frames is 0"),
        "no pixel data": (_edited(_video(tmp_path / "p_src.dcm", 30, seed=5),
                                  tmp_path / "nopix.dcm", PixelData=None), "no Pixel Data"),
        "lying header": (_edited(_video(tmp_path / "l_src.dcm", 30, seed=6),
                                 tmp_path / "liar.dcm", NumberOfFrames=30_000_000),
                         "Number of Frames (0028,0008) is 30000000 but the pixel data holds "
                         "30 frame(s)"),
    }
    for what, (path, _) in bad.items():
        r = storescu(svc.port, path)
        assert r.returncode == 0, (what, r.stderr)
    wait_until(lambda: status_of(svc)["jobs"]["failed"] == len(bad), 120,
               what="every unanalysable video to fail")
    jobs = _jobs(svc)
    spool = str(tmp_path / "var")
    for what, (path, reason) in bad.items():
        state, attempts, error = jobs[_uid(path)]
        assert (state, attempts) == ("failed", 1), (what, state, attempts, error)
        assert error.startswith(reason), (what, error)  # the cause first ...
        assert spool not in error, (what, error)  # ... not a long spool path
    # A good video afterwards is analysed.
    assert storescu(svc.port, good).returncode == 0
    wait_until(lambda: _jobs(svc).get(_uid(good), ("",))[0] == "done", 120, what="good video")


def test_failed_instance_pushed_again_is_requeued_and_jobs_retry(service, tmp_path,
                                                                 run_cli) -> None:
    """A corrected re-push of an instance whose job failed runs again; `amagi jobs retry`
    requeues by hand; the Japanese character set of the issue goes through every result."""
    svc = service()
    meta = VideoMetadata(patient_name="Yamada^Tarou=山田^太郎", patient_id="J0001")
    good = _video(tmp_path / "good.dcm", 30, seed=7, meta=meta)
    good = _edited(good, good, SpecificCharacterSet=["", "ISO 2022 IR 87"],
                   PatientName="Yamada^Tarou=山田^太郎")
    liar = _edited(good, tmp_path / "liar.dcm", NumberOfFrames=2**31 - 1)
    uid = _uid(good)
    assert storescu(svc.port, liar).returncode == 0
    wait_until(lambda: _jobs(svc).get(uid, ("",))[0] == "failed", 120, what="the lying header")
    (job_id,) = [f["job"] for f in status_of(svc)["failed"]]

    # By hand: the job is queued again, fails again at once (the same file).
    var = ["--storage-var-dir", str(tmp_path / "var")]
    r = run_cli("jobs", "retry", str(job_id), *var)
    assert r.code == 0 and f"job {job_id}: queued" in r.stdout, r.stderr
    wait_until(lambda: _jobs(svc)[uid][0] == "failed", 60, what="the retried job to fail")

    # The corrected instance (same SOP Instance UID) pushed again: analysed this time.
    assert storescu(svc.port, good).returncode == 0
    wait_until(lambda: _jobs(svc)[uid][0] == "done", 120, what="the re-pushed instance")
    assert sum(status_of(svc)["jobs"].values()) == 1
    results = sorted((tmp_path / "var" / "results").glob("job-*/dicom/*.dcm"))
    assert len(results) == 5
    for f in results:
        ds = pydicom.dcmread(f)
        assert str(ds.PatientName) == "Yamada^Tarou=山田^太郎", f

    r = run_cli("jobs", "retry", str(job_id), *var)  # done: left alone
    assert r.code == 3 and f"job {job_id} is done, not failed" in r.stderr
    assert run_cli("jobs", "retry", "999", *var).code == 3


def test_wrong_called_ae_title_is_refused_unless_configured(service, tmp_path, caplog) -> None:
    video = make_video(tmp_path / "v.dcm")
    svc = service()
    with caplog.at_level("WARNING", logger="dicom_io"):
        r = storescu(svc.port, video, aec="NOT_AMAGI")
    assert r.returncode != 0
    assert "to 'NOT_AMAGI' rejected: called AE title 'NOT_AMAGI' is not ours ('AMAGI')" \
        in caplog.text
    assert sum(status_of(svc)["jobs"].values()) == 0
    assert storescu(svc.port, video).returncode == 0  # the right title still works
    wait_until(lambda: status_of(svc)["jobs"]["done"] == 1, 120, what="the good video")
    lax = service(**{"listener.require_called_ae": "false"})
    assert storescu(lax.port, video, aec="NOT_AMAGI").returncode == 0


def _associate_rq_header(length: int) -> bytes:
    return struct.pack(">BBL", 0x01, 0, length)


def test_oversized_pdu_is_refused_before_it_is_buffered(service, tmp_path, caplog) -> None:
    svc = service(**{"listener.max_associations": "2"})
    with caplog.at_level("WARNING", logger="dicom_io"):
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as sock:
            sock.sendall(_associate_rq_header(0xFFFFFFFF))
            sent, closed = 0, False
            chunk = b"\0" * 65536
            try:
                for _ in range(1024):  # up to 64 MiB; the server closes long before
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                closed = True
            if not closed:
                sock.settimeout(5)
                closed = sock.recv(1) == b""
        assert closed and sent < 32 << 20, sent
    assert "announced a A-ASSOCIATE-RQ PDU of 4294967295 bytes" in caplog.text
    video = make_video(tmp_path / "v.dcm")
    assert storescu(svc.port, video).returncode == 0
    wait_until(lambda: status_of(svc)["jobs"]["done"] == 1, 120, what="the good video")


def test_association_limit_is_configurable(service, tmp_path) -> None:
    from pynetdicom import AE

    svc = service(**{"listener.max_associations": "1"})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate("127.0.0.1", svc.port, ae_title="AMAGI")
    try:
        assert held.is_established
        video = make_video(tmp_path / "v.dcm")
        assert storescu(svc.port, video).returncode != 0  # a second one: rejected
    finally:
        held.release()
    assert storescu(svc.port, video).returncode == 0


def _big_dicom(path: Path, mib: int) -> Path:
    """A Secondary Capture-sized blob to keep a transfer going (it is refused at the end)."""
    src = make_video(path.with_name("small.dcm"))
    ds = pydicom.dcmread(src)
    ds.PixelData = pydicom.encaps.encapsulate([b"\0" * (mib << 20)])
    ds.save_as(path)
    return path


def test_killed_upload_leaves_no_partial_file(service, tmp_path) -> None:
    # Partial files of a previous run are removed at start-up.
    incoming = tmp_path / "var" / "spool" / ".incoming"
    incoming.mkdir(parents=True)
    (incoming / "tmpleftover.dcm").write_bytes(b"\0" * 4096)
    stray = tmp_path / "var" / "spool" / "1.2.3" / "4.5.6"
    stray.mkdir(parents=True)
    (stray / ".7.8.9.dcm.abc.partial").write_bytes(b"\0" * 4096)
    svc = service()
    assert not list(incoming.iterdir()) and not list(stray.iterdir())

    def receiving() -> bool:
        for p in incoming.iterdir():
            try:
                if p.stat().st_size > 1 << 20:
                    return True
            except FileNotFoundError:
                pass
        return False

    big = _big_dicom(tmp_path / "big.dcm", 256)
    for _ in range(2):
        proc = subprocess.Popen([dcmtk_program("storescu"), "-xn", "-R", "-aec", "AMAGI", "127.0.0.1",
                                 str(svc.port), str(big)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(receiving, 60, interval=0.01, what="the upload to start")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        wait_until(lambda: not list(incoming.iterdir()), 30, what="the partial file to go")
    assert not [p for p in (tmp_path / "var" / "spool").rglob("*") if p.is_file()]
    assert storescu(svc.port, make_video(tmp_path / "v.dcm")).returncode == 0
    wait_until(lambda: status_of(svc)["jobs"]["done"] == 1, 120, what="the good video")


def test_space_running_out_while_receiving_gives_a700(service, tmp_path) -> None:
    """The reserve is set just under the free space: a big push crosses it while it is being
    received; the peer gets 0xA700, nothing partial stays, a small video still passes."""
    big = _big_dicom(tmp_path / "big.dcm", 96)
    free_mb = shutil.disk_usage(tmp_path).free >> 20
    svc = service(**{"storage.reserve_mb": str(free_mb - 48)})
    r = storescu(svc.port, big, extra=("-xn", "-v"))
    assert "refused: outofresources" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    spool = tmp_path / "var" / "spool"
    assert not [p for p in spool.rglob("*") if p.is_file()]
    wait_until(lambda: _health(tmp_path).get("refused_c_stores", {})
               .get("0xA700 Out of Resources") == 1, 10, what="the refusal in the health file")
    assert storescu(svc.port, make_video(tmp_path / "v.dcm")).returncode == 0
    wait_until(lambda: status_of(svc)["jobs"]["done"] == 1, 120, what="the good video")


def test_starting_on_a_full_disk_is_one_clear_line(run_cli, tmp_path, tiny_checkpoint) -> None:
    args = [f"--{k.replace('.', '-').replace('_', '-')}={v}" for k, v in service_overrides(
        tmp_path, tiny_checkpoint, free_port(), **{"storage.reserve_mb": str(1 << 40)}).items()]
    r = run_cli("serve", *args)
    assert r.code == 1
    errors = [ln for ln in r.stderr.splitlines() if not ln[:4].isdigit()]  # not log lines
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert errors[0].startswith("amagi: error: cannot start: ") and "below the reserve" in errors[0]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_worker_threads_survive_and_are_restarted(service, tmp_path, run_cli,
                                                  monkeypatch) -> None:
    """Recording an outcome that the database refuses is retried; a worker thread that
    ends anyway is replaced by the supervisor; `amagi status` shows their health."""
    from sqlalchemy.exc import OperationalError

    import amagi_plugin.service.worker as worker_mod

    svc = service()
    real_fail, refusals = worker_mod.fail, []

    def full_disk_then_ok(*a, **kw):
        if len(refusals) < 2:
            refusals.append(1)
            raise OperationalError("UPDATE jobs", {}, Exception("database or disk is full"))
        return real_fail(*a, **kw)

    monkeypatch.setattr(worker_mod, "fail", full_disk_then_ok)
    one = _video(tmp_path / "one.dcm", 1, seed=9)
    assert storescu(svc.port, one).returncode == 0
    wait_until(lambda: status_of(svc)["jobs"]["failed"] == 1, 60, what="the failure recorded")
    assert len(refusals) == 2 and all(w.is_alive() for w in svc.workers)

    # A thread that ends anyway (a BaseException is not caught) is replaced.
    first = svc.workers[0]
    real_run_job = worker_mod.Worker.run_job

    def die_once(self, job):
        monkeypatch.setattr(worker_mod.Worker, "run_job", real_run_job)
        raise SystemExit("simulated thread death")

    monkeypatch.setattr(worker_mod.Worker, "run_job", die_once)
    assert storescu(svc.port, make_video(tmp_path / "v.dcm")).returncode == 0
    wait_until(lambda: svc.workers[0] is not first and svc.workers[0].is_alive(), 30,
               what="the supervisor to replace the worker")
    wait_until(lambda: status_of(svc)["jobs"]["done"] == 1, 120, what="the good video")
    assert svc.workers[0].restarts == 1
    time.sleep(1.5)  # one supervisor round publishes the health
    r = run_cli("status", "--storage-var-dir", str(tmp_path / "var"), "--format", "json")
    assert r.code == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["service"]["running"] is True
    (w,) = st["service"]["workers"]
    assert w["alive"] and w["restarts"] == 1
    assert w["last_error"] == "thread ended: SystemExit: simulated thread death"
    table = run_cli("status", "--storage-var-dir", str(tmp_path / "var"))
    assert "restarts" in table.stdout and "running" in table.stdout


def test_status_and_cases_never_create_a_database(run_cli, tmp_path) -> None:
    var = tmp_path / "nothing"
    for argv in (("status",), ("cases", "list")):
        r = run_cli(*argv, "--storage-var-dir", str(var))
        assert r.code == 1 and "no database at sqlite:///" in r.stderr, r.stderr
    assert not var.exists()
