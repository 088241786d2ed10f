"""Whole-video clip scheduling, as the authors sample it, with every clip computed once.

The authors' clip is 8 frames 3 apart at 30 fps and they predict every 3rd frame: a time
grid of 0.1 s. Here everything is defined on that grid in seconds, so 25, 50 or 60 fps
videos sample the same instants (each grid time maps to the nearest frame).

A prediction at grid point ``g`` averages the softmax of three clips: the one that starts
at ``g``, the one centred on ``g`` (its frame index ``T//2`` = 4, the frame the
segmentation model sees, is ``g``) and the one that ends at ``g``. With ``T = 8`` those
start at ``g``, ``g - 4`` and ``g - 7``. A clip starting at ``s`` therefore serves the
predictions at ``s``, ``s + 4`` and ``s + 7``: :func:`shared_clip_probabilities` runs each
clip once; :func:`naive_clip_probabilities` is the three-clips-per-prediction reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from amagi_plugin.errors import InputError
from models.recognizer import centred_window

#: The authors' grid: 3 frames at 30 fps.
GRID_S = 0.1


class UnanalysableVideoError(InputError, ValueError):
    """A video that no attempt can ever analyse (too few frames for one clip, no frame rate).

    It is an :class:`~amagi_plugin.errors.InputError`, so a worker fails the job at once
    instead of retrying, and a ``ValueError`` for callers building schedules by hand.
    """


@dataclass(frozen=True)
class ClipSchedule:
    """Where clips and predictions fall in a video.

    Parameters
    ----------
    frame_count
        Frames in the video.
    fps
        Frames per second.
    clip_len
        Frames per clip (``T``, 8 for AMAGI).
    grid_s
        Spacing of clip frames and of the prediction grid (s); the authors' 0.1 s.
    prediction_hz
        Predictions per second; 10 (every grid point) by default, lower on slow machines.
    """

    frame_count: int
    fps: float
    clip_len: int = 8
    grid_s: float = GRID_S
    prediction_hz: float = 1.0 / GRID_S

    def __post_init__(self) -> None:
        if self.clip_len < 1:
            raise ValueError(f"clip_len must be 1 or more, got {self.clip_len}")
        if self.frame_count < self.clip_len:
            raise UnanalysableVideoError(
                f"too few frames: the video has {self.frame_count} frame(s) and one clip "
                f"needs {self.clip_len}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise UnanalysableVideoError(
                f"no frame rate: the frame times give {self.fps!r} frames/s")
        if self.prediction_hz <= 0 or self.prediction_hz > 1.0 / self.grid_s + 1e-9:
            raise ValueError(f"prediction_hz must be in (0, {1.0 / self.grid_s:g}], "
                             f"got {self.prediction_hz}")

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps

    @property
    def grid_count(self) -> int:
        """Grid points inside the video (times 0, grid_s, ... < duration)."""
        return max(1, math.ceil(self.duration_s / self.grid_s - 1e-9))

    @property
    def prediction_step(self) -> int:
        """Grid points between two predictions."""
        return max(1, round(1.0 / (self.prediction_hz * self.grid_s)))

    @property
    def clip_offsets(self) -> tuple[int, int, int]:
        """Start of the starting, centred and ending clip relative to the prediction point."""
        return (0, -(self.clip_len // 2), -(self.clip_len - 1))

    def grid_frame(self, g: int) -> int:
        """Frame index shown at grid point ``g`` (clamped to the video)."""
        return min(self.frame_count - 1, max(0, round(g * self.grid_s * self.fps)))

    def window(self, frame: int, frames: int) -> list[int]:
        """Frame indices ``grid_s`` apart centred on frame index ``frame`` (``frames`` odd),
        clamped to the video: what a temporal segmenter sees around the frame it segments,
        as a clip lays its frames out. Where ``frame`` is a grid point's, they are the
        frames of the grid points around it, exactly as the clip centred there holds them,
        so that its segmenter's map is the one the probe and the key frames' masks read;
        elsewhere :func:`~models.recognizer.centred_window`. The two differ only where a grid
        step is not a whole number of frames (25 fps: 2.5), by one frame (issue #15)."""
        step = self.grid_s * self.fps
        near = round(frame / step)
        for g in (near, near - 1, near + 1):
            if 0 <= g < self.grid_count and self.grid_frame(g) == frame:
                return [self.grid_frame(g + j - frames // 2) for j in range(frames)]
        return centred_window(frame, frames, step, self.frame_count)

    def prediction_points(self) -> range:
        return range(0, self.grid_count, self.prediction_step)

    def clip_frames(self, start: int) -> list[int]:
        """Frame indices of the clip starting at grid point ``start`` (edges repeat)."""
        return [self.grid_frame(start + k) for k in range(self.clip_len)]

    def clip_starts(self) -> list[int]:
        """Every clip start some prediction needs, each once, in order."""
        return sorted({p + o for p in self.prediction_points() for o in self.clip_offsets})

    def prediction_time(self, g: int) -> float:
        return self.grid_frame(g) / self.fps


ClipProbabilityFn = Callable[[Sequence[int]], np.ndarray]
"""Given clip starts, return the per-clip class probabilities, shape (len(starts), C)."""


def shared_clip_probabilities(schedule: ClipSchedule, clip_probs: ClipProbabilityFn,
                              batch_size: int = 8) -> np.ndarray:
    """Per-prediction probabilities (P, C), each clip evaluated once.

    ``clip_probs`` is called with batches of clip starts in increasing order, so a
    streaming caller can decode the video once, front to back.
    """
    cache: dict[int, np.ndarray] = {}
    starts = schedule.clip_starts()
    for i in range(0, len(starts), batch_size):
        batch = starts[i:i + batch_size]
        for s, p in zip(batch, clip_probs(batch), strict=True):
            cache[s] = np.asarray(p, dtype=np.float64)
    return _average(schedule, cache.__getitem__)


def naive_clip_probabilities(schedule: ClipSchedule, clip_probs: ClipProbabilityFn) -> np.ndarray:
    """Reference: three fresh clip evaluations per prediction (what sharing must equal)."""
    out = []
    for p in schedule.prediction_points():
        starts = [p + o for o in schedule.clip_offsets]
        out.append(np.asarray(clip_probs(starts), dtype=np.float64).mean(axis=0))
    return np.stack(out)


def _average(schedule: ClipSchedule, get: Callable[[int], np.ndarray]) -> np.ndarray:
    return np.stack([np.mean([get(p + o) for o in schedule.clip_offsets], axis=0)
                     for p in schedule.prediction_points()])


def iter_clip_batches(starts: Iterable[int], batch_size: int) -> Iterator[list[int]]:
    batch: list[int] = []
    for s in starts:
        batch.append(s)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
