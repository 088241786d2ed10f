"""Unit tests: frame<->time conversions, DICOM timing attributes, the lazy fragment stream."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.tag import Tag

from dicom_io.errors import MissingTimingError
from dicom_io.fragments import FragmentStream, index_fragments, read_header
from dicom_io.timing import FrameTiming, frame_to_time, time_to_frame, timing_from_dataset


def test_uniform_timing_conversions():
    timing = FrameTiming.uniform(100, 25.0, "FrameTime")
    assert timing.fps == pytest.approx(25.0) and timing.duration_s == pytest.approx(4.0)
    assert timing.frame_to_time(10) == pytest.approx(0.4)
    assert timing.time_to_frame(0.4) == 10       # exactly on a frame
    assert timing.time_to_frame(0.439) == 10     # still showing frame 10
    assert timing.time_to_frame(0.44) == 11
    assert timing.time_to_frame(-1) == 0 and timing.time_to_frame(99.0) == 99
    with pytest.raises(IndexError, match=r"frame index 100 outside 0\.\.99"):
        timing.frame_to_time(100)
    with pytest.raises(ValueError, match="finite"):
        timing.time_to_frame(float("nan"))
    for i in (0, 1, 37, 99):
        assert time_to_frame(frame_to_time(i, timing.times), timing.times) == i


def test_frame_time_vector_increments():
    timing = FrameTiming.from_increments_ms([0, 40, 40, 80, 40], "FrameTimeVector")
    np.testing.assert_allclose(timing.times, [0, 0.04, 0.08, 0.16, 0.2])
    assert not timing.is_uniform and timing.fps == pytest.approx(4 / 0.2)
    assert timing.time_to_frame(0.15) == 2
    with pytest.raises(MissingTimingError, match="negative or non-finite"):
        FrameTiming.from_increments_ms([0, 40, -5], "FrameTimeVector")


def _cine(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_timing_from_dataset_precedence():
    # Frame Increment Pointer decides between Frame Time and Frame Time Vector
    both = _cine(FrameTime="40", FrameTimeVector=[0, 20, 20],
                 FrameIncrementPointer=Tag("FrameTimeVector"))
    assert timing_from_dataset(both, 3).source == "FrameTimeVector"
    both.FrameIncrementPointer = Tag("FrameTime")
    t = timing_from_dataset(both, 3)
    assert t.source == "FrameTime" and t.fps == pytest.approx(25.0)
    assert timing_from_dataset(_cine(CineRate=10), 3).source == "CineRate"
    assert timing_from_dataset(_cine(RecommendedDisplayFrameRate=12), 3).fps == pytest.approx(12)
    assert timing_from_dataset(_cine(), 3) is None
    with pytest.raises(MissingTimingError, match=r"Frame Time -5\.0 ms"):
        timing_from_dataset(_cine(FrameTime="-5"), 3)
    single = _cine(FrameTimeVector=0, FrameIncrementPointer=Tag("FrameTimeVector"))
    assert timing_from_dataset(single, 1).n_frames == 1


@pytest.mark.parametrize("fragment_size", [None, 700, 4096])
def test_fragment_stream_matches_bitstream(make_video, fragment_size):
    ts = "1.2.840.10008.1.2.4.102.1" if fragment_size else None
    vid = make_video("h264", n=20, transfer_syntax=ts, fragment_size=fragment_size)
    original = vid.stream.read_bytes()
    _, offset = read_header(vid.path)
    index = index_fragments(vid.path, offset)
    assert index.damage is None
    # encapsulation pads the stream to an even length
    assert index.total_length in (len(original), len(original) + 1)
    with FragmentStream(vid.path, index) as raw:
        assert raw.seekable() and raw.size() == index.total_length
        assert raw.read()[: len(original)] == original
        rng = np.random.default_rng(0)
        for _ in range(50):
            pos = int(rng.integers(0, len(original)))
            n = int(rng.integers(1, 3000))
            raw.seek(pos)
            assert raw.read(n) == original[pos:pos + n]
        assert raw.seek(-10, io.SEEK_END) == index.total_length - 10
        assert len(raw.read(100)) == 10 and raw.read(5) == b""
        raw.seek(5)
        raw.seek(3, io.SEEK_CUR)
        assert raw.tell() == 8 and raw.read(4) == original[8:12]
        with pytest.raises(ValueError, match="negative seek"):
            raw.seek(-1)
    buffered = io.BufferedReader(FragmentStream(vid.path, index), 1 << 12)
    assert buffered.read()[: len(original)] == original
    buffered.close()
