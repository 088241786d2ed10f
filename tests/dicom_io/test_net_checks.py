"""Unit tests of the listener's checks: UID syntax, element-structure walk, contexts, spool."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from dicom_io.encode import VIDEO_TRANSFER_SYNTAXES
from dicom_io.fragments import read_header
from dicom_io.net import spool
from dicom_io.net.checks import check_structure, check_uid, dataset_offset
from dicom_io.net.contexts import VERIFICATION, accepted_contexts, transfer_syntaxes_for
from dicom_io.sopclasses import (
    COMPREHENSIVE_SR,
    INPUT_SOP_CLASSES,
    RESULT_SOP_CLASSES,
    SEGMENTATION,
    VIDEO_ENDOSCOPIC,
    VL_ENDOSCOPIC,
)
from tests.dicom_io._net_fixtures import (
    CT_IMAGE_STORAGE,
    make_sr,
    make_uncompressed,
    make_video,
    replace_dataset,
)


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "0.0", "2.25.1234567890", "1.0.3"])
def test_valid_uids(uid: str) -> None:
    assert check_uid(uid) == (True, "")


@pytest.mark.parametrize(("uid", "why"), [
    ("", "empty"), ("1.02.3", "not a valid"), ("1..2", "not a valid"), ("1.2.", "not a valid"),
    ("../../etc/passwd", "not a valid"), ("1.2.3a", "not a valid"), ("1.2/3", "not a valid"),
    ("1." + "2" * 63, "64"), (None, "empty"),
])
def test_invalid_uids(uid: object, why: str) -> None:
    ok, reason = check_uid(uid, "SOPInstanceUID")
    assert not ok
    assert why in reason and "SOPInstanceUID" in reason


@pytest.fixture(scope="module")
def h264(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "h264.dcm")


def test_structure_ok_for_real_files(h264: Path, tmp_path: Path) -> None:
    assert check_structure(h264, "1.2.840.10008.1.2.4.102") == (True, "")
    native = make_uncompressed(tmp_path / "native.dcm")
    assert check_structure(native, ExplicitVRLittleEndian) == (True, "")
    sr = make_sr(tmp_path / "sr.dcm")
    assert check_structure(sr, ExplicitVRLittleEndian) == (True, "")


def test_structure_detects_truncation_inside_encapsulated_pixel_data(h264: Path,
                                                                     tmp_path: Path) -> None:
    body = h264.read_bytes()[dataset_offset(h264):]
    cut = replace_dataset(h264, tmp_path / "cut.dcm", body[:-100])
    ok, why = check_structure(cut, "1.2.840.10008.1.2.4.102")
    assert not ok and "truncated" in why


def test_structure_detects_truncated_native_pixel_data(tmp_path: Path) -> None:
    native = make_uncompressed(tmp_path / "native.dcm")
    data = native.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-7])
    ok, why = check_structure(cut, ExplicitVRLittleEndian)
    assert not ok and "truncated" in why


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_structure_rejects_garbage_and_empty(h264: Path, tmp_path: Path, ts: str) -> None:
    garbage = replace_dataset(h264, tmp_path / "g.dcm", os.urandom(4096))
    ok, why = check_structure(garbage, ts)
    assert not ok and why
    empty = replace_dataset(h264, tmp_path / "e.dcm", b"")
    assert check_structure(empty, ts) == (False, "the data set is empty")


def test_structure_rejects_out_of_order_tags(h264: Path, tmp_path: Path) -> None:
    # (0010,0010) PN "A " then (0008,0016) UI: descending tags
    body = (struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 2) + b"A "
            + struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 2) + b"1\0")
    f = replace_dataset(h264, tmp_path / "o.dcm", body)
    ok, why = check_structure(f, ExplicitVRLittleEndian)
    assert not ok and "out-of-order" in why


def test_structure_rejects_non_dicom(tmp_path: Path) -> None:
    f = tmp_path / "x.dcm"
    f.write_bytes(b"hello" * 100)
    ok, why = check_structure(f, ExplicitVRLittleEndian)
    assert not ok and "DICM" in why


def test_read_header_skips_pixel_data(h264: Path) -> None:
    ds, offset = read_header(h264, defer_size=4096)
    assert offset is not None
    assert "PixelData" not in ds
    assert ds.SOPClassUID == VIDEO_ENDOSCOPIC


IMAGE_COMMENTS = 0x00204000


def test_read_header_defers_large_values_to_the_file(h264: Path, tmp_path: Path) -> None:
    from pydicom import dcmread

    ds = dcmread(h264)
    ds.ImageComments = "x" * 5000
    ds.save_as(tmp_path / "long.dcm")
    header, offset = read_header(tmp_path / "long.dcm", defer_size=4096)
    assert offset is not None
    assert header._dict[IMAGE_COMMENTS].value is None  # still on disk
    assert header.ImageComments == "x" * 5000  # read from the file on access
    assert read_header(tmp_path / "long.dcm").dataset._dict[IMAGE_COMMENTS].value


def test_contexts_cover_design_section_4() -> None:
    contexts = dict(accepted_contexts())
    assert set(contexts) == INPUT_SOP_CLASSES | RESULT_SOP_CLASSES | {VERIFICATION}
    assert CT_IMAGE_STORAGE not in contexts
    video = set(transfer_syntaxes_for(VIDEO_ENDOSCOPIC))
    assert set(VIDEO_TRANSFER_SYNTAXES) <= video
    assert {"1.2.840.10008.1.2.4.102.1", "1.2.840.10008.1.2.4.108", RLELossless,
            "1.2.840.10008.1.2.4.50", ImplicitVRLittleEndian} <= video
    assert not set(VIDEO_TRANSFER_SYNTAXES) & set(transfer_syntaxes_for(VL_ENDOSCOPIC))
    assert "1.2.840.10008.1.2.1.99" in transfer_syntaxes_for(COMPREHENSIVE_SR)
    assert "1.2.840.10008.1.2.4.50" not in transfer_syntaxes_for(SEGMENTATION)
    with pytest.raises(ValueError, match="not a SOP class the listener serves"):
        transfer_syntaxes_for(CT_IMAGE_STORAGE)


def test_place_copies_across_filesystems_and_rolls_back(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "incoming.tmp"
    src.write_bytes(b"first")

    def cross_device(a: object, b: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(spool.os, "rename", cross_device)
    root = tmp_path / "spool"
    root.mkdir()
    placed = spool.place(src, root, ("1.2", "1.3"), "1.4.dcm")
    placed.commit()
    assert placed.path.read_bytes() == b"first" and src.exists()  # copied, owner deletes src
    # a replacement that is rolled back restores the first file
    src.write_bytes(b"second")
    again = spool.place(src, root, ("1.2", "1.3"), "1.4.dcm")
    assert again.path.read_bytes() == b"second"
    again.rollback()
    assert placed.path.read_bytes() == b"first"
    assert [p.name for p in (root / "1.2" / "1.3").iterdir()] == ["1.4.dcm"]
    # a new file that is rolled back disappears
    new = spool.place(src, root, ("1.2", "1.3"), "1.5.dcm")
    new.rollback()
    assert not new.path.exists()


def test_space_guard_counts_in_flight_bytes(tmp_path: Path) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free
    guard = spool.SpaceGuard(tmp_path, reserve_bytes=0)
    half = free // 2 + 1
    assert guard.try_reserve(half)[0]
    ok, why = guard.try_reserve(half)  # the second one would not fit while the first copies
    assert not ok and "reserve" in why
    guard.release(half)
    with pytest.raises(ValueError, match="reserve_bytes"):
        spool.SpaceGuard(tmp_path, -1)


@pytest.mark.filterwarnings("ignore:The value length")
def test_patient_name_read_raw_with_its_character_set(h264: Path, tmp_path: Path) -> None:
    from pydicom import dcmread

    from dicom_io.net.handlers import HEADER_DEFER_SIZE, _raw_text

    ds = dcmread(h264)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "MÜLLER^JOSÉ"
    ds.PatientID = "X" * 80  # too long for LO: decoded without validation
    ds.save_as(tmp_path / "latin1.dcm")
    header = read_header(tmp_path / "latin1.dcm", defer_size=HEADER_DEFER_SIZE).dataset
    assert _raw_text(header, "PatientName") == "MÜLLER^JOSÉ"
    assert _raw_text(header, "PatientID") == "X" * 80
    assert _raw_text(header, "OtherPatientIDs") == ""
