"""Log hygiene against hostile values: PHI masked as whole values only, control characters
from peers escaped."""

from __future__ import annotations

import io
import logging

from amagi_plugin.logsetup import REDACTED, PhiFilter, setup_logging


def test_phi_masks_whole_values_never_digits_inside_uids() -> None:
    f = PhiFilter()
    f.register("Test^Patient", "12345")
    text = f.scrub("instance 1.2.840.12345.6 of 12345 (PID: 12345.) for Test^Patient; x12345")
    assert text == (f"instance 1.2.840.12345.6 of {REDACTED} (PID: {REDACTED}.) for "
                    f"{REDACTED}; x12345")


def test_control_characters_from_peers_are_escaped() -> None:
    stream = io.StringIO()
    setup_logging("info", "text", stream)
    try:
        logging.getLogger("dicom_io.test").warning("association from AE %r", "X\nFAKE\x1b[31m")
        logging.getLogger("dicom_io.test").warning("AE %s", "Y\r\nINFO forged line")
    finally:
        setup_logging("warning", "text", io.StringIO())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("association from AE 'X\\nFAKE\\x1b[31m'")
    assert lines[1].endswith("AE Y\\r\\nINFO forged line")
