"""Decode a video in several threads, yielding its frames in order with bounded memory.

:func:`parallel_frames` is what :meth:`VideoSource.frames` runs with ``workers > 1``. It
yields exactly what the serial decode yields (the same arrays, indices, times and
errors), only sooner on a machine with cores to spare.

How
    MPEG-2/H.264/HEVC streams are cut at their key frames (:mod:`dicom_io.keyframes`,
    demuxing only, in the caller's thread) and each segment is decoded, and converted to
    RGB, by a worker thread with a decoder of its own. FFmpeg's decoding and PyAV's
    conversion run without the GIL, so threads share the cores without the copying of
    every frame between processes that worker processes would need.
    Multi-frame instances and single-frame series need no cut: every frame decodes alone,
    so runs of :data:`CHUNK_FRAMES` frames are read by the workers through the serial path.

Sparse reads
    With ``wanted``, a segment (or run of frames) holding none of the wanted frames is not
    decoded, and a segment is decoded only up to its last wanted frame: a few frames spread
    over a video (an event's key frame and its neighbours) cost their segments' decoding
    from their key frames, not a decode of everything between them. Runs of wanted frames
    more than :data:`PLAN_GAP_S` apart are each planned from a seek near them, so what lies
    between is not even demuxed. Damage in what is not decoded goes unseen. Where the
    stream cannot be cut (a :class:`~dicom_io.keyframes.SerialTail`), the wanted frames
    farther apart than :data:`SEEK_GAP_S` are reached by a seek each.

Memory
    At most ``workers`` segments are in flight; each passes its frames to the caller
    through a queue of ``max_frames // workers - 1`` frames, so no more than ``max_frames``
    decoded RGB frames are held at once (a worker stops while its queue is full). By
    default ``max_frames`` fits :data:`DEFAULT_BUFFER_BYTES`; a worker can run a whole
    segment ahead only if its queue holds a GOP, so a smaller budget costs speed, not
    correctness.

Errors
    A segment's error (a truncated or damaged stream) is raised after every frame before
    it, as the serial decode raises it. Where a segment's frame count does not meet the
    next key frame (the decoder dropped or added a frame), the frames already yielded
    stand (they match the serial count) and the rest is decoded serially.
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Collection, Container, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from dicom_io.avdecode import AVDecoder, SegmentMismatchError
from dicom_io.keyframes import Segment, SerialTail, plan_segments

if TYPE_CHECKING:
    from dicom_io.video import VideoSource

logger = logging.getLogger(__name__)

#: Decoded RGB bytes held between the workers and the caller by default (see ``max_frames``).
DEFAULT_BUFFER_BYTES = 512 << 20
#: Frames per job for multi-frame instances and single-frame series.
CHUNK_FRAMES = 8
#: Seconds a blocked worker waits before checking whether the caller has gone.
_POLL_S = 0.1
#: Where the stream cannot be cut, wanted frames at most this many seconds apart are read in
#: one decode: decoding forward through 2 s costs less than a seek, which decodes from the
#: last key frame (up to a group of pictures; on 720p H.264 four seeks took 2.4 s).
SEEK_GAP_S = 2.0
#: Runs of wanted frames farther apart than this (s) are planned each from a seek near it
#: (:func:`dicom_io.keyframes.plan_segments`): demuxing everything between them costs more.
PLAN_GAP_S = 10.0

_Frame = tuple[int, np.ndarray]
_Job = Callable[[], Iterator[_Frame]]
HeldCallback = Callable[[int], None]


def parallel_frames(source: VideoSource, start: int = 0, stop: int | None = None,
                    step: int = 1, *, workers: int = 2, max_frames: int | None = None,
                    on_held: HeldCallback | None = None, wanted: Collection[int] | None = None
                    ) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(index, time_s, rgb)`` as :meth:`VideoSource.frames` does, decoding in threads.

    Parameters
    ----------
    source : VideoSource
        An opened video (:func:`dicom_io.video.open_video`).
    start, stop, step : int
        As in :meth:`VideoSource.frames`.
    workers : int
        Decoding threads (>= 1). One thread still decodes segment by segment; the serial
        decode is :meth:`VideoSource.frames` with ``workers=1``.
    max_frames : int, optional
        Decoded RGB frames held at once, at least ``2 * workers``; by default as many as
        fit :data:`DEFAULT_BUFFER_BYTES` (at least ``2 * workers``).
    on_held : callable, optional
        Called with the number of decoded frames held (decoded, not yet yielded) each time
        it changes, from the worker threads too; it must be quick.
    wanted : collection of int, optional
        As in :meth:`VideoSource.frames`: only these indices are converted and yielded
        (by the workers; the others are decoded and dropped there).

    Yields
    ------
    index : int
    time_s : float
    rgb : numpy.ndarray
        ``uint8`` of shape ``(rows, columns, 3)``.

    Raises
    ------
    TypeError, ValueError
        A bad range, ``workers`` or ``max_frames``.
    TruncatedVideoError
        After the frames before the damage, when the stream is truncated or damaged.
    VideoDecodeError
        When a frame cannot be decoded.
    """
    frames = source.frame_range(start, stop, step)
    wanted = source.wanted_indices(wanted)
    _check_count("workers", workers, 1)
    if max_frames is None:
        frame_bytes = max(1, source.rows * source.columns * 3)
        max_frames = max(2 * workers, DEFAULT_BUFFER_BYTES // frame_bytes)
    _check_count("max_frames", max_frames, 2 * workers)
    if not frames:
        return
    pipe = _Pipeline(int(workers), int(max_frames) // int(workers) - 1, on_held)
    decoder = source.decoder
    sparse = None if wanted is None else _Wanted(wanted, frames, source.fps)
    items = (_video(decoder, frames, pipe, wanted, sparse) if decoder is not None
             else pipe.run(_chunks(source, frames, wanted, sparse)))
    times = source.frame_times
    for index, rgb in items:
        yield index, float(times[index]), rgb


def _check_count(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be >= {least}, got {value}")


class _Wanted:
    """The wanted indices of a range of frames, in order, to find the last in a run."""

    def __init__(self, wanted: Collection[int], frames: range, fps: float) -> None:
        self._order: Sequence[int] = sorted(i for i in wanted if i in frames)
        self._fps = fps

    def last(self, lo: int, hi: int) -> int | None:
        """The last wanted index in ``[lo, hi)``; ``None`` when there is none."""
        k = bisect.bisect_left(self._order, hi) - 1
        return self._order[k] if k >= 0 and self._order[k] >= lo else None

    def groups(self, lo: int, hi: int, gap_s: float) -> Iterator[tuple[int, int]]:
        """``(first, last)`` of the runs of wanted indices in ``[lo, hi)`` whose neighbours
        are at most ``gap_s`` seconds apart."""
        gap = max(1, round(gap_s * self._fps)) if self._fps > 0 else 1
        run: list[int] = []
        for index in self._order[bisect.bisect_left(self._order, lo):
                                 bisect.bisect_left(self._order, hi)]:
            if run and index - run[-1] > gap:
                yield run[0], run[-1]
                run = []
            run.append(index)
        if run:
            yield run[0], run[-1]


def _through(frames: Iterator[_Frame], last: int) -> Iterator[_Frame]:
    """``frames`` up to index ``last``; the decoding stops there (closed)."""
    try:
        for item in frames:
            yield item
            if item[0] >= last:
                return
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def _video(decoder: AVDecoder, frames: range, pipe: _Pipeline,
           wanted: Container[int] | None, sparse: _Wanted | None) -> Iterator[_Frame]:
    """Frames of an MPEG-2/H.264/HEVC stream, segment by segment (sparse reads: module
    docstring)."""
    start, stop, step = frames.start, frames.stop, frames.step
    plans: list[Iterator[Segment | SerialTail]] = []  # the one being read is the last

    def segment_job(item: Segment, hi: int) -> _Job | None:
        def job() -> Iterator[_Frame]:
            return decoder.decode_segment(item, start, hi, step, wanted=wanted)
        if sparse is None:
            return job
        end = hi if item.next_first is None else min(hi, item.next_first)
        last = sparse.last(max(start, item.first), end)
        return None if last is None else (lambda: _through(job(), last))

    def tail_jobs(item: SerialTail, hi: int) -> Iterator[_Job]:
        first = max(start, item.first)
        first += -(first - start) % step  # the first index of the range from there
        if sparse is None:
            yield lambda: decoder.iter_frames(first, hi, step, wanted=wanted)
            return
        for lo, last in sparse.groups(first, hi, SEEK_GAP_S):
            yield lambda lo=lo, last=last: _through(
                decoder.iter_frames(lo, hi, step, wanted=wanted), last)

    def jobs() -> Iterator[_Job]:
        # sparse: each run of wanted frames far from the others planned from a seek near it
        spans = ([(start, stop, False)] if sparse is None else
                 [(lo, last + 1, True) for lo, last in sparse.groups(start, stop, PLAN_GAP_S)])
        for lo, hi, seek in spans:
            plans.append(plan_segments(decoder, lo, hi, seek=seek))
            for item in plans[-1]:
                if isinstance(item, SerialTail):
                    yield from tail_jobs(item, hi)
                elif (job := segment_job(item, hi)) is not None:
                    yield job

    resume = start
    try:
        for index, rgb in pipe.run(jobs()):
            resume = index + 1
            yield index, rgb
    except SegmentMismatchError as e:
        logger.info("%s: %s; decoding frames %d-%d serially", decoder.path, e, resume,
                    stop - 1)
        for plan in plans:
            plan.close()
        for index, rgb in decoder.iter_frames(start, stop, step, wanted=wanted):
            if index >= resume:
                yield index, rgb
    finally:
        for plan in plans:
            plan.close()


def _chunks(source: VideoSource, frames: range, wanted: Container[int] | None,
            sparse: _Wanted | None) -> Iterator[_Job]:
    """Jobs reading runs of :data:`CHUNK_FRAMES` frames through the serial path (a run
    holding no wanted frame is not read)."""
    for k in range(0, len(frames), CHUNK_FRAMES):
        run = frames[k:k + CHUNK_FRAMES]
        if sparse is not None and sparse.last(run.start, run[-1] + 1) is None:
            continue
        yield lambda run=run: ((i, rgb) for i, _t, rgb in source.frames(
            run.start, run.stop, run.step, wanted=wanted))


class _Pipeline:
    """Run jobs in worker threads, at most ``workers`` at a time, and yield their frames in
    job order; each job's frames wait in a queue of ``capacity``."""

    def __init__(self, workers: int, capacity: int, on_held: HeldCallback | None) -> None:
        self.workers = workers
        self.capacity = capacity
        self._held = _Counter(on_held)

    def run(self, jobs: Iterator[_Job]) -> Iterator[_Frame]:
        cancel = threading.Event()
        in_flight: deque[_Channel] = deque()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dicom-io-decode")
        try:
            more = True
            while True:
                while more and len(in_flight) < self.workers:
                    channel = _Channel(self.capacity, cancel, self._held)
                    try:
                        job = next(jobs, None)
                    except Exception as e:  # planning failed: raise it after the frames before
                        channel.fail(e)
                        in_flight.append(channel)
                        more = False
                        break
                    if job is None:
                        more = False
                        break
                    pool.submit(channel.fill, job)
                    in_flight.append(channel)
                if not in_flight:
                    return
                yield from in_flight.popleft().drain()
        finally:
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)


class _Counter:
    """Decoded frames held between the workers and the caller (thread-safe)."""

    def __init__(self, on_change: HeldCallback | None) -> None:
        self._lock = threading.Lock()
        self._value = 0
        self._on_change = on_change

    def add(self, delta: int) -> None:
        with self._lock:
            self._value += delta
            if self._on_change is not None:
                self._on_change(self._value)


class _Done:
    """End of a job's frames."""


class _Failed:
    """A job's exception, raised by the caller after the job's earlier frames."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Channel:
    """One job's frames, from its worker thread to the caller, in order."""

    def __init__(self, capacity: int, cancel: threading.Event, held: _Counter) -> None:
        self._queue: queue.Queue[_Frame | _Done | _Failed] = queue.Queue(maxsize=capacity)
        self._cancel = cancel
        self._held = held

    def fill(self, job: _Job) -> None:
        """Run ``job`` (in a worker thread), queueing its frames, then its end or error."""
        frames = job()
        try:
            for frame in frames:
                self._held.add(1)
                if not self._put(frame):
                    return
            self._put(_Done())
        except BaseException as e:  # delivered to the caller, in order
            self._put(_Failed(e))
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # a cancelled job releases its file and decoder now

    def fail(self, error: BaseException) -> None:
        """Queue ``error`` as this channel's only item (no worker)."""
        self._queue.put(_Failed(error))

    def _put(self, item: _Frame | _Done | _Failed) -> bool:
        while not self._cancel.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def drain(self) -> Iterator[_Frame]:
        """The job's frames, as they come; its error is raised here."""
        while True:
            item = self._queue.get()
            if isinstance(item, _Done):
                return
            if isinstance(item, _Failed):
                raise item.error
            self._held.add(-1)
            yield item
