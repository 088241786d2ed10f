"""Detection metrics: frame level, event level, and the authors' surgical analysis index.

Pure functions on arrays and intervals (seconds). Conventions:

- frame level: one sample per prediction instant; ``labels`` 0/1 ground truth,
  ``decisions`` the post-processed binary output, ``scores`` the bleeding probability;
  precision/recall/F1 of the decisions, AUROC and average precision of the scores;
- event level: intervals ``[start, end)`` in seconds, matched one-to-one greedily by
  decreasing temporal IoU; a pair counts when IoU ≥ the threshold;
  ``F1 = 2·TP / (n_pred + n_true)``;
- index (per case): count error ``|n_pred - n_true|`` and duration error
  ``|total_pred - total_true|`` (s), each also as a fraction of the ground truth (``None``
  for a case without true events, where the fraction is undefined);
- false alarms (per case): predicted events that overlap no true event (a positive-length
  intersection), and the seconds of the case outside every true event; on a bleeding-free
  case every predicted event is a false alarm and the whole case is non-bleeding time;
- onset latency (per true event ``[start, end)``): seconds from ``start`` to the first
  positive post-processed decision at a prediction instant ``t`` with ``start <= t < end``;
  0 when a predicted event began before ``start`` and is still on at ``start``; ``None``
  (missed) when no decision inside the event is positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "CaseIndexError",
    "EventCounts",
    "FalseAlarms",
    "auroc",
    "average_precision",
    "event_counts",
    "false_alarms",
    "frame_counts",
    "index_errors",
    "interval_iou",
    "latency_summary",
    "onset_latencies",
    "prf",
]

Interval = tuple[float, float]


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall, F1 from counts (0 when a denominator is 0; F1 = 1 if all are 0)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {"precision": precision, "recall": recall, "f1": f1}


def frame_counts(labels: Sequence[int], decisions: Sequence[bool]) -> dict[str, int]:
    """``tp, fp, fn, tn`` of binary decisions against binary labels."""
    y = np.asarray(labels, dtype=bool)
    d = np.asarray(decisions, dtype=bool)
    if y.shape != d.shape:
        raise ValueError(f"labels {y.shape} and decisions {d.shape} differ in shape")
    return {"tp": int((y & d).sum()), "fp": int((~y & d).sum()),
            "fn": int((y & ~d).sum()), "tn": int((~y & ~d).sum())}


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    ``None`` when only one class is present.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Average precision: ``Σ (R_k - R_{k-1}) · P_k`` over distinct score thresholds,
    highest first (scikit-learn's definition). ``None`` without positives."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each tie group
    tp = np.cumsum(y)[last]
    predicted = last + 1
    precision = tp / predicted
    recall = tp / n_pos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def interval_iou(a: Interval, b: Interval) -> float:
    """Temporal IoU of two half-open intervals (0 when both are empty)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class EventCounts:
    """Event matching at one IoU threshold."""

    tp: int
    n_pred: int
    n_true: int

    @property
    def precision(self) -> float:
        return prf(self.tp, self.n_pred - self.tp, self.n_true - self.tp)["precision"]

    @property
    def recall(self) -> float:
        return prf(self.tp, self.n_pred - self.tp, self.n_true - self.tp)["recall"]

    @property
    def f1(self) -> float:
        return prf(self.tp, self.n_pred - self.tp, self.n_true - self.tp)["f1"]

    def __add__(self, other: EventCounts) -> EventCounts:
        return EventCounts(self.tp + other.tp, self.n_pred + other.n_pred,
                           self.n_true + other.n_true)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall,
                "f1": self.f1}


def event_counts(pred: Sequence[Interval], true: Sequence[Interval], iou: float) -> EventCounts:
    """Greedy one-to-one matching by decreasing IoU; pairs below ``iou`` never match."""
    pairs = sorted(((interval_iou(p, t), i, j) for i, p in enumerate(pred)
                    for j, t in enumerate(true)), key=lambda x: (-x[0], x[1], x[2]))
    used_p: set[int] = set()
    used_t: set[int] = set()
    for value, i, j in pairs:
        if value < iou or value <= 0.0:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
    return EventCounts(len(used_p), len(pred), len(true))


@dataclass(frozen=True)
class CaseIndexError:
    """Surgical analysis index of one case against its ground truth."""

    true_count: int
    pred_count: int
    true_duration_s: float
    pred_duration_s: float

    @property
    def count_error(self) -> int:
        return abs(self.pred_count - self.true_count)

    @property
    def duration_error_s(self) -> float:
        return abs(self.pred_duration_s - self.true_duration_s)

    @property
    def count_error_rel(self) -> float | None:
        return self.count_error / self.true_count if self.true_count else None

    @property
    def duration_error_rel(self) -> float | None:
        return self.duration_error_s / self.true_duration_s if self.true_duration_s else None

    def to_dict(self) -> dict[str, float | int | None]:
        return {**asdict(self), "count_error": self.count_error,
                "duration_error_s": round(self.duration_error_s, 4),
                "count_error_rel": self.count_error_rel,
                "duration_error_rel": self.duration_error_rel}


def index_errors(pred: Sequence[Interval], true: Sequence[Interval]) -> CaseIndexError:
    """Count and total-duration errors of predicted against true events."""
    return CaseIndexError(len(true), len(pred), float(sum(e - s for s, e in true)),
                       float(sum(e - s for s, e in pred)))


def _covered_s(intervals: Sequence[Interval], duration_s: float) -> float:
    """Seconds of ``[0, duration_s)`` covered by the union of ``intervals``."""
    clipped = sorted((max(0.0, a), min(duration_s, b)) for a, b in intervals)
    total, reach = 0.0, 0.0
    for a, b in clipped:
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total


@dataclass(frozen=True)
class FalseAlarms:
    """Predicted events of one case that overlap no true event, and its non-bleeding time."""

    count: int
    non_bleeding_s: float

    def per_hour(self) -> float | None:
        """False alarms per hour of non-bleeding time (``None`` without such time)."""
        return 3600.0 * self.count / self.non_bleeding_s if self.non_bleeding_s > 0 else None


def false_alarms(pred: Sequence[Interval], true: Sequence[Interval],
                 duration_s: float) -> FalseAlarms:
    """False alarms of one case of ``duration_s`` seconds.

    A predicted event is a false alarm when its intersection with every true event is
    empty (touching end to start is no overlap). ``non_bleeding_s`` is ``duration_s``
    minus the union of the true events clipped to ``[0, duration_s)``.

    Raises
    ------
    ValueError
        ``duration_s`` is negative or not finite.
    """
    if not np.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
    count = sum(1 for p in pred
                if all(min(p[1], t[1]) - max(p[0], t[0]) <= 0 for t in true))
    return FalseAlarms(count, max(0.0, duration_s - _covered_s(true, duration_s)))


def onset_latencies(true: Sequence[Interval], times_s: Sequence[float],
                    decisions: Sequence[bool], pred: Sequence[Interval]) -> list[float | None]:
    """Onset latency (s) of each true event, in the order of ``true``; ``None`` = missed.

    Parameters
    ----------
    true
        True events ``[start, end)`` in seconds.
    times_s, decisions
        Prediction instants (s) and the post-processed binary decision at each, shape (P,).
    pred
        The predicted events ``[start, end)`` (s) made from ``decisions``; one that starts
        before a true event's start and ends after it means the alarm was already on, so
        that event's latency is 0.

    Raises
    ------
    ValueError
        ``times_s`` and ``decisions`` differ in shape.
    """
    t = np.asarray(times_s, dtype=np.float64)
    d = np.asarray(decisions, dtype=bool)
    if t.shape != d.shape:
        raise ValueError(f"times_s {t.shape} and decisions {d.shape} differ in shape")
    out: list[float | None] = []
    for start, end in true:
        if any(a < start < b for a, b in pred):
            out.append(0.0)
            continue
        hits = np.flatnonzero(d & (t >= start) & (t < end))
        out.append(max(0.0, float(t[hits[0]] - start)) if hits.size else None)
    return out


def latency_summary(latencies: Sequence[float | None]) -> dict[str, float | int | None]:
    """Median and 90th percentile (linear interpolation, NumPy's default) of the detected
    events' latencies (s), and how many events were detected and missed (``None``)."""
    found = np.asarray([x for x in latencies if x is not None], dtype=np.float64)
    return {"events": len(latencies), "detected": int(found.size),
            "missed": len(latencies) - int(found.size),
            "median_s": float(np.median(found)) if found.size else None,
            "p90_s": float(np.percentile(found, 90)) if found.size else None}
