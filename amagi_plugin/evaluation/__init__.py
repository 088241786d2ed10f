"""Evaluating bleeding detectors on annotated videos (``amagi evaluate``).

- :mod:`amagi_plugin.evaluation.metrics`: frame-level precision/recall/F1, AUROC, AP,
  event-level F1 at temporal IoU thresholds, the surgical analysis index errors, false
  alarms and onset latency;
- :mod:`amagi_plugin.evaluation.cases`: ground truth of cases and running the pipeline;
- :mod:`amagi_plugin.evaluation.report`: pooled, per-fold and per-tag tables and plots;
- :mod:`amagi_plugin.evaluation.run`: the whole evaluation of several models.
"""

from __future__ import annotations

from amagi_plugin.evaluation.cases import CasePrediction, TruthCase, load_cases, predict_case
from amagi_plugin.evaluation.metrics import (
    CaseIndexError,
    EventCounts,
    FalseAlarms,
    auroc,
    average_precision,
    event_counts,
    false_alarms,
    frame_counts,
    index_errors,
    interval_iou,
    latency_summary,
    onset_latencies,
    prf,
)
from amagi_plugin.evaluation.report import IOUS, markdown_report, plot_fold, summarize

__all__ = [
    "IOUS",
    "CaseIndexError",
    "CasePrediction",
    "EventCounts",
    "FalseAlarms",
    "TruthCase",
    "auroc",
    "average_precision",
    "event_counts",
    "false_alarms",
    "frame_counts",
    "index_errors",
    "interval_iou",
    "latency_summary",
    "load_cases",
    "markdown_report",
    "onset_latencies",
    "plot_fold",
    "predict_case",
    "prf",
    "summarize",
]
