"""The process-wide temporary directory that services point at their spool (pynetdicom's
C-STORE temporary files) comes back to what it was, whatever order services stop in."""

from __future__ import annotations

import tempfile
from pathlib import Path

from amagi_plugin.service.app import INCOMING_TEMPDIR
from dicom_io.process_setting import ProcessSetting


def test_tempdir_follows_the_newest_running_service_and_is_restored(tmp_path: Path) -> None:
    before = tempfile.tempdir
    guard = ProcessSetting("tempfile.tempdir", lambda: tempfile.tempdir,
                           lambda value: setattr(tempfile, "tempdir", value))
    a, b, c = object(), object(), object()
    try:
        guard.claim(a, str(tmp_path / "a"))
        guard.claim(b, str(tmp_path / "b"))
        assert tempfile.tempdir == str(tmp_path / "b")
        guard.release(a)  # the first stops first: the second's stays
        assert tempfile.tempdir == str(tmp_path / "b")
        guard.claim(c, str(tmp_path / "c"))
        guard.release(c)
        assert tempfile.tempdir == str(tmp_path / "b")
        guard.release(b)
        assert tempfile.tempdir == before
        guard.release(b)  # a second stop changes nothing
        assert tempfile.tempdir == before
    finally:
        tempfile.tempdir = before


def test_the_services_setting_is_the_tempdir_and_held_by_no_one_at_rest() -> None:
    before = tempfile.tempdir
    owner = object()
    INCOMING_TEMPDIR.claim(owner, "/nowhere/incoming")
    try:
        assert tempfile.gettempdir() == "/nowhere/incoming"  # where pynetdicom writes
    finally:
        INCOMING_TEMPDIR.release(owner)
    assert tempfile.tempdir == before and INCOMING_TEMPDIR.owners == 0
