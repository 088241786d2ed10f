"""From per-prediction probabilities to bleeding events (the case index of those events is
:meth:`dicom_io.results.CaseIndex.from_events`).

Pure functions on arrays. Filter lengths are given in seconds and converted to samples in
:func:`samples_for`, the one place where time becomes a sample count. The authors'
post-processing is a morphological opening then closing, each 1 s long; a median filter
is an option.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicom_io.results import BleedingEvent


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
        raise ValueError(f"method must be morphology, median or none, got {method!r}")
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

