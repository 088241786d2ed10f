"""From per-prediction probabilities to bleeding events (the case index of those events is
:meth:`dicom_io.results.CaseIndex.from_events`).

Pure functions on arrays. Filter lengths are given in seconds and converted to samples in
:func:`samples_for`, the one place where time becomes a sample count. The authors'
post-processing is a morphological opening then closing, each 1 s long, at threshold 0.5; a
median filter is an option. A model whose probabilities sit on another scale carries its own
:class:`OperatingPoint` (chosen on validation cases by
:func:`amagi_plugin.evaluation.calibrate.choose_operating_point`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from dicom_io.results import BleedingEvent

SMOOTHING_METHODS = ("morphology", "median", "none")
#: Where the key-frame masks are computed (``analysis.mask_scale``,
#: :meth:`~amagi_plugin.pipeline.BleedingAnalyzer.segment_frames`).
MASK_SCALES = ("model", "native")


@dataclass(frozen=True)
class OperatingPoint:
    """The post-processing a model's probabilities are read with: the threshold, the filter
    (:data:`SMOOTHING_METHODS`) and its length. The defaults are the authors'."""

    threshold: float = 0.5
    smoothing: str = "morphology"
    smoothing_s: float = 1.0

    #: The names of the knobs, as ``[analysis]`` configuration keys and AnalysisOptions fields.
    KEYS = ("threshold", "smoothing", "smoothing_s")

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold!r}")
        if self.smoothing not in SMOOTHING_METHODS:
            raise ValueError(f"smoothing must be one of {', '.join(SMOOTHING_METHODS)}, got "
                             f"{self.smoothing!r}")
        if not (isinstance(self.smoothing_s, (int, float)) and self.smoothing_s >= 0):
            raise ValueError(f"smoothing_s must be 0 or more, got {self.smoothing_s!r}")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OperatingPoint:
        """From a ``model.json`` entry; unknown keys and bad values raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"an operating point is a table, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.KEYS) - {"chosen_on"})
        if unknown:
            raise ValueError(f"unknown operating-point key(s): {', '.join(unknown)}")
        return cls(**{k: data[k] for k in cls.KEYS if k in data})

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.KEYS}

    def decide(self, probabilities: np.ndarray, rate_hz: float) -> np.ndarray:
        """The binary decisions of ``probabilities`` read at this operating point."""
        return smooth_decisions(probabilities, rate_hz, self.threshold, self.smoothing,
                                self.smoothing_s)


_Options = TypeVar("_Options")


def at_operating_point(options: _Options, point: OperatingPoint | None,
                       configured: Collection[str] = ()) -> _Options:
    """``options`` (a dataclass with the :attr:`OperatingPoint.KEYS` fields) read at
    ``point``, except the knobs named in ``configured``: what the user set explicitly wins
    over what the model carries. ``point`` None: ``options`` unchanged."""
    if point is None:
        return options
    return replace(options, **{k: getattr(point, k) for k in OperatingPoint.KEYS  # type: ignore[type-var]
                               if k not in configured})


def samples_for(seconds: float, rate_hz: float) -> int:
    """Odd-or-even window length in samples for a filter of ``seconds`` at ``rate_hz``."""
    return max(1, round(seconds * rate_hz))


def _windowed(x: np.ndarray, size: int, pad_value: float, reduce) -> np.ndarray:
    """Reduce over a centred window of ``size`` samples (edges padded with ``pad_value``)."""
    left = (size - 1) // 2
    padded = np.pad(x, (left, size - 1 - left), constant_values=pad_value)
    return reduce(np.lib.stride_tricks.sliding_window_view(padded, size), axis=-1)


def erode(x: np.ndarray, size: int) -> np.ndarray:
    return _windowed(x, size, True, np.all) if size > 1 else x.copy()


def dilate(x: np.ndarray, size: int) -> np.ndarray:
    return _windowed(x, size, False, np.any) if size > 1 else x.copy()


def opening(x: np.ndarray, size: int) -> np.ndarray:
    """Removes positive runs shorter than ``size`` samples."""
    # Dilation uses the mirrored window so that opening is idempotent for even sizes too.
    return dilate(erode(x, size)[::-1], size)[::-1]


def closing(x: np.ndarray, size: int) -> np.ndarray:
    """Fills negative gaps shorter than ``size`` samples."""
    return erode(dilate(x, size)[::-1], size)[::-1]


def median_filter(x: np.ndarray, size: int) -> np.ndarray:
    if size <= 1:
        return x.copy()
    left = (size - 1) // 2
    padded = np.pad(x.astype(np.float64), (left, size - 1 - left), mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, size), axis=-1)


def smooth_decisions(probabilities: np.ndarray, rate_hz: float, threshold: float = 0.5,
                     method: str = "morphology", length_s: float = 1.0) -> np.ndarray:
    """Binary bleeding decision per prediction after post-processing.

    Parameters
    ----------
    probabilities
        Bleeding probability per prediction, shape (P,).
    rate_hz
        Predictions per second.
    method
        ``morphology`` (opening then closing, the authors'), ``median`` (median of the
        probabilities, then threshold) or ``none``.
    length_s
        Length of each filter in seconds.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    size = samples_for(length_s, rate_hz)
    if method == "median":
        return median_filter(p, size) >= threshold
    raw = p >= threshold
    if method == "none":
        return raw
    if method != "morphology":
        raise ValueError(f"method must be one of {', '.join(SMOOTHING_METHODS)}, got {method!r}")
    return closing(opening(raw, size), size)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous ``True`` runs as half-open ``(start, stop)`` sample ranges."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


@dataclass(frozen=True)
class Timeline:
    """The prediction instants of a video: time (s) and frame index (0-based) of each."""

    times_s: np.ndarray
    frames: np.ndarray
    rate_hz: float
    duration_s: float


def find_events(probabilities: np.ndarray, decisions: np.ndarray, timeline: Timeline
                ) -> list[BleedingEvent]:
    """One event per contiguous positive run of ``decisions``.

    An event covers its predictions' sampling intervals: it starts at its first prediction
    and ends one prediction interval after its last (clipped to the video). The key frame
    is the frame of the run's highest probability (1-based, as DICOM frame numbers).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    step = 1.0 / timeline.rate_hz
    events = []
    for a, b in runs(decisions):
        start = float(timeline.times_s[a])
        end = float(min(timeline.times_s[b - 1] + step, timeline.duration_s))
        peak = a + int(np.argmax(p[a:b]))
        events.append(BleedingEvent(
            start_s=round(start, 3), end_s=round(end, 3), duration_s=round(end - start, 3),
            start_frame=int(timeline.frames[a]) + 1, end_frame=int(timeline.frames[b - 1]) + 1,
            key_frame=int(timeline.frames[peak]) + 1,
            peak_probability=round(float(p[peak]), 4),
            mean_probability=round(float(p[a:b].mean()), 4)))
    return events

