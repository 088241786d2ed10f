"""Decode an MPEG-2/H.264/HEVC bit stream (MPEG-TS, MPEG-PS or MP4) with PyAV, frame by frame.

The input is either a plain video file or the concatenated fragments of a DICOM video
instance (:class:`dicom_io.fragments.FragmentStream`); both are read incrementally, so
memory does not grow with the stream's size.

Frame indices
    Decoding from the start counts frames in presentation order: the k-th frame out of
    the decoder is index k. To start later, the container is seeked to the keyframe at or
    before the target time and decoding goes forward from there; the first frame's index
    comes from its presentation timestamp, later ones are counted. If the seek lands past
    the target (or the stream has no timestamps), decoding starts from the beginning.

Segments
    :meth:`AVDecoder.demux` reads the packets without decoding, and
    :meth:`AVDecoder.decode_segment` decodes a :class:`~dicom_io.keyframes.Segment` (the
    packets from one key frame to the next) in a decoder of its own;
    :mod:`dicom_io.keyframes` cuts the stream into segments and :mod:`dicom_io.parallel`
    decodes them side by side.

Wanted frames
    A caller may name the indices it uses (``wanted``): every frame is still decoded (later
    frames depend on earlier ones), but only the wanted ones are converted to RGB and
    yielded, so a caller using one frame in three converts one in three. Indices, pixels
    and errors are those of the full decode, restricted to the wanted frames.

Damage
    A decoder or demuxer error, or a stream that ends before the declared number of
    frames, ends iteration with :class:`~dicom_io.errors.TruncatedVideoError` *after* the
    frames decoded so far have been yielded; ``frames_decoded`` says how many frames from
    the start of the video are good.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from dicom_io.errors import TruncatedVideoError, VideoDecodeError
from dicom_io.fragments import FragmentIndex, FragmentStream
from dicom_io.keyframes import Segment

logger = logging.getLogger(__name__)

#: PyAV's read size on a Python file object (bytes); larger means fewer Python calls.
_IO_BUFFER = 1 << 20
#: Targets closer than this to the start (s) are reached by decoding from the start.
_MIN_SEEK_S = 1.0
#: How far back (s) successive seek attempts go when a seek lands past the target.
_SEEK_BACKOFF_S = (0.0, 1.0, 4.0, 15.0)
#: At most this many consecutive corrupt frames are held back to see if the stream ends.
_MAX_PENDING_CORRUPT = 8


@dataclass(frozen=True)
class StreamInfo:
    """What the container says about its first video stream.

    Attributes
    ----------
    codec : str
        FFmpeg decoder name (``"h264"``, ``"hevc"``, ``"mpeg2video"``...).
    container_format : str
        FFmpeg demuxer name (``"mpegts"``, ``"mov,mp4,m4a,3gp,3g2,mj2"``...).
    width, height : int
        Coded picture size (pixels).
    rate : float or None
        Nominal frame rate (frames/s), ``None`` when the container gives none.
    frames : int
        Frame count from the container header; 0 when unknown (always for MPEG-TS).
    """

    codec: str
    container_format: str
    width: int
    height: int
    rate: float | None
    frames: int


class RGBConverter:
    """Decoded frames to RGB ``uint8 (H, W, 3)`` arrays, through one libswscale context.

    ``frame.to_ndarray(format="rgb24")`` sets a new scaler context up for every frame, its
    threads included, which costs several times the conversion itself; a converter keeps
    one context for all the frames it converts, with the same pixels. Not thread-safe: one
    per decoding iterator.
    """

    def __init__(self) -> None:
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        return self._reformatter.reformat(frame, format="rgb24").to_ndarray()


class SegmentMismatchError(Exception):
    """A segment's frames do not end where its next key frame begins (internal).

    Raised by :meth:`AVDecoder.decode_segment` after the frames before the split, when the
    decoder gave more or fewer frames than the stream has packets; the caller decodes the
    rest serially instead. Not a :class:`~dicom_io.errors.DicomIOError`: it never reaches
    the user.
    """


class AVDecoder:
    """Decode one video stream to RGB frames with PyAV.

    Parameters
    ----------
    path : path-like
        A plain video file, or the DICOM file holding ``fragments``.
    fragments : FragmentIndex or None
        For a DICOM instance, where its encapsulated bit stream lies.
    frame_count : int or None
        Frames the caller expects (Number of Frames); ``None`` for a plain file of unknown
        length. Decoding stops there, and fewer frames is a truncation.
    times : numpy.ndarray or None
        Expected per-frame times (s from the first frame, shape ``(N,)``), used to check
        the stream's timestamps and to map them to indices when seeking.
    thread_type : str
        PyAV decoder threading (``"AUTO"``, ``"FRAME"``, ``"SLICE"``, ``"NONE"``).

    Raises
    ------
    VideoDecodeError
        If the bit stream cannot be opened or holds no video stream.
    """

    def __init__(self, path: str | os.PathLike[str], fragments: FragmentIndex | None = None,
                 frame_count: int | None = None, times: np.ndarray | None = None,
                 thread_type: str = "AUTO") -> None:
        self.path = Path(path)
        self.fragments = fragments
        self.frame_count = frame_count
        self.times = times
        self.thread_type = thread_type
        with self._open() as (container, vs):
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            self.info = StreamInfo(
                codec=vs.codec_context.name, container_format=container.format.name,
                width=vs.codec_context.width, height=vs.codec_context.height,
                rate=float(rate) if rate else None, frames=int(vs.frames or 0))
            self._time_base: Fraction | None = vs.time_base
            self._start_pts: int | None = vs.start_time
            self._extradata: bytes | None = vs.codec_context.extradata

    @contextmanager
    def _open(self) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
        raw: io.RawIOBase | None = None
        try:
            if self.fragments is not None:
                raw = FragmentStream(self.path, self.fragments)
                container = av.open(raw, "r", buffer_size=_IO_BUFFER)
            else:
                container = av.open(str(self.path), "r")
        except (av.error.FFmpegError, OSError, ValueError) as e:
            if raw is not None:
                raw.close()
            raise VideoDecodeError(f"{self.path}: cannot open the video bit stream ({e})") from e
        try:
            if not container.streams.video:
                raise VideoDecodeError(
                    f"{self.path}: the bit stream ({container.format.name}) has no video stream")
            vs = container.streams.video[0]
            vs.thread_type = self.thread_type
            yield container, vs
        finally:
            container.close()
            if raw is not None:
                raw.close()

    def count_packets(self, *, stop_on_error: bool = False) -> int:
        """Number of video packets (one per frame) found by demuxing the whole stream.

        Reads the stream once without decoding (memory does not grow with it); used for
        plain files whose container does not state a frame count (MPEG-TS), and to check a
        DICOM header's Number of Frames. ``stop_on_error=True`` returns the packets found
        before damage instead of raising.
        """
        count = 0
        with self._open() as (container, vs):
            try:
                for packet in container.demux(vs):
                    count += 1 if packet.size else 0
            except (av.error.FFmpegError, OSError) as e:
                if not stop_on_error:
                    raise VideoDecodeError(f"{self.path}: cannot demux the stream ({e})") from e
        return count

    def demux(self, from_s: float | None = None) -> Iterator[av.Packet]:
        """The video packets in decode order (flush packets left out), without decoding.

        ``from_s``: first seek the container to the last position it knows before that
        stream time (s after the first frame); where it lands is the demuxer's guess (for
        MPEG-TS, a packet near it, not necessarily a key frame). The bit stream stays open
        while the iterator runs; close it (or exhaust it) to release the file. Demuxer
        errors (:class:`av.error.FFmpegError`, :class:`OSError`) propagate unchanged, so
        that a caller can raise them where a decode would; a failed seek among them
        (:class:`ValueError` for a stream without timestamps).
        """
        with self._open() as (container, vs):
            if from_s is not None:
                if self._start_pts is None or self._time_base is None:
                    raise ValueError(f"{self.path}: the stream has no timestamps to seek by")
                container.seek(self._start_pts + int(from_s / self._time_base),
                               backward=True, stream=vs)
            for packet in container.demux(vs):
                if packet.size:
                    yield packet

    def time_of(self, index: int) -> float:
        """Stream time (s after the first frame) of frame ``index``; ``nan`` when unknown."""
        return self._target_time(index)

    def index_at(self, pts: int | None) -> int | None:
        """The index a frame at timestamp ``pts`` has (as a seek maps it); ``None`` without
        timestamps."""
        t = self._pts_time(pts)
        return None if t is None else self._index_of(t)

    # -- index <-> stream time -------------------------------------------------------
    def _uniform(self) -> bool:
        t = self.times
        return t is None or len(t) < 3 or bool(np.ptp(np.diff(t)) < 1e-6)

    def _rate(self) -> float | None:
        """Frames/s of the stream: the container's, else the expected timing's."""
        if self.info.rate:
            return self.info.rate
        t = self.times
        if t is not None and len(t) > 1 and t[-1] > 0:
            return (len(t) - 1) / float(t[-1])
        return None

    def _index_of(self, stream_t: float) -> int:
        """Frame index of a frame shown at ``stream_t`` s after the stream's first frame."""
        rate = self._rate()
        if self._uniform() and rate:
            return round(stream_t * rate)
        assert self.times is not None
        return int(np.argmin(np.abs(self.times - stream_t)))

    def _target_time(self, index: int) -> float:
        """Stream time (s) of frame ``index``; ``nan`` when unknown."""
        rate = self._rate()
        if self._uniform() and rate:
            return index / rate
        if self.times is not None and index < len(self.times):
            return float(self.times[index])
        return math.nan

    def _pts_time(self, pts: int | None) -> float | None:
        """Seconds after the stream's first frame of timestamp ``pts``; ``None`` without
        timestamps."""
        if pts is None or self._start_pts is None or self._time_base is None:
            return None
        return float((pts - self._start_pts) * self._time_base)

    def _stream_time(self, frame: av.VideoFrame, origin: int) -> float | None:
        if frame.pts is None or self._time_base is None:
            return None
        return float((frame.pts - origin) * self._time_base)

    def agrees(self, index: int, pts: int | None) -> bool:
        """Whether frame ``index`` (counted from the start) is at stream timestamp ``pts``.

        True when the timestamp maps back to ``index`` (as a seek maps it) and is within
        half a frame of the expected time, so that decoding from there counts frames
        exactly as decoding from the start does.
        """
        t = self._pts_time(pts)
        if t is None or self._index_of(t) != index:
            return False
        if self.times is not None and index < len(self.times):
            return abs(t - float(self.times[index])) <= 0.5 * self._frame_interval()
        return True

    # -- decoding --------------------------------------------------------------------
    def iter_frames(self, start: int = 0, stop: int | None = None, step: int = 1, *,
                    wanted: Container[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, rgb)`` for indices ``start, start+step, ...`` below ``stop``.

        ``rgb`` is ``uint8`` of shape ``(H, W, 3)``. ``stop=None`` means to the end. With
        ``wanted``, only the indices in it are converted and yielded (see the module
        docstring); ``None`` means all.

        Raises
        ------
        TruncatedVideoError
            After the good frames, when the stream is damaged or shorter than expected.
        """
        if self.frame_count is not None:
            stop = self.frame_count if stop is None else min(stop, self.frame_count)
        if stop is not None and start >= stop:
            return
        with self._open() as (container, vs):
            frames = self._positioned(container, vs, start)
            yield from self._select(frames, start, stop, step, wanted=wanted)

    def decode_segment(self, segment: Segment, start: int, stop: int | None, step: int, *,
                       wanted: Container[int] | None = None
                       ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, rgb)`` for the indices of ``range(start, stop, step)`` in ``segment``
        (only those in ``wanted``, if given).

        The segment is decoded in a decoder of its own, so segments can be decoded at the
        same time in several threads. Frames are counted from ``segment.first`` exactly as
        :meth:`iter_frames` counts them (lost frames repeated, concealed errors held back).

        Raises
        ------
        TruncatedVideoError
            After the good frames, when the stream is damaged within the segment.
        SegmentMismatchError
            After the frames before ``segment.next_first``, when the frame counted there is
            not the next key frame, or when concealed-error frames run up to the split and
            only the frames after it could tell whether they are the damage itself.
        """
        frames = self._counted(self._segment_frames(segment), segment.first, None,
                               self._start_pts)
        if segment.next_first is None:
            yield from self._select(frames, start, stop, step, first=segment.first,
                                    wanted=wanted)
            return
        end = segment.next_first if stop is None else min(stop, segment.next_first)
        settle = end == segment.next_first
        checked = self._checked_split(frames, segment)
        yield from self._select(checked, start, end, step, first=segment.first, settle=settle,
                                wanted=wanted)

    def _segment_frames(self, segment: Segment) -> Iterator[av.VideoFrame]:
        """Decode ``segment.packets`` in a new decoder, as ``container.decode`` would."""
        ctx = av.CodecContext.create(self.info.codec, "r")
        if self._extradata is not None:
            ctx.extradata = self._extradata
        ctx.thread_type = self.thread_type
        key_pts = segment.key_pts

        def shown(decoded: Sequence[av.VideoFrame]) -> Iterator[av.VideoFrame]:
            for frame in decoded:
                if key_pts is None or frame.pts is None or frame.pts >= key_pts:
                    yield frame

        for packet in segment.packets:
            yield from shown(ctx.decode(packet))
        if segment.end_error is not None:
            raise segment.end_error
        yield from shown(ctx.decode(None))

    def _checked_split(self, frames: Iterator[tuple[int, av.VideoFrame | None, str | None]],
                       segment: Segment
                       ) -> Iterator[tuple[int, av.VideoFrame | None, str | None]]:
        """Pass ``frames`` on, checking that the one counted at ``next_first`` is the key frame."""
        split = segment.next_first
        for index, frame, err in frames:
            if err is None and index == split and (
                    frame is None or frame.pts != segment.next_key_pts):
                raise SegmentMismatchError(f"frame {index} is not the key frame at pts "
                                           f"{segment.next_key_pts}")
            yield index, frame, err
            if err is not None:
                return
        raise SegmentMismatchError(f"the segment from frame {segment.first} ended before "
                                   f"frame {split}")

    def _positioned(self, container, vs, start: int
                    ) -> Iterator[tuple[int, av.VideoFrame | None, str | None]]:
        """Decoded frames with their index, starting at or before ``start``.

        Yields ``(index, frame, None)``; the last item may be ``(index, None, error)``
        when decoding broke off, ``index`` being the first frame not decoded.
        """
        target_t = self._target_time(start)
        origin = self._start_pts
        if start > 0 and origin is not None and math.isfinite(target_t) and target_t >= _MIN_SEEK_S:
            for back in _SEEK_BACKOFF_S:
                seek_t = max(0.0, target_t - back)
                first = self._seek_and_peek(container, vs, seek_t, origin)
                if first is None:
                    break
                index, frame, decoded = first
                if index <= start:
                    logger.debug("%s: seeked to %.3f s, first frame %d", self.path, seek_t, index)
                    yield from self._counted(decoded, index, frame, origin)
                    return
            logger.debug("%s: seek to frame %d failed; decoding from the start", self.path, start)
            container.seek(0, backward=True, stream=None)
        yield from self._counted(container.decode(vs), 0, None, origin)

    def _seek_and_peek(self, container, vs, seek_t: float, origin: int
                       ) -> tuple[int, av.VideoFrame, Iterator[av.VideoFrame]] | None:
        """Seek to the keyframe before ``seek_t`` s; the first frame, its index, the decoder."""
        assert self._time_base is not None
        try:
            container.seek(origin + int(seek_t / self._time_base), backward=True, stream=vs)
            decoded = container.decode(vs)
            frame = next(decoded, None)
        except av.error.FFmpegError as e:
            logger.debug("%s: seek failed (%s)", self.path, e)
            return None
        if frame is None:
            return None
        t = self._stream_time(frame, origin)
        if t is None:
            return None
        return self._index_of(t), frame, decoded

    def _counted(self, decoded: Iterator[av.VideoFrame], index: int,
                 first: av.VideoFrame | None, origin: int | None
                 ) -> Iterator[tuple[int, av.VideoFrame | None, str | None]]:
        """Count frames from ``index`` (``first`` already taken from ``decoded``, if given).

        A frame the decoder lost (damaged or cut data) shows as a jump in the stream's
        timestamps that had agreed with the DICOM timing until then: the previous frame is
        repeated in its place, with a warning, so later frames keep their true indices.
        """
        warned = False
        frame = first
        previous: av.VideoFrame | None = None
        try:
            while True:
                if frame is None:
                    frame = next(decoded, None)
                    if frame is None:
                        return
                if not warned:
                    t = None if origin is None else self._stream_time(frame, origin)
                    lost = 0 if previous is None else self._lost_before(t, index)
                    if lost:
                        logger.warning("%s: frame(s) %d-%d missing from the stream; frame %d "
                                       "repeated in their place", self.path, index,
                                       index + lost - 1, index - 1)
                        for _ in range(lost):
                            yield index, previous, None
                            index += 1
                    warned = self._check_time(t, index)
                    if origin is None and index == 0 and frame.pts is not None:
                        origin = frame.pts
                yield index, frame, None
                previous = frame
                index += 1
                frame = None
        except (av.error.FFmpegError, OSError) as e:
            yield index, None, f"decoding stopped at frame {index}: {e}"

    def _frame_interval(self) -> float:
        """Seconds between frames (0.04 when the rate is unknown)."""
        rate = self._rate()
        return 1.0 / rate if rate else 0.04

    def _lost_before(self, t: float | None, index: int) -> int:
        """How many frames the decoder skipped before the frame at stream time ``t`` s (0
        unless ``t`` is exactly a later frame's time)."""
        if self.times is None or t is None:
            return 0
        later = self._index_of(t)
        if later <= index or later >= len(self.times):
            return 0
        exact = abs(t - float(self.times[later])) <= 0.25 * self._frame_interval()
        return later - index if exact else 0

    def _check_time(self, t: float | None, index: int) -> bool:
        """Warn (once per call site) when the stream's timestamp ``t`` disagrees with DICOM
        timing."""
        if self.times is None or index >= len(self.times) or t is None:
            return False
        expected = float(self.times[index])
        if abs(t - expected) > 0.5 * self._frame_interval():
            logger.warning(
                "%s: frame %d is at %.3f s in the stream's timestamps but %.3f s in the DICOM "
                "timing; using the DICOM timing", self.path, index, t, expected)
            return True
        return False

    def _select(self, frames: Iterator[tuple[int, av.VideoFrame | None, str | None]],
                start: int, stop: int | None, step: int, *, first: int = 0,
                settle: bool = False, wanted: Container[int] | None = None
                ) -> Iterator[tuple[int, np.ndarray]]:
        """Pick the requested frames; hold back corrupt frames until a good one follows.

        A frame the decoder flags as corrupt (errors concealed) is yielded, with a
        warning, once a clean frame follows it; corrupt frames at the very end of the
        stream are the damage itself (a cut packet) and are not yielded.

        ``first`` is the index of the first frame in ``frames`` (a segment's key frame).
        With ``settle``, ``stop`` is a split inside the stream rather than its end: corrupt
        frames held back there are decided by the frames after ``stop``, as they would be
        by a decode that goes on (:class:`SegmentMismatchError` when there are none).
        Only frames in ``wanted`` (all when ``None``) are converted to RGB and yielded; the
        others are counted, checked and held back all the same.
        """
        good_until = max(start, first)  # frames up to good_until-1 came out of the decoder
        error: str | None = None
        pending: list[tuple[int, av.VideoFrame]] = []
        to_rgb = RGBConverter()

        def emit(index: int, frame: av.VideoFrame) -> Iterator[tuple[int, np.ndarray]]:
            if (index >= start and (index - start) % step == 0
                    and (stop is None or index < stop)
                    and (wanted is None or index in wanted)):
                yield index, to_rgb(frame)

        for index, frame, err in frames:
            if err is not None or frame is None:
                error = err
                break
            if self.frame_count is not None and index >= self.frame_count:
                logger.warning("%s: the stream holds more than the declared %d frames; "
                               "the rest is ignored", self.path, self.frame_count)
                break
            if stop is not None and index >= stop and not (settle and pending):
                break
            if frame.is_corrupt and len(pending) < _MAX_PENDING_CORRUPT:
                pending.append((index, frame))
                continue
            for held_index, held in pending:
                if stop is not None and held_index >= stop:
                    break  # after a split: the next segment decides and reports it
                logger.warning("%s: frame %d decoded with concealed errors", self.path,
                               held_index)
                yield from emit(held_index, held)
            pending.clear()
            if stop is not None and index >= stop:  # settled the frames held at a split
                good_until = stop
                break
            yield from emit(index, frame)
            good_until = index + 1
        if settle and pending and error is None:
            raise SegmentMismatchError(f"frames {pending[0][0]}-{pending[-1][0]} with "
                                       "concealed errors run up to the split")
        if pending:
            good_until = pending[0][0]
            error = error or (f"frames {pending[0][0]}-{pending[-1][0]} at the end of the "
                              "stream are damaged")
        end = stop if stop is not None else self.frame_count
        if error is None and (end is None or good_until >= end):
            return
        damage = self.fragments.damage if self.fragments is not None else None
        reason = "; ".join(r for r in (error, damage) if r) or "the bit stream ended early"
        expected = f" of {self.frame_count}" if self.frame_count is not None else ""
        raise TruncatedVideoError(
            f"{self.path}: truncated or damaged video: {good_until}{expected} frames "
            f"decoded ({reason})", frames_decoded=good_until)
