"""Multi-frame native/RLE/JPEG instances and single-frame series through open_video."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless, generate_uid

from dicom_io.encode import VideoMetadata, write_multiframe_dicom
from dicom_io.errors import InvalidInstanceError, MissingTimingError
from dicom_io.native import to_rgb
from dicom_io.sopclasses import VIDEO_ENDOSCOPIC, VL_ENDOSCOPIC
from dicom_io.video import open_video

pytestmark = pytest.mark.timeout(60)


def _frames(n: int, rows: int = 48, cols: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth gradients (fair to JPEG) with a little noise (so lossless means exact)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    base = np.stack([x * 3, y * 4, x + y], axis=-1) + rng.integers(0, 4, (rows, cols, 3))
    return np.stack([np.clip(base + 9 * i, 0, 255) for i in range(n)]).astype(np.uint8)


@pytest.mark.parametrize(("ts", "max_mae"), [(ExplicitVRLittleEndian, 0.0), (RLELossless, 0.0),
                                             (JPEGBaseline8Bit, 12.0)],
                         ids=["native", "rle", "jpeg-baseline"])
def test_multiframe(tmp_path, dciodvfy_errors, ts, max_mae):
    frames = _frames(12)
    path = tmp_path / "mf.dcm"
    meta = VideoMetadata()
    write_multiframe_dicom(frames, path, fps=15.0, transfer_syntax=ts, meta=meta)
    assert dciodvfy_errors(path) == []
    src = open_video(path)
    assert src.kind == "dicom-multiframe" and src.transfer_syntax_uid == ts
    assert (src.rows, src.columns, src.frame_count, src.fps) == (48, 64, 12, pytest.approx(15.0))
    assert src.sop_instance_uid == meta.sop_instance_uid and src.sop_class_uid == VIDEO_ENDOSCOPIC
    got = list(src.frames())
    assert [i for i, _, _ in got] == list(range(12))
    np.testing.assert_allclose([t for _, t, _ in got], np.arange(12) / 15.0, atol=1e-9)
    for i, _, rgb in got:
        assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
        assert np.abs(rgb.astype(int) - frames[i]).mean() <= max_mae
    assert [i for i, _, _ in src.frames(3, 10, 3)] == [3, 6, 9]
    assert [i for i, _, _ in src.window(0.5, 0.7)] == [8, 9, 10]


def _write_image(path: Path, frame: np.ndarray, study: str, series: str, number: int,
                 **temporal) -> Dataset:
    """One single-frame VL Endoscopic Image (PS3.3 A.32.1), native RGB."""
    meta = VideoMetadata(study_instance_uid=study, series_instance_uid=series,
                         sop_instance_uid=generate_uid(), instance_number=number,
                         sop_class_uid=VL_ENDOSCOPIC)
    write_multiframe_dicom([frame], path, fps=1.0, meta=meta)
    ds = pydicom.dcmread(path)
    for kw in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "CineRate",
               "RecommendedDisplayFrameRate", "StartTrim", "StopTrim"):
        delattr(ds, kw)
    for kw, value in temporal.items():
        setattr(ds, kw, value)
    if not temporal:  # a series that is not temporally related: no Content Date/Time
        del ds.ContentDate, ds.ContentTime
    ds.save_as(path)
    return ds


def _series(tmp_path: Path, n: int, temporal: str | None, study: str | None = None,
            series: str | None = None) -> tuple[Path, np.ndarray, list[Dataset]]:
    """Write ``n`` images whose time order is the reverse of their Instance Number,
    under shuffled file names. Returns the folder, frames in time order, datasets."""
    folder = tmp_path / f"series_{temporal}"
    folder.mkdir()
    frames = _frames(n, seed=3)
    study, series = study or generate_uid(), series or generate_uid()
    t0 = dt.datetime(2024, 5, 6, 10, 30, 0)
    names = [f"img_{k:02d}.dcm" for k in range(n)]
    random.Random(0).shuffle(names)
    written = []
    for k in range(n):
        stamp = t0 + dt.timedelta(milliseconds=40 * k)
        temporal_attrs = {
            "AcquisitionDateTime": {"AcquisitionDateTime": stamp.strftime("%Y%m%d%H%M%S.%f")},
            "ContentTime": {"ContentDate": "20240506",
                            "ContentTime": stamp.strftime("%H%M%S.%f")},
            "FrameReferenceTime": {"FrameReferenceTime": 40 * k},
            None: {},
        }[temporal]
        written.append(_write_image(folder / names[k], frames[k], study, series, n - k,
                                    **temporal_attrs))
    return folder, frames, written


@pytest.mark.parametrize("temporal", ["AcquisitionDateTime", "ContentTime",
                                      "FrameReferenceTime"])
def test_series_ordered_by_time(tmp_path, dciodvfy_errors, temporal):
    folder, frames, written = _series(tmp_path, 8, temporal)
    (folder / "README.txt").write_text("not DICOM, skipped")
    assert dciodvfy_errors(next(folder.glob("*.dcm"))) == []
    src = open_video(folder)
    assert src.kind == "dicom-series" and src.frame_count == 8
    assert src.fps == pytest.approx(25.0, rel=1e-6)
    assert src.series_instance_uid == written[0].SeriesInstanceUID
    got = list(src.frames())
    for i, t, rgb in got:
        assert t == pytest.approx(0.04 * i, abs=1e-6)
        np.testing.assert_array_equal(rgb, frames[i])
    assert src.frame_reference(2) == (VL_ENDOSCOPIC, written[2].SOPInstanceUID, None)
    # the same series given as a list of files, in any order
    files = sorted(folder.glob("*.dcm"), reverse=True)
    again = open_video(files)
    assert [p.name for p in again.series_paths] == [p.name for p in src.series_paths]


def test_series_without_time_uses_instance_number(tmp_path, caplog):
    folder, frames, _ = _series(tmp_path, 5, None)
    with pytest.raises(MissingTimingError, match="no temporal attribute"):
        open_video(folder)
    with caplog.at_level("WARNING", logger="dicom_io"):
        src = open_video(folder, fallback_fps=5.0)
    assert "ordered by Instance Number" in caplog.text
    got = [rgb for _, _, rgb in src.frames()]
    # instance numbers run backwards in time: frame 0 is the last written
    np.testing.assert_array_equal(got[0], frames[-1])
    np.testing.assert_array_equal(got[-1], frames[0])


def test_series_errors(tmp_path):
    folder, _, _ = _series(tmp_path, 3, "FrameReferenceTime")
    other = _frames(1, rows=32, cols=32)[0]
    _write_image(folder / "other_series.dcm", _frames(1)[0], generate_uid(), generate_uid(), 9,
                 FrameReferenceTime=500)
    with pytest.raises(InvalidInstanceError, match="belong to 2 series"):
        open_video(folder)
    (folder / "other_series.dcm").unlink()
    first = pydicom.dcmread(next(folder.glob("*.dcm")))
    _write_image(folder / "small.dcm", other, first.StudyInstanceUID, first.SeriesInstanceUID,
                 9, FrameReferenceTime=500)
    with pytest.raises(InvalidInstanceError, match="differ in size"):
        open_video(folder)
    with pytest.raises(InvalidInstanceError, match="no such file"):
        open_video(tmp_path / "nowhere" / "x")


def test_single_image_file(tmp_path):
    frame = _frames(1)[0]
    path = tmp_path / "key.dcm"
    _write_image(path, frame, generate_uid(), generate_uid(), 1)
    src = open_video(path)
    assert src.kind == "dicom-series" and src.frame_count == 1
    ((i, t, rgb),) = list(src.frames())
    assert (i, t) == (0, 0.0)
    np.testing.assert_array_equal(rgb, frame)


def test_to_rgb_photometric_conversions():
    gray8 = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    h = Dataset()
    h.PhotometricInterpretation, h.BitsStored = "MONOCHROME2", 8
    out = to_rgb(gray8, h)
    assert out.shape == (3, 4, 3) and np.array_equal(out[..., 1], gray8)
    h.PhotometricInterpretation = "MONOCHROME1"
    assert np.array_equal(to_rgb(gray8, h)[..., 0], 255 - gray8)
    h.PhotometricInterpretation, h.BitsStored = "MONOCHROME2", 12
    gray12 = (gray8.astype(np.uint16) << 4)
    assert np.array_equal(to_rgb(gray12, h)[..., 2], gray8)
