"""Aggregating per-case predictions into per-fold and pooled tables, and the plots.

Every number is computed from :class:`~amagi_plugin.evaluation.cases.CasePrediction`
objects: frame-level counts and scores are pooled over the cases of a group, event counts
are summed, and the surgical analysis index errors are averaged over cases (``*_rel`` is
the mean of per-case fractions of the ground truth, ``*_pooled_rel`` the summed error over
the summed ground truth).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amagi_plugin.evaluation.cases import CasePrediction, TruthCase
from amagi_plugin.evaluation.metrics import (
    EventCounts,
    auroc,
    average_precision,
    event_counts,
    frame_counts,
    index_errors,
    prf,
)

__all__ = ["IOUS", "markdown_report", "plot_fold", "summarize"]

IOUS = (0.1, 0.25, 0.5)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def summarize(preds: Sequence[CasePrediction], truth: dict[str, TruthCase],
              ious: Sequence[float] = IOUS) -> dict[str, Any]:
    """Metrics of one model over a group of cases."""
    if not preds:
        raise ValueError("no prediction to summarise")
    labels = np.concatenate([p.labels for p in preds])
    scores = np.concatenate([p.probabilities for p in preds])
    decisions = np.concatenate([p.decisions for p in preds])
    counts = frame_counts(labels, decisions)
    frame = {k: _r(v) for k, v in prf(counts["tp"], counts["fp"], counts["fn"]).items()}
    frame.update(auroc=_r(auroc(labels, scores)), ap=_r(average_precision(labels, scores)),
                 **counts)
    events = {}
    for iou in ious:
        total = EventCounts(0, 0, 0)
        for p in preds:
            total = total + event_counts(p.events, truth[p.case_id].events, iou)
        events[f"iou_{iou:g}"] = {k: _r(v) for k, v in total.to_dict().items()}
    idx = [index_errors(p.events, truth[p.case_id].events) for p in preds]
    rel_c = [e.count_error_rel for e in idx if e.count_error_rel is not None]
    rel_d = [e.duration_error_rel for e in idx if e.duration_error_rel is not None]
    index = {
        "cases": len(idx),
        "count_error_mean": _r(np.mean([e.count_error for e in idx])),
        "duration_error_s_mean": _r(np.mean([e.duration_error_s for e in idx])),
        "count_error_rel": _r(np.mean(rel_c)) if rel_c else None,
        "duration_error_rel": _r(np.mean(rel_d)) if rel_d else None,
        "count_error_pooled_rel": _r(sum(e.count_error for e in idx)
                                     / max(1, sum(e.true_count for e in idx))),
        "duration_error_pooled_rel": _r(sum(e.duration_error_s for e in idx)
                                        / max(1e-9, sum(e.true_duration_s for e in idx))),
    }
    out = {"frame": frame, "events": events, "index": index}
    if all(p.guidance is not None for p in preds):
        out["guidance"] = _guidance(labels, np.concatenate([p.guidance for p in preds]))
    return out


def _guidance(labels: np.ndarray, areas: np.ndarray) -> dict[str, Any]:
    """How well the segmentation map's bleeding area alone separates the frame labels."""
    ok = ~np.isnan(areas)
    y, a = labels[ok], areas[ok]
    return {"auroc": _r(auroc(y, a)), "ap": _r(average_precision(y, a)),
            "area_bleeding": _r(a[y == 1].mean()) if (y == 1).any() else None,
            "area_normal": _r(a[y == 0].mean()) if (y == 0).any() else None,
            "frames": int(ok.sum())}


def _fmt(x: Any, pct: bool = False, pct_digits: int = 1) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.{pct_digits}f} %" if pct else f"{x:.3f}"


def _row(name: str, s: dict[str, Any], prefix: Sequence[str] = ()) -> str:
    f, e, i = s["frame"], s["events"], s["index"]
    cells = [*prefix, name, _fmt(f["precision"]), _fmt(f["recall"]), _fmt(f["f1"]),
             _fmt(f["auroc"]), _fmt(f["ap"]),
             *(_fmt(e[k]["f1"]) for k in sorted(e, key=lambda k: float(k[4:]))),
             _fmt(i["count_error_rel"], True), _fmt(i["duration_error_rel"], True)]
    return "| " + " | ".join(cells) + " |"


def _header(ious: Sequence[float], prefix: Sequence[str] = ()) -> list[str]:
    cols = [*prefix, "model", "frame P", "frame R", "frame F1", "AUROC", "AP",
            *(f"event F1@{iou:g}" for iou in ious), "count error", "duration error"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def markdown_report(doc: dict[str, Any], title: str = "Evaluation") -> str:
    """Markdown tables (pooled, per fold, per case) of an ``amagi evaluate`` result."""
    ious = doc["ious"]
    models = doc["models"]
    lines = [f"# {title}", ""]
    if doc.get("notice"):
        lines += [f"**{doc['notice']}**", ""]
    lines += [f"Data: {doc['data']['description']}", "",
              f"Post-processing (same for every model): {doc['post_processing']}", "",
              "Count and duration errors are the authors' surgical analysis index: mean over "
              "cases of |predicted − true| / true.", "",
              "## Pooled over all held-out cases", "", *_header(ious)]
    lines += [_row(m, doc["pooled"][m]) for m in models]
    lines += _guidance_lines(doc)
    lines += ["", f"## Per fold ({doc['folds']}-fold, patient-level)", "",
              *_header(ious, ["fold"])]
    for k, fold in sorted(doc["per_fold"].items(), key=lambda kv: int(kv[0])):
        lines += [_row(m, fold[m], [str(int(k) + 1)]) for m in models]
    lines += ["", "## Per case", "",
              "| case | patient | fold | true count | true duration (s) | "
              + " | ".join(f"{m} count | {m} duration (s)" for m in models) + " |",
              "|" + "---|" * (5 + 2 * len(models))]
    for c in doc["cases"]:
        cells = [c["case_id"], c["patient_id"], str(c["fold"] + 1), str(c["true_count"]),
                 f"{c['true_duration_s']:.1f}"]
        for m in models:
            cells += [str(c["models"][m]["pred_count"]), f"{c['models'][m]['pred_duration_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _guidance_lines(doc: dict[str, Any]) -> list[str]:
    guided = [m for m in doc["models"] if "guidance" in doc["pooled"][m]]
    if not guided:
        return []
    lines = ["", "## Segmentation guidance", "",
             "AMAGI re-weights its clip features with the bleeding map that its frozen "
             "segmentation net draws on one frame, the clip's centre. One frame cannot show "
             "whether blood is still flowing. This table scores the map on its own: the "
             "fraction of the frame it marks as bleeding, at each prediction instant, against "
             "the frame labels (AUROC 0.5 = chance). The guidance can only add what this map "
             "tells apart.", "",
             "| model | AUROC | AP | mean area, bleeding | mean area, normal |",
             "|---|---|---|---|---|"]
    for m in guided:
        g = doc["pooled"][m]["guidance"]
        lines.append(f"| {m} | {_fmt(g['auroc'])} | {_fmt(g['ap'])} | "
                     f"{_fmt(g['area_bleeding'], True, 2)} | {_fmt(g['area_normal'], True, 2)} |")
    return lines


def plot_fold(doc: dict[str, Any], fold: int, path: str | os.PathLike[str]) -> Path:
    """Ground truth vs each model: event count and total duration per case (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in doc["cases"] if c["fold"] == fold]
    models = doc["models"]
    names = [c["case_id"] for c in cases]
    x = np.arange(len(cases))
    width = 0.8 / (1 + len(models))
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(cases) + 3), 3.6))
    for ax, key, true_key, label in ((axes[0], "pred_count", "true_count", "bleeding events"),
                                     (axes[1], "pred_duration_s", "true_duration_s",
                                      "total bleeding (s)")):
        ax.bar(x - 0.4 + width / 2, [c[true_key] for c in cases], width, label="ground truth",
               color="0.3")
        for j, m in enumerate(models):
            ax.bar(x - 0.4 + width * (j + 1.5), [c["models"][m][key] for c in cases], width,
                   label=m)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"fold {fold + 1}: ground truth vs models ({doc.get('notice') or 'evaluation'})",
                 fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
