"""Shared inputs for the result-writer tests: tiny real videos, events, known warnings.

Imported by the writer test modules; each defines a module-scoped ``sources`` fixture
with :func:`make_sources` (tiny videos: about 0.3 s to encode).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io.encode import VideoMetadata, write_multiframe_dicom, write_video_dicom
from dicom_io.results import AlgorithmInfo, BleedingEvent, CaseIndex
from dicom_io.validate import run_dciodvfy, unexpected_warnings

ROWS, COLS, N_FRAMES, FPS = 64, 80, 20, 10.0
CODECS = ("h264", "uncompressed")
DEMO = AlgorithmInfo("AMAGI-SF50", "0.1.0", "demo-synthetic", "SlowFast R50 + HRNet-OCR")
AUTHORS = AlgorithmInfo("AMAGI-SF152", "1.0", "authors")

#: dciodvfy warnings that are false alarms for our SR (stack_notes.md §5, §7):
#: it does not model the TCOORD macro (PS3.3 C.18.7) and cannot know a private scheme.
SR_KNOWN_WARNINGS = (
    r"^Attribute is not present in standard DICOM IOD - \(0x0040,0xa130\) CS Temporal Range Type$",
    r"^Attribute is not present in standard DICOM IOD - \(0x0040,0xa138\) DS Referenced Time Offsets$",
    r"^Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class$",
    r"^Unrecognized defined term <99AMAGI> for value 1 of attribute <Coding Scheme Designator>$",
    r"^Unrecognized defined term <2\.25\.191741609155813735924441066311734613925> for value 1 of attribute <Coding Scheme UID>$",
)

#: dciodvfy (dicom3tools 2022) predates Device UID in Contributing Equipment Sequence items
#: (PS3.3 C.12.1), where every writer names the algorithm (IHE AI Results).
EQUIPMENT_KNOWN_WARNINGS = (
    r"^Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID$",
    r"^Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class$",
)


@dataclass
class Source:
    """A written test video: its path, header (no pixels) and the frames encoded."""

    codec: str
    path: Path
    header: Dataset
    frames: np.ndarray  # (N, H, W, 3) uint8


def _frames() -> np.ndarray:
    y, x = np.mgrid[0:ROWS, 0:COLS]
    frames = np.empty((N_FRAMES, ROWS, COLS, 3), np.uint8)
    for i in range(N_FRAMES):
        frames[i, ..., 0] = (x * 3 + i * 5) % 256
        frames[i, ..., 1] = (y * 3) % 256
        frames[i, ..., 2] = 40 + i * 8
    return frames


def make_source(codec: str, directory: Path) -> Source:
    """Encode the test video with ``codec`` ('h264' or 'uncompressed') as DICOM."""
    frames = _frames()
    meta = VideoMetadata(patient_name="TEST^WRITER", patient_id="W-0001", accession_number="A1")
    path = directory / f"video_{codec}.dcm"
    if codec == "h264":
        write_video_dicom(list(frames), path, fps=FPS, codec="h264", meta=meta)
    else:
        write_multiframe_dicom(list(frames), path, fps=FPS, transfer_syntax=ExplicitVRLittleEndian,
                               meta=meta)
    return Source(codec, path, dcmread(path, stop_before_pixels=True), frames)


def make_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    """Both test videos (each test module makes them once in a module-scoped fixture)."""
    directory = tmp_path_factory.mktemp("writer_sources")
    return {codec: make_source(codec, directory) for codec in CODECS}


def make_events(n: int) -> list[BleedingEvent]:
    """``n`` (0, 1 or 3) well-separated events inside the 20-frame, 10 fps video."""
    spans = [(2, 6, 4), (9, 12, 11), (15, 19, 16)][:n]
    events = []
    for k, (first, last, key) in enumerate(spans):
        start, end = (first - 1) / FPS, (last - 1) / FPS
        events.append(BleedingEvent(
            start_s=start, end_s=end, duration_s=(last - first + 1) / FPS,
            start_frame=first, end_frame=last, key_frame=key,
            peak_probability=0.9 - 0.1 * k + 1 / 3 * 1e-3, mean_probability=0.7 - 0.1 * k))
    return events


def make_index(events: list[BleedingEvent]) -> CaseIndex:
    return CaseIndex.from_events(events, N_FRAMES / FPS)


def make_masks(events: list[BleedingEvent], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = {}
    for e in events:
        mask = np.zeros((ROWS, COLS), bool)
        r, c = rng.integers(0, ROWS - 20), rng.integers(0, COLS - 20)
        mask[r:r + 15, c:c + 18] = True
        mask[rng.random((ROWS, COLS)) > 0.97] = True  # not a plain rectangle
        masks[e.key_frame] = mask
    return masks


def assert_valid(path: Path, known_warnings: tuple[str, ...] = ()) -> list[str]:
    """dciodvfy: no error and no warning outside ``known_warnings`` and
    :data:`EQUIPMENT_KNOWN_WARNINGS`; returns the warnings other than the latter."""
    ok, errors, warnings = run_dciodvfy(path)
    assert ok and errors == [], errors
    assert unexpected_warnings(warnings, (*EQUIPMENT_KNOWN_WARNINGS, *known_warnings)) == []
    assert sum("(0x0018,0x1002) UI Device UID" in w for w in warnings) == 1, warnings
    return unexpected_warnings(warnings, EQUIPMENT_KNOWN_WARNINGS)


def assert_same_patient_and_study(ds: Dataset, source: Dataset) -> None:
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                "StudyInstanceUID", "StudyID", "StudyDate", "AccessionNumber"):
        assert ds.get(key) == source.get(key), key
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPInstanceUID != source.SOPInstanceUID


def only_dcm_files(directory: Path) -> None:
    """Nothing partial is left behind."""
    assert [p.name for p in directory.iterdir() if not p.name.endswith(".dcm")] == []
