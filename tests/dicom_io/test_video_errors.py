"""Bad input gives a typed exception with a clear message; truncated streams keep good frames."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.encode import write_multiframe_dicom
from dicom_io.errors import (
    EmptyVideoError,
    InvalidInstanceError,
    MissingTimingError,
    TruncatedVideoError,
    UnsupportedTransferSyntaxError,
    VideoDecodeError,
)
from dicom_io.fragments import index_fragments, read_header
from dicom_io.video import open_video, probe

pytestmark = pytest.mark.timeout(60)  # "never a hang"

_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
_DELIM = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _edit(src: Path, dst: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(dst)
    return dst


def _with_pixel_items(src: Path, dst: Path, items: bytes) -> Path:
    """Copy ``src`` with its Pixel Data value replaced by raw encapsulated ``items``."""
    _, offset = read_header(src)
    data = src.read_bytes()
    dst.write_bytes(data[: offset + 12] + items)
    return dst


def _collect(src) -> tuple[list[tuple[int, float, np.ndarray]], TruncatedVideoError]:
    got = []
    with pytest.raises(TruncatedVideoError) as info:
        for item in src.frames():
            got.append(item)
    return got, info.value


@pytest.mark.parametrize(("ts", "fragment_size"), [("1.2.840.10008.1.2.4.102", None),
                                                   ("1.2.840.10008.1.2.4.102.1", 1200)])
def test_truncated_file_yields_frames_then_raises(make_video, tmp_path, caplog, ts,
                                                  fragment_size):
    vid = make_video("h264", n=30, transfer_syntax=ts, fragment_size=fragment_size, gop=5)
    path = _cut(vid.path, tmp_path / "cut.dcm", 0.6)
    with caplog.at_level("WARNING", logger="dicom_io"):
        src = open_video(path)
    assert "truncated" in caplog.text
    got, err = _collect(src)
    assert 5 <= len(got) < 30
    assert [i for i, _, _ in got] == list(range(len(got)))
    assert err.frames_decoded == len(got)
    assert f"{len(got)} of 30 frames decoded" in str(err) and "truncated" in str(err)
    # The frames before the damage are the real ones. A frame the decoder lost near the cut
    # (its timestamps say so) is its predecessor repeated, and the log names it.
    repeated = {i for i, _, rgb in got[1:] if np.array_equal(rgb, got[i - 1][2])}
    for i in repeated:
        assert f"frame(s) {i}-{i} missing from the stream; frame {i - 1} repeated" in caplog.text
    for i, t, rgb in got:
        assert t == pytest.approx(i / 30)
        if i not in repeated:
            assert _mae(rgb, vid.frames[i]) < 12


def test_short_bitstream_in_well_formed_instance(make_video, tmp_path):
    """The DICOM structure is intact but the stream holds fewer frames than declared."""
    vid = make_video("h264", n=30, gop=5)
    full = vid.stream.read_bytes()
    short_ts = tmp_path / "short.ts"
    short_ts.write_bytes(full[: (len(full) // 2) // 188 * 188])
    from dicom_io.encode import wrap_video_as_dicom

    wrap_video_as_dicom(short_ts, tmp_path / "short.dcm", fps=30.0)
    path = _edit(tmp_path / "short.dcm", tmp_path / "short30.dcm", NumberOfFrames=30,
                 StopTrim=30)
    got, err = _collect(open_video(path))
    assert 0 < len(got) < 30 and err.frames_decoded == len(got)
    assert "bit stream ended early" in str(err)


def test_more_frames_than_declared_are_ignored(make_video, tmp_path, caplog):
    vid = make_video("h264", n=30)
    path = _edit(vid.path, tmp_path / "n20.dcm", NumberOfFrames=20, StopTrim=20)
    with caplog.at_level("WARNING", logger="dicom_io"):
        got = list(open_video(path).frames())
    assert len(got) == 20
    assert "more than the declared 20 frames" in caplog.text


def test_corrupt_fragment_item_mid_stream(make_video, tmp_path):
    vid = make_video("h264", n=30, transfer_syntax="1.2.840.10008.1.2.4.102.1",
                     fragment_size=1000, gop=5)
    _, offset = read_header(vid.path)
    index = index_fragments(vid.path, offset)
    assert len(index.offsets) >= 8
    data = bytearray(vid.path.read_bytes())
    bad_at = index.offsets[6] - 8  # item tag of the 7th fragment
    data[bad_at:bad_at + 8] = b"\x12\x34\x56\x78\xff\xff\xff\xff"
    path = tmp_path / "corrupt_item.dcm"
    path.write_bytes(bytes(data))
    got, err = _collect(open_video(path))
    assert 0 < len(got) < 30
    assert f"corrupt fragment item at byte {bad_at}" in str(err)


def test_corrupt_first_fragment_item(make_video, tmp_path):
    vid = make_video("h264", n=30, transfer_syntax="1.2.840.10008.1.2.4.102.1",
                     fragment_size=1000)
    _, offset = read_header(vid.path)
    data = bytearray(vid.path.read_bytes())
    data[offset + 12:offset + 20] = b"\x00" * 8  # the Basic Offset Table item tag
    path = tmp_path / "corrupt_first.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(VideoDecodeError, match=r"corrupt fragment item .* no usable fragment"):
        open_video(path)


def test_garbage_bitstream(make_video, tmp_path):
    vid = make_video("h264", n=10)
    noise = np.random.default_rng(1).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
    items = _ITEM + struct.pack("<HHI", 0xFFFE, 0xE000, len(noise)) + noise + _DELIM
    path = _with_pixel_items(vid.path, tmp_path / "noise.dcm", items)
    with pytest.raises(VideoDecodeError, match=r"noise\.dcm"):
        src = open_video(path)
        list(src.frames())


def test_damaged_bytes_inside_stream_never_hang(make_video, tmp_path):
    """Noise over part of the bit stream: frames come out (concealed) or a VideoDecodeError."""
    vid = make_video("h264", n=30, gop=5)
    _, offset = read_header(vid.path)
    data = bytearray(vid.path.read_bytes())
    start = offset + 20 + (len(data) - offset) // 2
    data[start:start + 1500] = np.random.default_rng(2).integers(0, 256, 1500,
                                                                 dtype=np.uint8).tobytes()
    path = tmp_path / "damaged.dcm"
    path.write_bytes(bytes(data))
    got = []
    try:
        got.extend(open_video(path).frames())
    except VideoDecodeError as e:
        assert str(e)
    assert all(rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8 for _, _, rgb in got)
    assert len(got) <= 30


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.201", "1.2.3.4.5.6"])
def test_unknown_transfer_syntax(h264_video_dicom, tmp_path, uid):
    ds = pydicom.dcmread(h264_video_dicom.path)
    ds.file_meta.TransferSyntaxUID = uid
    path = tmp_path / "ts.dcm"
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(UnsupportedTransferSyntaxError, match=f"transfer syntax {uid}"):
        open_video(path)
    assert probe(path).check() == (False, f"transfer syntax {uid} is not supported")


def test_non_video_sop_class(h264_video_dicom, tmp_path):
    ct = "1.2.840.10008.5.1.4.1.1.2"
    ds = pydicom.dcmread(h264_video_dicom.path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ct
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    with pytest.raises(UnsupportedTransferSyntaxError, match=f"SOP class {ct} is not a video"):
        open_video(path)
    ok, reason = probe(path).check()
    assert not ok and ct in reason


def test_missing_timing_multiframe(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (4, 16, 24, 3), dtype=np.uint8)
    write_multiframe_dicom(frames, tmp_path / "mf.dcm", fps=10)
    path = _edit(tmp_path / "mf.dcm", tmp_path / "mf_notime.dcm", FrameTime=None,
                 FrameIncrementPointer=None, CineRate=None, RecommendedDisplayFrameRate=None)
    with pytest.raises(MissingTimingError, match=r"no frame timing .* pass fallback_fps"):
        open_video(path)
    src = open_video(path, fallback_fps=12.5)
    assert src.timing.source == "fallback fps" and src.fps == pytest.approx(12.5)
    assert sum(1 for _ in src.frames()) == 4


@pytest.mark.parametrize(("changes", "message"), [
    ({"FrameTime": "0"}, "Frame Time 0.0 ms is not a positive duration"),
    ({"FrameTime": None, "FrameIncrementPointer": pydicom.tag.Tag("FrameTimeVector"),
      "FrameTimeVector": [0, 33, 33]}, "Frame Time Vector has 3 values for 30 frames"),
])
def test_unusable_timing(h264_video_dicom, tmp_path, changes, message):
    path = _edit(h264_video_dicom.path, tmp_path / "t.dcm", **changes)
    with pytest.raises(MissingTimingError, match=message):
        open_video(path)


def test_zero_frames(h264_video_dicom, tmp_path):
    path = _edit(h264_video_dicom.path, tmp_path / "n0.dcm", NumberOfFrames=0)
    with pytest.raises(EmptyVideoError, match="Number of Frames is 0"):
        open_video(path)
    empty = _with_pixel_items(h264_video_dicom.path, tmp_path / "empty.dcm", _ITEM + _DELIM)
    with pytest.raises(EmptyVideoError, match="no fragment data"):
        open_video(empty)


def test_missing_number_of_frames(h264_video_dicom, tmp_path):
    path = _edit(h264_video_dicom.path, tmp_path / "nonf.dcm", NumberOfFrames=None)
    with pytest.raises(InvalidInstanceError, match=r"Number of Frames \(0028,0008\) is missing"):
        open_video(path)


def test_native_pixel_data_with_video_syntax(h264_video_dicom, tmp_path):
    _, offset = read_header(h264_video_dicom.path)
    data = h264_video_dicom.path.read_bytes()[:offset]
    pixel = b"\x00" * 64
    element = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00" + struct.pack("<I", len(pixel))
    path = tmp_path / "native.dcm"
    path.write_bytes(data + element + pixel)
    with pytest.raises(VideoDecodeError, match="not encapsulated"):
        open_video(path)


def test_not_dicom_nor_video(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 100)
    with pytest.raises(InvalidInstanceError, match="neither DICOM nor a readable video"):
        open_video(text)
    with pytest.raises(InvalidInstanceError, match="not a readable DICOM file"):
        probe(text)
    with pytest.raises(InvalidInstanceError, match="no such file"):
        open_video(tmp_path / "missing.dcm")
