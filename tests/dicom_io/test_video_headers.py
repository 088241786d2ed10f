"""Header values are checked against the pixel data before anything proportional to them is
allocated: a Number of Frames that lies fails at once, with a reason, in bounded memory."""

from __future__ import annotations

import resource
import time

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicom_io.encode import write_multiframe_dicom
from dicom_io.errors import InvalidInstanceError, TruncatedVideoError
from dicom_io.video import check_declared_frames, open_video
from tests.dicom_io.conftest import synthetic_frames

pytestmark = pytest.mark.timeout(60)


def _declare(src, dst, frames: int):
    ds = pydicom.dcmread(src)
    ds.NumberOfFrames = frames
    if "StopTrim" in ds:
        ds.StopTrim = frames
    ds.save_as(dst)
    return dst


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(("container", "declared"), [("ts", 30_000_000), ("ts", 2**31 - 1),
                                                     ("mp4", 30_000_000)])
def test_lying_number_of_frames_fails_at_once_in_bounded_memory(make_video, tmp_path,
                                                                container, declared):
    vid = make_video("h264", n=30, container=container)
    path = _declare(vid.path, tmp_path / "liar.dcm", declared)
    before = _peak_rss_mb()
    t0 = time.monotonic()
    with pytest.raises(InvalidInstanceError,
                       match=rf"Number of Frames \(0028,0008\) is {declared} but the pixel "
                             r"data holds 30 frame\(s\)"):
        open_video(path)
    assert time.monotonic() - t0 < 10
    # 30 M float64 frame times alone would be 240 MB; nothing proportional was allocated.
    assert _peak_rss_mb() - before < 100


def test_header_a_little_long_is_still_a_truncation(make_video, tmp_path):
    """A stream short of its header by less than the lie threshold keeps truncation semantics."""
    vid = make_video("h264", n=30)
    src = open_video(_declare(vid.path, tmp_path / "n40.dcm", 40))
    got = []
    with pytest.raises(TruncatedVideoError) as info:
        for item in src.frames():
            got.append(item)
    assert len(got) == 30 and info.value.frames_decoded == 30


def test_check_declared_frames_reason() -> None:
    assert check_declared_frames(30, 30) == (True, "")
    assert check_declared_frames(124, 30) == (True, "")
    ok, why = check_declared_frames(125, 30)
    assert not ok and why == ("Number of Frames (0028,0008) is 125 but the pixel data holds "
                              "30 frame(s)")


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless])
def test_multiframe_number_of_frames_beyond_pixel_data(tmp_path, ts):
    frames = synthetic_frames(4, rows=16, cols=16)
    path = tmp_path / "mf.dcm"
    write_multiframe_dicom(frames, path, transfer_syntax=ts)
    good = open_video(path)
    assert good.frame_count == 4
    np.testing.assert_array_equal(next(good.frames())[2].shape, (16, 16, 3))
    liar = _declare(path, tmp_path / "mf_liar.dcm", 2**31 - 1)
    with pytest.raises(InvalidInstanceError, match=r"Number of Frames \(0028,0008\) is 2147483647"):
        open_video(liar)


def test_multiframe_rows_columns_beyond_pixel_data(tmp_path):
    path = tmp_path / "mf.dcm"
    write_multiframe_dicom(synthetic_frames(4, rows=16, cols=16), path)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 65535
    ds.save_as(tmp_path / "huge.dcm")
    with pytest.raises(InvalidInstanceError, match="of 65535x65535 but the pixel data holds"):
        open_video(tmp_path / "huge.dcm")
