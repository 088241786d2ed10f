"""Frame timing of a video: per-frame times and the one place where frames and seconds meet.

Times are seconds from the first frame (frame index 0 is at 0.0 s). Frame *indices* are
0-based here; DICOM frame *numbers* (Referenced Frame Number) are ``index + 1``.

DICOM sources (PS3.3 C.7.6.5 Cine Module, C.7.6.6 Multi-frame Module): Frame Time
(0018,1063) is the constant interval in ms; Frame Time Vector (0018,1065) holds one
increment per frame in ms, the first being 0 (C.7.6.5.1.2). Frame Increment Pointer
(0028,0009) names which one applies. Cine Rate (0018,0040) and Recommended Display Frame
Rate (0008,2144), in frames/s, are used only when neither is present (with a warning).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.tag import Tag

from dicom_io.errors import MissingTimingError

logger = logging.getLogger(__name__)

_FRAME_TIME = Tag("FrameTime")
_FRAME_TIME_VECTOR = Tag("FrameTimeVector")
_EPS_S = 1e-6


def frame_to_time(index: int, times: np.ndarray) -> float:
    """Time (s) of frame ``index`` (0-based) given the per-frame ``times`` (s, shape ``(N,)``).

    Raises
    ------
    IndexError
        If ``index`` is outside ``0 .. N-1``.
    """
    if not 0 <= index < len(times):
        raise IndexError(f"frame index {index} outside 0..{len(times) - 1}")
    return float(times[index])


def time_to_frame(time_s: float, times: np.ndarray) -> int:
    """Index (0-based) of the frame on display at ``time_s`` seconds.

    That is the last frame whose time is ``<= time_s`` (1 µs tolerance), clamped to the
    video: negative times give 0 and times past the end give ``N - 1``.
    """
    if not math.isfinite(time_s):
        raise ValueError(f"time_s must be a finite number of seconds, got {time_s!r}")
    i = int(np.searchsorted(times, time_s + _EPS_S, side="right")) - 1
    return min(max(i, 0), len(times) - 1)


@dataclass(frozen=True, eq=False)
class FrameTiming:
    """Per-frame times of a video and where they came from.

    Attributes
    ----------
    times : numpy.ndarray
        ``float64`` of shape ``(N,)``: seconds from the first frame, non-decreasing.
    source : str
        Which attribute gave the times (``"FrameTime"``, ``"FrameTimeVector"``,
        ``"CineRate"``, ``"stream"``, ``"temporal attributes"``, ``"fallback fps"``).
    """

    times: np.ndarray
    source: str

    @classmethod
    def uniform(cls, n_frames: int, fps: float, source: str) -> FrameTiming:
        """Constant frame rate ``fps`` (frames/s) for ``n_frames`` frames."""
        if not (math.isfinite(fps) and fps > 0):
            raise MissingTimingError(f"frame rate {fps!r} frames/s is not a positive number")
        return cls(np.arange(n_frames, dtype=np.float64) / fps, source)

    @classmethod
    def from_increments_ms(cls, increments_ms: Sequence[float], source: str) -> FrameTiming:
        """Times from per-frame increments in ms (Frame Time Vector semantics)."""
        inc = np.asarray(increments_ms, dtype=np.float64)
        if inc.size and inc[0] != 0:
            logger.warning("%s: first increment is %g ms, not 0; treating it as 0",
                           source, inc[0])
        if not np.all(np.isfinite(inc)) or np.any(inc[1:] < 0):
            raise MissingTimingError(f"{source} holds negative or non-finite increments")
        times = np.concatenate([[0.0], np.cumsum(inc[1:])]) / 1000.0 if inc.size else inc
        return cls(times, source)

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.times.shape[0])

    @property
    def duration_s(self) -> float:
        """Time (s) from the first frame to the end of the last one (one mean interval)."""
        if self.n_frames == 0:
            return 0.0
        return float(self.times[-1]) + 1.0 / self.fps

    @property
    def fps(self) -> float:
        """Mean frame rate (frames/s) over the video; ``nan`` for a single frame."""
        if self.n_frames < 2 or self.times[-1] <= 0:
            return math.nan
        return (self.n_frames - 1) / float(self.times[-1])

    @property
    def is_uniform(self) -> bool:
        """True when all intervals are equal (within 1 µs)."""
        d = np.diff(self.times)
        return bool(d.size == 0 or np.ptp(d) < _EPS_S)

    def frame_to_time(self, index: int) -> float:
        """See :func:`frame_to_time`."""
        return frame_to_time(index, self.times)

    def time_to_frame(self, time_s: float) -> int:
        """See :func:`time_to_frame`."""
        return time_to_frame(time_s, self.times)


def timing_from_dataset(ds: Dataset, n_frames: int) -> FrameTiming | None:
    """Frame timing from a multi-frame instance's Cine/Multi-frame attributes.

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance header.
    n_frames : int
        Number of Frames (0028,0008).

    Returns
    -------
    FrameTiming or None
        ``None`` when the instance has no timing attribute at all.

    Raises
    ------
    MissingTimingError
        If the timing attribute present is unusable (zero/negative Frame Time, a Frame
        Time Vector whose length is not the number of frames).
    """
    pointer = ds.get("FrameIncrementPointer")
    pointers = set(pointer if isinstance(pointer, Sequence) else [pointer]) if pointer else set()
    has_ft = "FrameTime" in ds and ds.FrameTime not in (None, "")
    has_ftv = "FrameTimeVector" in ds and ds.FrameTimeVector not in (None, "")
    use_ftv = has_ftv and (_FRAME_TIME_VECTOR in pointers or not has_ft)
    if use_ftv:
        ftv = ds.FrameTimeVector
        values = [float(v) for v in (ftv if isinstance(ftv, Sequence) else [ftv])]
        if len(values) != n_frames:
            raise MissingTimingError(
                f"Frame Time Vector has {len(values)} values for {n_frames} frames")
        return FrameTiming.from_increments_ms(values, "FrameTimeVector")
    if has_ft:
        ft = float(ds.FrameTime)
        if not (math.isfinite(ft) and ft > 0):
            raise MissingTimingError(f"Frame Time {ft!r} ms is not a positive duration")
        return FrameTiming.uniform(n_frames, 1000.0 / ft, "FrameTime")
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = ds.get(keyword)
        if rate not in (None, "") and float(rate) > 0:
            logger.warning("no Frame Time or Frame Time Vector; using %s = %s frames/s",
                           keyword, rate)
            return FrameTiming.uniform(n_frames, float(rate), keyword)
    return None
