"""Parallel decoding yields exactly the serial frames, indices, times and errors, in bounded memory."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicom_io import avdecode, parallel
from dicom_io.encode import wrap_video_as_dicom, write_multiframe_dicom
from dicom_io.errors import DicomIOError, TruncatedVideoError
from dicom_io.fragments import index_fragments, read_header
from dicom_io.keyframes import Segment, SerialTail, key_frames, plan_segments
from dicom_io.parallel import parallel_frames
from dicom_io.video import VideoSource, open_video
from tests.dicom_io.conftest import synthetic_frames

pytestmark = pytest.mark.timeout(120)

N, GOP = 60, 6  # 2 s at 30 frames/s; segments of at least 16 frames: 3-4 of them

# name -> make_video arguments: every codec, fragmented or not, MPEG-TS and MP4, plain file
VIDEOS = {
    "h264": dict(codec="h264"),
    "h264-mp4-frag": dict(codec="h264", container="mp4",
                          transfer_syntax="1.2.840.10008.1.2.4.102.1", fragment_size=2000),
    "mpeg2": dict(codec="mpeg2", transfer_syntax="1.2.840.10008.1.2.4.101.1",
                  fragment_size=4000),
    "hevc": dict(codec="hevc", transfer_syntax="1.2.840.10008.1.2.4.107", fragment_size=3000),
    "h264-plain": dict(codec="h264", dicom=False),
}
RANGES = [(0, None, 1), (5, 41, 1), (3, None, 4), (17, 18, 1), (40, N, 7), (33, 34, 1),
          (0, 5, 2), (N, None, 1)]
Frames = list[tuple[int, float, np.ndarray]]


def _video(make_video, name: str) -> VideoSource:
    return open_video(make_video(n=N, gop=GOP, **VIDEOS[name]).path)


def _same(got: Frames, want: Frames, concealed: frozenset[int] = frozenset()) -> None:
    """The same frames, indices and times; the same pixels but where a decode reported the
    frame concealed (``concealed``: see :func:`_concealed`)."""
    assert [(i, t) for i, t, _ in got] == [(i, t) for i, t, _ in want]
    for (i, _, a), (_, _, b) in zip(got, want, strict=True):
        assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape
        assert i in concealed or np.array_equal(a, b), f"frame {i} differs"


def _concealed(records, keys: list[int] | None = None) -> frozenset[int]:
    """The frames whose pixels some decode reported as error-concealed: ``frame N decoded
    with concealed errors``, and the frames repeated in the place of missing ones after it
    (``frame(s) A-B missing ...; frame N repeated``), from the decoder's log ``records``;
    with ``keys`` (the stream's key frames), also the frames after each up to the next key
    frame: they are predicted from its pixels, which differ from one decode to another."""
    out: set[int] = set()
    for r in records:
        text = r.getMessage()
        if m := re.search(r"frame (\d+) decoded with concealed errors", text):
            out.add(int(m[1]))
        elif m := re.search(r"frame\(s\) (\d+)-(\d+) missing from the stream; frame (\d+) "
                            r"repeated", text):
            out.update(range(int(m[1]), int(m[2]) + 1))
    if keys is None:
        return frozenset(out)
    return frozenset(j for i in out
                     for j in range(i, min([k for k in keys if k > i], default=i + 1)))


def _same_damage(got: Frames, error: str | None, decoded: int | None, want: Frames,
                 want_error: str | None, want_decoded: int | None,
                 concealed: frozenset[int] = frozenset()) -> None:
    """Parallel decoding of a damaged stream ends as serial decoding does.

    One thing is not reproducible even between two serial decodes: whether FFmpeg flags the
    last frame before a cut packet as corrupt (its error concealment depends on decoder
    thread timing), so that one frame may be yielded by one run and reported damaged by
    another, or yielded by both with other concealed pixels (seen for HEVC cut at 85 % under
    load, 2 runs in 20). Nor, for the same reason, are the pixels of a frame FFmpeg conceals
    inside a garbled stream (H.264 garbled at 50 %, under load): those ``concealed`` frames
    (reported by a decode, :func:`_concealed`) keep their index and time but may differ in
    pixels. Everything else must agree exactly: the error class, the index and time of every
    frame, the pixels of every other frame before the last one, and the count to within that
    one final frame.
    """
    if (error, decoded) == (want_error, want_decoded):
        if error is None:
            _same(got, want, concealed)
            return
        assert [(i, t) for i, t, _ in got] == [(i, t) for i, t, _ in want]
        _same(got[:-1], want[:-1], concealed)
        return
    assert error is not None and want_error is not None, (error, want_error)
    assert error.split(":")[0] == want_error.split(":")[0]
    assert decoded is not None and want_decoded is not None and abs(decoded - want_decoded) == 1
    assert abs(len(got) - len(want)) <= 1
    n = min(len(got), len(want))
    _same(got[:n], want[:n], concealed)


def _run(frames) -> tuple[Frames, str | None, int | None]:
    """Everything a frames() call yields, then its error's text and frames_decoded."""
    got: Frames = []
    try:
        for item in frames:
            got.append(item)
    except DicomIOError as e:
        return got, f"{type(e).__name__}: {e}", getattr(e, "frames_decoded", None)
    return got, None, None


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dicom-io-decode")]


@pytest.mark.parametrize("name", list(VIDEOS))
def test_key_frames_come_from_the_packets(make_video, name):
    src = _video(make_video, name)
    assert src.decoder is not None
    splits = key_frames(src.decoder)
    assert splits[0] == 0 and len(splits) >= 3, splits
    assert splits == sorted(set(splits)) and splits[-1] < N
    # every split is a key frame the stream flags, at least MIN_SEGMENT_FRAMES apart
    assert min(np.diff(splits)) >= 16
    segments = list(plan_segments(src.decoder, min_frames=1))
    assert all(isinstance(s, Segment) for s in segments)
    assert [s.next_first for s in segments[:-1]] == [s.first for s in segments[1:]]
    assert segments[-1].next_first is None and len(segments) >= N // GOP - 1
    assert all(p.is_keyframe for s in segments[1:] for p in s.packets[:1])


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("name", list(VIDEOS))
def test_parallel_equals_serial(make_video, name, workers):
    src = _video(make_video, name)
    for start, stop, step in RANGES:
        want = list(src.frames(start, stop, step))
        got = list(parallel_frames(src, start, stop, step, workers=workers))
        _same(got, want)
    assert len(list(src.frames())) == N


def test_frames_option_and_full_video(make_video):
    vid = make_video(n=N, gop=GOP, **VIDEOS["hevc"])  # open GOPs: leading pictures
    src = open_video(vid.path)
    want = list(src.frames())
    _same(list(src.frames(workers=2)), want)
    _same(list(src.frames(15, 45, workers=3)), want[15:45])
    _same(list(src.window(0.5, 1.5, workers=2)), list(src.window(0.5, 1.5)))


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_multiframe_goes_through_the_same_api(tmp_path, ts, workers):
    path = tmp_path / "mf.dcm"
    write_multiframe_dicom(synthetic_frames(21), path, fps=25.0, transfer_syntax=ts)
    src = open_video(path)
    assert src.kind == "dicom-multiframe" and src.decoder is None
    for start, stop, step in [(0, None, 1), (3, 20, 2), (9, 10, 1), (0, None, 5)]:
        want = list(src.frames(start, stop, step))
        _same(list(parallel_frames(src, start, stop, step, workers=workers)), want)
        _same(list(src.frames(start, stop, step, workers=workers)), want)


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _garble(src: Path, dst: Path, at: float, length: int, zero: bool = False) -> Path:
    data = bytearray(src.read_bytes())
    pos = int(len(data) * at)
    noise = np.random.default_rng(1).integers(0, 256, length, dtype=np.uint8).tobytes()
    data[pos:pos + length] = bytes(length) if zero else noise
    dst.write_bytes(bytes(data))
    return dst


DAMAGE = [("cut", 0.6), ("cut", 0.85), ("garble", 0.5), ("zero", 0.4)]


def _damaged(src: Path, tmp_path: Path, damage: str, at: float) -> VideoSource:
    """``src`` cut or garbled (:data:`DAMAGE`), opened; skipped where opening refuses it."""
    path = tmp_path / "damaged.dcm"
    if damage == "cut":
        _cut(src, path, at)
    else:
        _garble(src, path, at, 3000 if damage == "zero" else 1500, zero=damage == "zero")
    try:
        return open_video(path)
    except DicomIOError:
        pytest.skip("this damage is refused when the file is opened")


@pytest.mark.parametrize("name", ["h264", "mpeg2", "hevc"])
@pytest.mark.parametrize(("damage", "at"), DAMAGE, ids=[f"{d}{a}" for d, a in DAMAGE])
def test_damaged_stream_same_frames_and_error(make_video, tmp_path, caplog, name, damage, at):
    vid = make_video(n=N, gop=GOP, **VIDEOS[name])
    src = _damaged(vid.path, tmp_path, damage, at)
    want, want_error, want_decoded = _run(src.frames())
    if damage == "cut":
        assert want_error is not None and "truncated" in want_error
    for workers in (2, 3):
        got, error, decoded = _run(parallel_frames(src, workers=workers))
        _same_damage(got, error, decoded, want, want_error, want_decoded,
                     _concealed(caplog.records, key_frames(open_video(vid.path).decoder, 1)))


def test_truncated_error_matches_on_a_sub_range(make_video, tmp_path):
    vid = make_video(n=N, gop=GOP, **VIDEOS["h264"])
    src = open_video(_cut(vid.path, tmp_path / "cut.dcm", 0.6))
    want, want_error, want_decoded = _run(src.frames(20, None, 3))
    got, error, decoded = _run(src.frames(20, None, 3, workers=2))
    assert want_error is not None and "of 60 frames decoded" in want_error
    _same_damage(got, error, decoded, want, want_error, want_decoded)
    with pytest.raises(TruncatedVideoError):
        list(parallel_frames(src, workers=2))


def test_timing_disagreement_falls_back_to_serial(make_video, tmp_path):
    """DICOM says 25 frames/s for a 30 frames/s stream: no key frame is a safe split."""
    vid = make_video(n=N, gop=GOP, **VIDEOS["h264"])
    path = tmp_path / "25fps.dcm"
    wrap_video_as_dicom(vid.stream, path, None, None, fps=25.0)
    src = open_video(path)
    plan = list(plan_segments(src.decoder))
    assert plan == [SerialTail(0)]
    for start, stop, step in [(0, None, 1), (31, 50, 2)]:
        _same(list(parallel_frames(src, start, stop, step, workers=2)),
              list(src.frames(start, stop, step)))


def _miscount_second_segment(monkeypatch) -> None:
    """Make the planner's second segment miss its next key frame by one frame."""
    real = parallel.plan_segments

    def off_by_one(decoder, start, stop, **kw):
        for k, item in enumerate(real(decoder, start, stop, **kw)):
            if k == 1 and isinstance(item, Segment):
                item = dataclasses.replace(item, next_first=item.next_first + 1)
            yield item

    monkeypatch.setattr(parallel, "plan_segments", off_by_one)


def test_miscounted_segment_resumes_serially(make_video, monkeypatch, caplog):
    """A segment whose count misses its next key frame: the rest is decoded serially."""
    src = _video(make_video, "h264")
    _miscount_second_segment(monkeypatch)
    with caplog.at_level("INFO", logger="dicom_io.parallel"):
        got = list(parallel_frames(src, 0, None, 2, workers=2))
    assert "serially" in caplog.text
    _same(got, list(src.frames(0, None, 2)))


def test_memory_stays_bounded(make_video):
    src = _video(make_video, "h264")
    want = list(src.frames())
    for workers, max_frames in [(2, 4), (3, 9), (2, 7)]:
        held: list[int] = []
        got = []
        for item in parallel_frames(src, workers=workers, max_frames=max_frames,
                                    on_held=held.append):
            time.sleep(0.002)  # a slow consumer: the workers fill their queues
            got.append(item)
        _same(got, want)
        assert held and max(held) <= max_frames
        assert max(held) >= 2, "the workers should have decoded ahead"
        assert held[-1] == 0


def test_stopping_early_ends_the_workers(make_video):
    src = _video(make_video, "hevc")
    frames = src.frames(workers=3)
    first = [next(frames) for _ in range(3)]
    assert [i for i, _, _ in first] == [0, 1, 2]
    assert _decode_threads()
    frames.close()
    assert not _decode_threads()


def test_bad_arguments(make_video):
    src = _video(make_video, "h264")
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        list(src.frames(workers=0))
    with pytest.raises(TypeError, match="workers must be an int"):
        list(parallel_frames(src, workers=2.0))
    with pytest.raises(ValueError, match="max_frames must be >= 6, got 5"):
        list(parallel_frames(src, workers=3, max_frames=5))
    with pytest.raises(ValueError, match="start must be >= 0"):
        list(src.frames(-1, workers=2))
    assert list(src.frames(10, 10, workers=2)) == []
    assert src.frame_range(5, 1000, 2) == range(5, N, 2)


def test_series_goes_through_the_same_api(tmp_path):
    from tests.dicom_io.test_video_pixels import _series

    folder, _, _ = _series(tmp_path, 19, "FrameReferenceTime")
    src = open_video(folder)
    assert src.kind == "dicom-series"
    for start, stop, step in [(0, None, 1), (2, 17, 3)]:
        _same(list(src.frames(start, stop, step, workers=2)), list(src.frames(start, stop, step)))


def test_multiframe_decode_error_is_the_serial_one(tmp_path):
    path = tmp_path / "rle.dcm"
    write_multiframe_dicom(synthetic_frames(21), path, fps=25.0, transfer_syntax=RLELossless)
    fragments = index_fragments(path, read_header(path)[1])
    data = bytearray(path.read_bytes())
    at = fragments.offsets[13]
    data[at:at + 8] = (99).to_bytes(4, "little") * 2  # 99 RLE segments: not decodable
    path.write_bytes(bytes(data))
    src = open_video(path)
    want, want_error, _ = _run(src.frames())
    assert want_error is not None and "frame 13" in want_error and len(want) == 13
    for workers in (2, 3):
        got, error, _ = _run(src.frames(workers=workers))
        _same(got, want)
        assert error == want_error


# -- wanted: convert only the frames the caller uses --------------------------------------------

WANTED = [set(range(0, N, 3)), {59, 0, 17, 18, 44}, set(), range(10, 50, 4), {5, 1000}]


def _restricted(frames: Frames, wanted) -> Frames:
    return [f for f in frames if f[0] in wanted]


@pytest.fixture
def conversions(monkeypatch) -> list[int]:
    """Every frame converted to RGB by the stream decoder, in any thread."""
    seen: list[int] = []
    real = avdecode.RGBConverter.__call__

    def counting(self, frame):
        seen.append(1)
        return real(self, frame)

    monkeypatch.setattr(avdecode.RGBConverter, "__call__", counting)
    return seen


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("name", ["h264", "hevc", "h264-mp4-frag"])
def test_wanted_frames_are_the_full_decode_restricted(make_video, conversions, name, workers):
    src = _video(make_video, name)
    for start, stop, step in [(0, None, 1), (3, None, 2), (31, 47, 1)]:
        want = list(src.frames(start, stop, step))
        for wanted in WANTED:
            conversions.clear()
            got = list(src.frames(start, stop, step, workers=workers, wanted=wanted))
            _same(got, _restricted(want, wanted))
            assert len(conversions) == len(got)  # the other frames were never converted
    _same(list(parallel_frames(src, 0, None, 1, workers=2, wanted=[7, 3, 7])),
          _restricted(list(src.frames()), {3, 7}))


def test_wanted_on_a_truncated_stream_raises_the_same_error(make_video, tmp_path):
    vid = make_video(n=N, gop=GOP, **VIDEOS["h264"])
    src = open_video(_cut(vid.path, tmp_path / "cut.dcm", 0.6))
    want, want_error, want_decoded = _run(src.frames())
    assert want_error is not None and "truncated" in want_error
    wanted = set(range(1, N, 3))
    for workers in (1, 2, 3):
        got, error, decoded = _run(src.frames(workers=workers, wanted=wanted))
        assert got, "frames before the damage come first"
        _same_damage(got, error, decoded, _restricted(want, wanted), want_error, want_decoded)


def test_wanted_after_a_miscounted_segment(make_video, monkeypatch):
    """The serial resumption after a segment that misses its key frame keeps to ``wanted``."""
    src = _video(make_video, "h264")
    _miscount_second_segment(monkeypatch)
    wanted = set(range(2, N, 5))
    _same(list(parallel_frames(src, workers=2, wanted=wanted)),
          _restricted(list(src.frames()), wanted))


@pytest.fixture
def segment_decodes(monkeypatch) -> dict[int, list[int]]:
    """Per segment decoded (by its first frame's index), the frames its decoder gave."""
    seen: dict[int, list[int]] = {}
    real = avdecode.AVDecoder._segment_frames

    def counting(self, segment):
        out = seen.setdefault(segment.first, [])
        for frame in real(self, segment):
            out.append(1)
            yield frame

    monkeypatch.setattr(avdecode.AVDecoder, "_segment_frames", counting)
    return seen


@pytest.mark.parametrize("name", ["h264", "hevc", "mpeg2", "h264-mp4-frag"])
def test_sparse_wanted_decodes_only_their_segments(make_video, segment_decodes, name):
    """A few wanted frames cost their segments, from each key frame up to the last wanted
    frame there; the frames are the serial decode's."""
    src = _video(make_video, name)
    firsts = key_frames(src.decoder)
    assert len(firsts) >= 3, firsts
    want = list(src.frames())
    a, b = firsts[1] + 2, firsts[-1] + 1  # in the second and the last segment
    for wanted in ({a}, {a, b}, {a, a + 1, b}):
        segment_decodes.clear()
        got = list(src.frames(workers=2, wanted=wanted))
        _same(got, _restricted(want, wanted))
        assert sorted(segment_decodes) == sorted({firsts[1], firsts[-1]} if b in wanted
                                                 else {firsts[1]})
        # up to the last wanted frame, with the decoder's reordering delay (B-frames)
        assert len(segment_decodes[firsts[1]]) <= max(wanted & {a, a + 1}) - firsts[1] + 1 + 4
    segment_decodes.clear()
    assert list(src.frames(workers=2, wanted=set())) == [] and not segment_decodes
    # without wanted, every segment is decoded to its end
    list(src.frames(workers=2))
    assert sorted(segment_decodes) == firsts
    assert sum(map(len, segment_decodes.values())) >= N


@pytest.mark.parametrize("name", ["h264", "hevc", "mpeg2", "h264-mp4-frag", "h264-plain"])
def test_a_planner_from_a_seek_starts_near_its_frame(make_video, monkeypatch, name):
    """Planned from a seek near frame ``k``: it starts at a key frame at or before ``k``
    (not at the start of the stream, nor demuxing from there), it cuts at key frames, and
    its segments decode to the serial frames."""
    n = 150  # 5 s: seeks back 2 s, then 8 s (keyframes.SEEK_BACK_S)
    src = open_video(make_video(n=n, gop=GOP, **VIDEOS[name]).path)
    keys = key_frames(src.decoder, min_frames=1)  # every key frame
    assert len(keys) > 3, keys
    demuxed: list[int] = []
    real = avdecode.AVDecoder.demux

    def counting(self, from_s=None):
        demuxed.append(0)
        for packet in real(self, from_s):
            demuxed[-1] += 1
            yield packet

    monkeypatch.setattr(avdecode.AVDecoder, "demux", counting)
    want = list(src.frames())
    for k in (100, 120, n - 1):
        demuxed.clear()
        plan = list(plan_segments(src.decoder, k, n, seek=True))
        assert plan and all(isinstance(s, Segment) for s in plan)
        assert 0 < plan[0].first <= k and {s.first for s in plan} <= set(keys)
        assert sum(demuxed) < n  # what lies before its key frame was not read
        got = [f for item in plan for f in src.decoder.decode_segment(item, k, n, 1)]
        assert [i for i, _ in got] == list(range(k, n))
        assert all(np.array_equal(rgb, want[i][2]) for i, rgb in got)
    # near the start there is no seek
    demuxed.clear()
    whole = list(plan_segments(src.decoder, 10, n, seek=True))
    assert whole[0].first == 0
    assert len(demuxed) == 1


def test_far_runs_of_wanted_frames_are_planned_apart(make_video, monkeypatch):
    src = _video(make_video, "h264")
    calls: list[tuple[int, int | None, bool]] = []
    real = parallel.plan_segments

    def recording(decoder, start, stop, **kw):
        calls.append((start, stop, kw.get("seek", False)))
        return real(decoder, start, stop, **kw)

    monkeypatch.setattr(parallel, "plan_segments", recording)
    monkeypatch.setattr(parallel, "PLAN_GAP_S", 0.5)  # 15 frames at 30 frames/s
    want = list(src.frames())
    wanted = {3, 5, 40, 52, 58}
    _same(list(src.frames(workers=2, wanted=wanted)), _restricted(want, wanted))
    assert calls == [(3, 6, True), (40, 59, True)]
    calls.clear()
    _same(list(src.frames(workers=2)), want)
    assert calls == [(0, N, False)]


@pytest.mark.parametrize("name", ["h264", "mpeg2", "hevc"])
@pytest.mark.parametrize(("damage", "at"), DAMAGE, ids=[f"{d}{a}" for d, a in DAMAGE])
def test_sparse_reads_of_a_damaged_stream(make_video, tmp_path, caplog, monkeypatch, name,
                                          damage, at):
    """Far runs of wanted frames, each planned from a seek, in a cut or garbled stream: only
    the decoder's own errors come out, and every frame yielded is at its index and time,
    with the serial decode's pixels wherever the serial decode reached it undamaged (damage
    in a segment not read goes unseen: a frame beyond it may come where serially none does)."""
    n = 150
    vid = make_video(n=n, gop=GOP, **VIDEOS[name])
    src = _damaged(vid.path, tmp_path, damage, at)
    monkeypatch.setattr(parallel, "PLAN_GAP_S", 0.5)
    serial, _, _ = _run(src.frames())
    # the serial decode's pixels are the reference up to its first concealed frame (after
    # it, frames predicted from concealed ones differ between decodes until an IDR)
    clean = min(_concealed(caplog.records), default=n)
    reached = {i: rgb for i, _, rgb in serial if i < clean}
    for wanted in ({10, 100}, {40, 41, 120, 149}, {n - 1}, set(range(0, n, 37))):
        got, error, _ = _run(src.frames(workers=2, wanted=wanted))
        assert all(i in wanted and t == src.frame_times[i] for i, t, _ in got)
        for i, _, rgb in got:
            assert i not in reached or np.array_equal(rgb, reached[i]), i
        assert error is None or error.startswith(("TruncatedVideoError", "VideoDecodeError"))


def test_sparse_wanted_where_the_stream_cannot_be_cut(make_video, tmp_path, monkeypatch):
    """No split point (DICOM timing disagrees with the stream): wanted frames farther apart
    than the seek gap are each reached by a seek, and are the serial decode's frames."""
    vid = make_video(n=N, gop=GOP, **VIDEOS["h264"])
    path = tmp_path / "25fps.dcm"
    wrap_video_as_dicom(vid.stream, path, None, None, fps=25.0)
    src = open_video(path)
    assert list(plan_segments(src.decoder)) == [SerialTail(0)]
    monkeypatch.setattr(parallel, "SEEK_GAP_S", 0.2)  # 5 frames at 25 frames/s
    starts: list[tuple[int, int | None]] = []
    real = avdecode.AVDecoder.iter_frames

    def recording(self, start=0, stop=None, step=1, **kw):
        starts.append((start, stop))
        return real(self, start, stop, step, **kw)

    want = list(src.frames())
    monkeypatch.setattr(avdecode.AVDecoder, "iter_frames", recording)
    wanted = {2, 4, 40, 44, 58}
    got = list(src.frames(workers=2, wanted=wanted))
    _same(got, _restricted(want, wanted))
    assert [s for s, _ in starts] == [2, 40, 58]
    starts.clear()
    got = list(src.frames(1, None, 3, workers=2, wanted=wanted))  # 4, 40, 58 on the grid
    _same(got, _restricted(want, {4, 40, 58}))
    assert [s for s, _ in starts] == [4, 40, 58]


def test_sparse_wanted_skips_runs_of_a_multiframe_instance(tmp_path, monkeypatch):
    path = tmp_path / "mf.dcm"
    write_multiframe_dicom(synthetic_frames(40), path, fps=25.0, transfer_syntax=RLELossless)
    src = open_video(path)
    want = list(src.frames())
    reads: list[int] = []
    real = VideoSource.frames

    def recording(self, start=0, stop=None, step=1, **kw):
        if kw.get("workers", 1) == 1:
            reads.append(start)
        return real(self, start, stop, step, **kw)

    monkeypatch.setattr(VideoSource, "frames", recording)
    got = list(src.frames(workers=2, wanted={3, 35}))
    _same(got, _restricted(want, {3, 35}))
    assert reads == [0, 4 * parallel.CHUNK_FRAMES]  # the runs holding 3 and 35 only


@pytest.mark.parametrize("workers", [1, 2])
def test_wanted_for_frames_read_by_pydicom(tmp_path, workers):
    path = tmp_path / "mf.dcm"
    write_multiframe_dicom(synthetic_frames(21), path, fps=25.0, transfer_syntax=RLELossless)
    from tests.dicom_io.test_video_pixels import _series

    folder, _, _ = _series(tmp_path, 19, "FrameReferenceTime")
    for src in (open_video(path), open_video(folder)):
        for wanted in ({0, 4, 5, 18}, range(1, 30, 7), set()):
            _same(list(src.frames(2, None, 1, workers=workers, wanted=wanted)),
                  _restricted(list(src.frames(2)), wanted))


@pytest.mark.parametrize("wanted", ["0, 3", 3, [1, 2.0], [True]])
def test_wanted_must_be_frame_indices(make_video, wanted):
    src = _video(make_video, "h264")
    with pytest.raises(TypeError, match="wanted must"):
        list(src.frames(wanted=wanted))
    with pytest.raises(TypeError, match="wanted must"):
        list(parallel_frames(src, workers=2, wanted=wanted))


@pytest.mark.parametrize("name", ["h264", "mpeg2", "hevc"])
def test_one_converter_gives_pyavs_own_conversion(make_video, name):
    """The decoders' RGBConverter (one scaler context for every frame) changes no pixel."""
    src = _video(make_video, name)
    convert = avdecode.RGBConverter()
    with src.decoder._open() as (container, stream):
        for frame in container.decode(stream):
            want = frame.to_ndarray(format="rgb24")
            got = convert(frame)
            assert got.dtype == np.uint8 and got.shape == want.shape
            assert np.array_equal(got, want)
