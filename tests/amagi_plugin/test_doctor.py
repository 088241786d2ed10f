from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest


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


def test_doctor_fails_on_missing_checkpoint(doctor, tmp_path: Path) -> None:
    r, checks = doctor("--model-name", "amagi_sf50", "--model-checkpoint", str(tmp_path / "none.pth"))
    assert r.code == 1
    assert checks["model"]["status"] == "FAIL" and "not found" in checks["model"]["detail"]


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
