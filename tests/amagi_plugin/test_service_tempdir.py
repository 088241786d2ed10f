"""The process-wide temporary directory that services point at their spool (pynetdicom's
C-STORE temporary files) comes back to what it was, whatever order services stop in."""

from __future__ import annotations

import tempfile
from pathlib import Path

from amagi_plugin.service.app import _IncomingTempdir


def test_tempdir_follows_the_newest_running_service_and_is_restored(tmp_path: Path) -> None:
    before = tempfile.tempdir
    guard = _IncomingTempdir()
    a, b, c = object(), object(), object()
    try:
        guard.claim(a, tmp_path / "a")
        guard.claim(b, tmp_path / "b")
        assert tempfile.tempdir == str(tmp_path / "b")
        guard.release(a)  # the first stops first: the second's stays
        assert tempfile.tempdir == str(tmp_path / "b")
        guard.claim(c, tmp_path / "c")
        guard.release(c)
        assert tempfile.tempdir == str(tmp_path / "b")
        guard.release(b)
        assert tempfile.tempdir == before
        guard.release(b)  # a second stop changes nothing
        assert tempfile.tempdir == before
    finally:
        tempfile.tempdir = before
