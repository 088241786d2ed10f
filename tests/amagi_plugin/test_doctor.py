from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from amagi_plugin.config import load_config
from amagi_plugin.doctor import check_peers
from amagi_plugin.errors import ExitCode
from tests.amagi_plugin.serve_support import Orthanc, running
from tests.dicom_io._net_fixtures import Recorder, running_listener
from tests.dicom_io.test_tools import lookalike

PACS_ENV = "AMAGI_TEST_DOCTOR_PACS_PASSWORD"
ARCHIVE_ENV = "AMAGI_TEST_DOCTOR_ARCHIVE_PASSWORD"
PASSWORD = "doctor-pw-right"
WRONG = "doctor-pw-wrong"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def doctor(run_cli, tmp_path: Path):
    def run(*extra: str):
        r = run_cli("doctor", "--format", "json", "--storage-var-dir", str(tmp_path / "var"), *extra)
        return r, {c["check"]: c for c in json.loads(r.stdout)} if r.stdout else {}

    return run


def test_doctor_reports_real_environment(doctor) -> None:
    _, checks = doctor()
    assert checks["torch"]["status"] == "ok" and checks["torch"]["detail"].startswith("2.13.0")
    for dec in ("h264", "hevc", "mpeg2video"):
        assert checks[f"decoder {dec}"]["status"] == "ok"
    for mod in ("pydicom", "pynetdicom", "highdicom", "monai"):
        assert checks[mod]["status"] == "ok" and checks[mod]["detail"][0].isdigit()
    assert checks["spool"]["status"] == "ok"
    assert checks["database"]["status"] == "ok"
    assert checks["cuda"]["required"] is False
    assert checks["peers"]["status"] == "ok" and "none configured" in checks["peers"]["detail"]


@pytest.mark.integration  # needs DCMTK installed (not run)
def test_doctor_names_pynetdicoms_storescu_ahead_of_dcmtks(doctor, monkeypatch,
                                                          tmp_path: Path) -> None:
    """In an activated venv `storescu` is pynetdicom's (other options): the doctor says so and
    names DCMTK's, where it used to report the venv's as DCMTK's."""
    fake = lookalike(tmp_path / "venv-bin")
    monkeypatch.setenv("PATH", os.pathsep.join([str(fake.parent), "/usr/bin", "/usr/sbin",
                                                "/bin"]))
    r, checks = doctor()
    assert checks["storescu"]["status"] == "warn" and checks["storescu"]["required"] is False
    assert checks["storescu"]["detail"].startswith(
        f"`storescu` runs {fake}, pynetdicom's program of that name (other options), not "
        "DCMTK's: call /usr/bin/storescu (DCMTK")
    assert r.code == 0  # optional: a warning, not a failure
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/usr/sbin", "/bin"]))
    _, checks = doctor()
    assert checks["storescu"]["status"] == "ok"
    assert checks["storescu"]["detail"].startswith("/usr/bin/storescu (DCMTK")


def test_doctor_fails_on_missing_checkpoint(doctor, tmp_path: Path) -> None:
    r, checks = doctor("--model-name", "amagi_sf50", "--model-checkpoint", str(tmp_path / "none.pth"))
    assert r.code == 1
    assert checks["model"]["status"] == "FAIL" and "not found" in checks["model"]["detail"]


def test_doctor_checks_the_configured_backend(doctor, monkeypatch) -> None:
    _, checks = doctor()
    assert checks["backend"]["status"] == "ok" and checks["backend"]["detail"] == "torch, fp32"
    _, checks = doctor("--model-backend", "openvino")
    assert checks["backend"]["status"] == "ok"
    assert checks["backend"]["detail"].startswith("openvino 20")
    assert checks["backend"]["detail"].endswith(", on the CPU, fp32")
    # the precision under the speed switch: bf16 where the CPU computes it natively
    from amagi_plugin import modelspec

    for native, expected in ((True, "bf16"), (False, "fp32 (model.fast: cpu computes no bf16 "
                                              "natively)")):
        monkeypatch.setattr(modelspec, "bf16_native", lambda _device, n=native: n)
        _, checks = doctor("--model-backend", "openvino", "--set", "model.fast=true")
        assert checks["backend"]["detail"].endswith(f", on the CPU, {expected}")
    monkeypatch.undo()
    from tests.amagi_plugin.test_backends import hide_openvino

    hide_openvino(monkeypatch)
    r, checks = doctor("--model-backend", "openvino")
    assert r.code == 1 and checks["backend"]["status"] == "FAIL"
    assert "pip install 'amagi-plugin[openvino]'" in checks["backend"]["detail"]


def test_doctor_fails_where_the_analysis_would_refuse_bf16(doctor, monkeypatch) -> None:
    from amagi_plugin import fastpath

    monkeypatch.setattr(fastpath, "bf16_native", lambda _device: False)
    r, checks = doctor("--set", "model.bf16=true")
    assert r.code == 1 and checks["backend"]["status"] == "FAIL"
    assert "does not compute bfloat16 natively" in checks["backend"]["detail"]


def test_doctor_says_whether_training_can_run_in_bf16(doctor, monkeypatch) -> None:
    from amagi_plugin import modelspec

    for native, says in ((True, "fp32 or bf16 (cpu computes bfloat16 natively: amagi train "
                                "--precision bf16)"),
                         (False, "fp32 (cpu computes no bfloat16 natively: amagi train "
                                 "--precision bf16 is refused)")):
        monkeypatch.setattr(modelspec, "bf16_native", lambda _device, n=native: n)
        r, checks = doctor()
        check = checks["training precision"]
        assert (check["status"], check["detail"], check["required"]) == ("ok", says, False)
        assert r.code == 0, r.stdout


def test_doctor_fails_on_unwritable_spool(doctor, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r, checks = doctor("--storage-spool-dir", str(blocker / "spool"))
    assert r.code == 1 and checks["spool"]["status"] == "FAIL"


def test_doctor_fails_when_disk_is_under_reserve(doctor) -> None:
    r, checks = doctor("--storage-reserve-mb", str(1 << 40))
    assert r.code == 1 and checks["spool"]["status"] == "FAIL" and "A700" in checks["spool"]["detail"]


def test_doctor_fails_on_unreachable_database(doctor) -> None:
    url = f"postgresql+psycopg://amagi:pw-secret@127.0.0.1:{_free_port()}/amagi"
    r, checks = doctor("--database-url", url)
    assert r.code == 1 and checks["database"]["status"] == "FAIL"
    assert "unreachable" in checks["database"]["detail"] and "pw-secret" not in r.stdout


def test_doctor_table_output(run_cli, tmp_path: Path) -> None:
    r = run_cli("doctor", "--storage-var-dir", str(tmp_path / "v"), "--model-name", "amagi_sf50",
                "--model-checkpoint", str(tmp_path / "missing.pth"))
    assert r.code == 1
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["check", "status", "detail"]
    assert lines[-1].startswith("1 required check(s) failed: model")


def test_doctor_sees_a_migrated_database(run_cli, doctor, tmp_path: Path) -> None:
    var = tmp_path / "var"
    up = run_cli("db", "upgrade", "--storage-var-dir", str(var))
    assert up.code == 0, up.stderr
    _, checks = doctor()
    assert checks["database"]["status"] == "ok"
    assert "at revision" in checks["database"]["detail"]


def _no_traceback(r) -> None:
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr


def test_doctor_echoes_each_dimse_destination(doctor, tmp_path: Path) -> None:
    closed = _free_port()
    with running_listener(tmp_path / "ok", Recorder()) as ok, \
            running_listener(tmp_path / "strict", Recorder(),
                             allowed_calling_aes=["MODALITY"]) as strict:
        good, picky, gone = (f"AMAGI@127.0.0.1:{port}" for port in (ok.port, strict.port, closed))
        r, checks = doctor("--delivery-destinations", f"{good},{picky},{gone}")
    _no_traceback(r)
    assert r.code == 1
    assert checks[f"destination {good}"]["status"] == "ok"
    assert checks[f"destination {good}"]["detail"].startswith("C-ECHO answered, ")
    rejected = checks[f"destination {picky}"]
    assert rejected["status"] == "FAIL" and rejected["required"] is True
    assert "rejected the association" in rejected["detail"]
    assert "Calling AE title not recognised" in rejected["detail"]
    assert rejected["detail"].endswith("we call as AMAGI")
    assert checks[f"destination {gone}"] == {"check": f"destination {gone}", "status": "FAIL",
                                              "detail": "connection refused", "required": True}
    assert "\n" not in "".join(c["detail"] for c in checks.values())
    assert "pynetdicom" not in r.stderr  # each failure is told once, in its row


def test_a_silent_peer_costs_one_short_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts TCP connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        cfg = load_config(environ={}, cwd=tmp_path, overrides={
            "delivery.destinations": f"SILENT@127.0.0.1:{port},http://127.0.0.1:{port}/dicom-web",
            "poll.sources": f"http://127.0.0.1:{port}/other"})
        start = time.monotonic()
        checks = check_peers(cfg, environ={}, timeout=1.0)
        took = time.monotonic() - start
    assert [c.name for c in checks] == [f"destination SILENT@127.0.0.1:{port}",
                                        f"destination http://127.0.0.1:{port}/dicom-web",
                                        f"poll source http://127.0.0.1:{port}/other"]
    assert [c.status.value for c in checks] == ["FAIL"] * 3
    assert checks[0].detail == "no answer within 1 s"
    assert checks[1].detail.endswith("no answer within 1 s") and "QIDO-RS" in checks[1].detail
    assert took < 4.0  # the three at once, each within its timeout


def test_timeout_flag_bounds_the_wait_for_a_silent_peer(doctor, run_cli) -> None:
    from amagi_plugin.doctor import PEER_TIMEOUT_S

    with socket.socket() as silent:  # accepts TCP connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        peer = f"SILENT@127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        r, checks = doctor("--delivery-destinations", peer, "--timeout", "0.5")
        took = time.monotonic() - start
    _no_traceback(r)
    assert r.code == 1 and checks[f"destination {peer}"]["detail"] == "no answer within 0.5 s"
    assert took < PEER_TIMEOUT_S  # the default would have waited 5 s for this peer alone
    for bad in ("0", "-1", "nan", "inf"):
        r = run_cli("doctor", "--timeout", bad)
        assert r.code == ExitCode.BAD_INPUT and "--timeout must be a number of seconds" in r.stderr
    assert f"default {PEER_TIMEOUT_S:g};" in run_cli("doctor", "--help").stdout


def test_a_destination_refusing_qido_for_good_is_a_warning(doctor) -> None:
    # A STOW-RS-only destination answers doctor's QIDO-RS query with a 4xx or 501: reachable,
    # a warning. A server error that may pass (503) or refused credentials fail the check.
    from tests.dicom_io._web_fixtures import FlakyDicomweb

    with running(FlakyDicomweb()) as web:
        name = f"destination {web.url}"
        web.plan = [("status", 405, "text/plain", "GET not allowed"),
                    ("status", 501, "text/plain", "QIDO-RS is not implemented"),
                    ("status", 503, "text/plain", "archive busy"),
                    ("status", 403, "text/plain", "no")]
        seen = []
        for _ in range(len(web.plan)):  # one QIDO-RS query, so one planned answer, per run
            r, checks = doctor("--delivery-destinations", web.url)
            _no_traceback(r)
            seen.append((checks[name]["status"], r.code))
        assert seen == [("warn", 0), ("warn", 0), ("FAIL", 1), ("FAIL", 1)]
        assert checks[name]["detail"].startswith(f"QIDO-RS: HTTP 403 Forbidden from {web.url}")
        r, checks = doctor("--delivery-destinations", web.url)  # then: an empty QIDO answer
        assert checks[name]["status"] == "ok" and r.code == 0
    assert [q["method"] for q in web.requests] == ["GET"] * 5
    assert all(q["path"].startswith("/dicom-web/studies") for q in web.requests)


def test_a_token_no_header_can_carry_is_named_not_shown(run_cli, tmp_path: Path) -> None:
    # A token with the trailing newline of a mounted secret file: one line naming the peer
    # and the variable, never the token (requests' own error would quote it).
    config = tmp_path / "peers.toml"
    url = f"http://127.0.0.1:{_free_port()}/dicom-web"
    config.write_text(f'[[poll.sources]]\nurl = "{url}"\nauth = "bearer"\n'
                      f'token_env = "{ARCHIVE_ENV}"\n')
    r = run_cli("doctor", "--format", "json", "--config", str(config), "--storage-var-dir",
                str(tmp_path / "var"), env={ARCHIVE_ENV: "sekrit-token-42\n"})
    _no_traceback(r)
    assert r.code == 1 and "sekrit-token-42" not in r.stdout + r.stderr
    detail = {c["check"]: c for c in json.loads(r.stdout)}[f"poll source {url}"]["detail"]
    assert f"{ARCHIVE_ENV} (its token) ends with a control character" in detail


def _web_config(tmp_path: Path, orthanc: Orthanc) -> Path:
    path = tmp_path / "peers.toml"
    path.write_text(f"""
[[delivery.destinations]]
url = "{orthanc.dicomweb_url}"
auth = "basic"
username = "amagi"
password_env = "{PACS_ENV}"

[[poll.sources]]
url = "{orthanc.dicomweb_url}"
auth = "basic"
username = "amagi"
password_env = "{ARCHIVE_ENV}"
""")
    return path


@pytest.mark.integration
def test_doctor_queries_each_dicomweb_peer(run_cli, tmp_path: Path) -> None:
    def doctor(config: Path, env: dict[str, str]):
        r = run_cli("doctor", "--format", "json", "--config", str(config),
                    "--storage-var-dir", str(tmp_path / "var"), env=env)
        _no_traceback(r)
        assert PASSWORD not in r.stdout + r.stderr and WRONG not in r.stdout + r.stderr
        return r, {c["check"]: c for c in json.loads(r.stdout)}

    users = {"amagi": PASSWORD}
    with running(Orthanc(tmp_path / "orthanc", _free_port(), dicomweb=True, users=users)) as o:
        config = _web_config(tmp_path, o)
        dest, source = f"destination {o.dicomweb_url}", f"poll source {o.dicomweb_url}"

        r, checks = doctor(config, {PACS_ENV: PASSWORD, ARCHIVE_ENV: PASSWORD})
        for name in (dest, source):
            assert checks[name]["status"] == "ok", checks[name]
            assert checks[name]["detail"].startswith("QIDO-RS answered in ")
            assert checks[name]["detail"].endswith("basic auth accepted")
        assert not [c for c in checks.values() if c["status"] == "FAIL" and c["required"]]
        assert r.code == 0

        r, checks = doctor(config, {PACS_ENV: WRONG})
        assert r.code == 1
        assert checks[dest]["status"] == "FAIL" and checks[dest]["detail"].startswith(
            f"QIDO-RS: HTTP 401 Unauthorized from {o.dicomweb_url}")
        assert checks[source] == {
            "check": source, "status": "FAIL", "required": True,
            "detail": f"DICOMweb source {o.dicomweb_url}: environment variable {ARCHIVE_ENV} "
                      "(its password) is not set"}

        # https:// to Orthanc's plain HTTP port: the TLS handshake fails.
        tls_url = o.dicomweb_url.replace("http://", "https://")
        r, checks = doctor(config, {PACS_ENV: PASSWORD, ARCHIVE_ENV: PASSWORD,
                                    "AMAGI_DELIVERY_DESTINATIONS": tls_url})
        assert r.code == 1
        failed = checks[f"destination {tls_url}"]
        assert failed["status"] == "FAIL"
        assert failed["detail"].startswith(f"QIDO-RS to {tls_url}: TLS handshake failed: ")
        assert checks[source]["status"] == "ok"
