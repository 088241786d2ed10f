"""Evaluating bleeding detectors on annotated videos (``amagi evaluate``).

- :mod:`amagi_plugin.evaluation.metrics`: frame-level precision/recall/F1, AUROC, AP,
  event-level F1 at temporal IoU thresholds, the surgical analysis index errors;
- :mod:`amagi_plugin.evaluation.cases`: ground truth of cases and running the pipeline;
- :mod:`amagi_plugin.evaluation.report`: per-fold and pooled tables and plots;
- :mod:`amagi_plugin.evaluation.run`: the whole evaluation of several models.
"""

from __future__ import annotations

from amagi_plugin.evaluation.cases import CasePrediction, TruthCase, load_cases, predict_case
from amagi_plugin.evaluation.metrics import (
    CaseIndexError,
    EventCounts,
    auroc,
    average_precision,
    event_counts,
    frame_counts,
    index_errors,
    interval_iou,
    prf,
)
from amagi_plugin.evaluation.report import IOUS, markdown_report, plot_fold, summarize

__all__ = [
    "IOUS",
    "CaseIndexError",
    "CasePrediction",
    "EventCounts",
    "TruthCase",
    "auroc",
    "average_precision",
    "event_counts",
    "frame_counts",
    "index_errors",
    "interval_iou",
    "load_cases",
    "markdown_report",
    "plot_fold",
    "predict_case",
    "prf",
    "summarize",
]
