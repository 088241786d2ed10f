"""From per-prediction probabilities to bleeding events (the case index of those events is
:meth:`dicom_io.results.CaseIndex.from_events`).

Pure functions on arrays. Filter lengths are given in seconds and converted to samples in
:func:`samples_for`, the one place where time becomes a sample count. The authors'
post-processing is a morphological opening then closing, each 1 s long, at threshold 0.5; a
median filter is an option. A model whose probabilities sit on another scale carries its own
:class:`OperatingPoint` (chosen on validation cases by
:func:`amagi_plugin.evaluation.calibrate.choose_operating_point`).

A hold threshold (hysteresis, this project's, not the authors') lets an event that began at the
threshold last while the probability stays above a lower level: a strict threshold keeps
alarms off still blood but cuts a bleeding's event short where its probability dips
(heldout-looks/README.md, session 32). No event can begin at the hold threshold, so holding
never adds an event; it lengthens events and may join two.
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
    (:data:`SMOOTHING_METHODS`) and its length, and the hold threshold (None: none; module
    docstring). The defaults are the authors'."""

    threshold: float = 0.5
    smoothing: str = "morphology"
    smoothing_s: float = 1.0
    hold_threshold: float | None = None

    #: The names of the knobs, as ``[analysis]`` configuration keys and AnalysisOptions fields.
    KEYS = ("threshold", "smoothing", "smoothing_s", "hold_threshold")

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold!r}")
        check_hold(self.threshold, self.hold_threshold)
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

    @classmethod
    def of(cls, options: Any) -> OperatingPoint:
        """The point that ``options`` (anything with the :attr:`KEYS` attributes) reads at."""
        return cls(**{k: getattr(options, k) for k in cls.KEYS})

    def to_json(self) -> dict[str, Any]:
        """The knobs (a point without a hold threshold leaves it out)."""
        return {k: getattr(self, k) for k in self.KEYS
                if not (k == "hold_threshold" and self.hold_threshold is None)}

    def decide(self, probabilities: np.ndarray, rate_hz: float) -> np.ndarray:
        """The binary decisions of ``probabilities`` read at this operating point."""
        return smooth_decisions(probabilities, rate_hz, self.threshold, self.smoothing,
                                self.smoothing_s, self.hold_threshold)

    def describe(self) -> str:
        """In words, as reports and logs give it: ``threshold 0.8 (held to 0.5), morphology
        1 s``."""
        held = "" if self.hold_threshold is None else f" (held to {self.hold_threshold:g})"
        return f"threshold {self.threshold:g}{held}, {self.smoothing} {self.smoothing_s:g} s"


def check_hold(threshold: float, hold: float | None) -> None:
    """A hold threshold lies in (0, ``threshold``] (equal: no hold); ``ValueError`` if not."""
    if hold is None:
        return
    if isinstance(hold, bool) or not isinstance(hold, (int, float)) or not 0.0 < hold < 1.0:
        raise ValueError(f"hold_threshold must lie in (0, 1), got {hold!r}")
    if hold > threshold:
        raise ValueError(f"hold_threshold {hold:g} lies above the threshold {threshold:g}: "
                         "an event is held while the probability stays above it, so it must "
                         "not exceed the threshold at which events begin")


_Options = TypeVar("_Options")


def at_operating_point(options: _Options, point: OperatingPoint | None,
                       configured: Collection[str] = ()) -> _Options:
    """``options`` (a dataclass with the :attr:`OperatingPoint.KEYS` fields) read at
    ``point``, except the knobs named in ``configured``: what the user set explicitly wins
    over what the model carries. The model's hold threshold was chosen with its threshold:
    with the threshold configured and the hold not, there is none. ``point`` None:
    ``options`` unchanged."""
    if point is None:
        return options
    taken = {k: getattr(point, k) for k in OperatingPoint.KEYS if k not in configured}
    if "threshold" in configured and "hold_threshold" not in configured:
        taken["hold_threshold"] = None
    return replace(options, **taken)  # type: ignore[type-var]


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
                     method: str = "morphology", length_s: float = 1.0,
                     hold_threshold: float | None = None) -> np.ndarray:
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
    hold_threshold
        Hysteresis (module docstring): a positive stretch is every run of the decisions read
        the same way at ``hold_threshold`` that holds a decision at ``threshold``. None (or
        equal to ``threshold``): the decisions at ``threshold``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    check_hold(threshold, hold_threshold)
    begin = _decisions(p, rate_hz, threshold, method, length_s)
    if hold_threshold is None or hold_threshold >= threshold:
        return begin
    # the filters are increasing, so the decisions at the threshold lie inside these runs
    held = _decisions(p, rate_hz, hold_threshold, method, length_s)
    out = np.zeros_like(held)
    for a, b in runs(held):
        if begin[a:b].any():
            out[a:b] = True
    return out


def _decisions(p: np.ndarray, rate_hz: float, threshold: float, method: str, length_s: float
               ) -> np.ndarray:
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

