"""Aggregating per-case predictions into per-fold, per-tag and pooled tables, and the plots.

Every number is computed from :class:`~amagi_plugin.evaluation.cases.CasePrediction`
objects: frame-level counts and scores are pooled over the cases of a group, event counts
are summed, and the surgical analysis index errors are averaged over cases (``*_rel`` is
the mean of per-case fractions of the ground truth, ``*_pooled_rel`` the summed error over
the summed ground truth).

Bleeding-free cases (no true event) have no relative index (a fraction of zero true
events is undefined), so the whole ``index`` block is computed over the cases with at
least one true event; what a model predicts on a bleeding-free case is reported in
``false_alarms`` instead (``per_hour_bleeding_free``). ``false_alarms.per_hour_non_bleeding``
counts, over every case, the predicted events that overlap no true event per hour outside
the true events. ``onset`` pools the onset latencies of every true event of the group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amagi_plugin.analysis import OperatingPoint
from amagi_plugin.evaluation.cases import CasePrediction, TruthCase
from amagi_plugin.evaluation.metrics import (
    CaseIndexError,
    EventCounts,
    auroc,
    average_precision,
    event_counts,
    false_alarms,
    frame_counts,
    index_errors,
    latency_summary,
    onset_latencies,
    prf,
)

__all__ = ["IOUS", "SIZE_BINS", "auroc_by_size", "markdown_report", "plot_fold", "size_bin",
           "summarize"]

IOUS = (0.1, 0.25, 0.5)
#: Bleeding instants by the share of the frame their visible active bleeding covers
#: (upper bounds; 0.05 % is 10 pixels of a 160x128 frame, 0.5 % is 102). Each bin's
#: instants are scored against every non-bleeding instant of the group.
SIZE_BINS: tuple[tuple[str, float], ...] = (
    ("none visible", 0.0), ("< 0.05 %", 0.0005), ("0.05-0.15 %", 0.0015),
    ("0.15-0.5 %", 0.005), (">= 0.5 %", float("inf")))


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
    index: dict[str, Any] = {"cases": len(preds)}
    index.update(_index([index_errors(p.events, truth[p.case_id].events) for p in preds]))
    out = {"frame": frame, "events": events, "index": index,
           "false_alarms": _false_alarms(preds, truth),
           "onset": _onset(preds, truth)}
    areas = (np.concatenate([p.guidance for p in preds])  # type: ignore[misc]
             if all(p.guidance is not None for p in preds) else None)
    if areas is not None:
        out["guidance"] = _guidance(labels, areas)
    if all(p.clip is not None and p.probe is not None for p in preds):
        out["components"] = _components(
            labels, scores, np.concatenate([p.clip for p in preds]),  # type: ignore[misc]
            np.concatenate([p.probe for p in preds]))  # type: ignore[misc]
    if all(truth[p.case_id].active_fraction is not None for p in preds):
        out["by_size"] = _by_size(preds, truth, labels, scores, decisions, areas)
    return out


def size_bin(fraction: np.ndarray) -> np.ndarray:
    """Index into :data:`SIZE_BINS` of each visible-bleeding share (0: none visible)."""
    uppers = np.array([u for _, u in SIZE_BINS[1:-1]])
    return np.where(fraction <= 0, 0, 1 + np.searchsorted(uppers, fraction, side="right"))


def auroc_by_size(labels: np.ndarray, scores: np.ndarray, fraction: np.ndarray
                  ) -> dict[str, float | None]:
    """Per :data:`SIZE_BINS` bin: the AUROC of its bleeding instants (``labels`` 1, their
    visible share ``fraction`` in the bin) against every non-bleeding instant; ``None`` for
    a bin without bleeding instants or a set without non-bleeding ones."""
    bins = size_bin(fraction)
    neg = labels == 0
    out = {}
    for i, (name, _) in enumerate(SIZE_BINS):
        both = ((labels == 1) & (bins == i)) | neg
        out[name] = auroc(labels[both], scores[both])
    return out


def _by_size(preds: Sequence[CasePrediction], truth: dict[str, TruthCase],
             labels: np.ndarray, scores: np.ndarray, decisions: np.ndarray,
             areas: np.ndarray | None) -> dict[str, dict[str, Any]]:
    """Per :data:`SIZE_BINS` bin: its bleeding instants, their AUROC against every
    non-bleeding instant (the model's and, with the map's ``areas``, the map's), and the
    share of them the model calls bleeding."""
    fraction = np.concatenate([truth[p.case_id].active_fraction[p.frames]  # type: ignore[index]
                               for p in preds])
    bins = size_bin(fraction)
    neg = labels == 0
    aurocs = auroc_by_size(labels, scores, fraction)
    out = {}
    for i, (name, _) in enumerate(SIZE_BINS):
        pos = (labels == 1) & (bins == i)
        both = pos | neg
        row: dict[str, Any] = {"instants": int(pos.sum()), "auroc": _r(aurocs[name]),
                               "recall": _r(decisions[pos].mean()) if pos.any() else None}
        if areas is not None:
            ok = both & ~np.isnan(areas)
            row["guidance_auroc"] = _r(auroc(labels[ok], areas[ok]))
        out[name] = row
    return out


def _index(idx: Sequence[CaseIndexError]) -> dict[str, Any]:
    """Surgical analysis index over the cases with at least one true event."""
    with_events = [e for e in idx if e.true_count > 0]
    rel_c = [e.count_error_rel for e in with_events if e.count_error_rel is not None]
    rel_d = [e.duration_error_rel for e in with_events if e.duration_error_rel is not None]
    true_s = sum(e.true_duration_s for e in with_events)
    return {
        "cases_indexed": len(with_events),
        "cases_bleeding_free": len(idx) - len(with_events),
        "count_error_mean": (_r(np.mean([e.count_error for e in with_events]))
                             if with_events else None),
        "duration_error_s_mean": (_r(np.mean([e.duration_error_s for e in with_events]))
                                  if with_events else None),
        "count_error_rel": _r(np.mean(rel_c)) if rel_c else None,
        "duration_error_rel": _r(np.mean(rel_d)) if rel_d else None,
        "count_error_pooled_rel": (_r(sum(e.count_error for e in with_events)
                                      / sum(e.true_count for e in with_events))
                                   if with_events else None),
        "duration_error_pooled_rel": (_r(sum(e.duration_error_s for e in with_events) / true_s)
                                      if true_s > 0 else None),
    }


def _per_hour(count: int, seconds: float) -> float | None:
    return _r(3600.0 * count / seconds) if seconds > 0 else None


def _false_alarms(preds: Sequence[CasePrediction], truth: dict[str, TruthCase]
                  ) -> dict[str, Any]:
    """False alarms per hour on bleeding-free cases and per hour of non-bleeding time."""
    free_n, free_s, free_alarms, all_s, all_alarms = 0, 0.0, 0, 0.0, 0
    for p in preds:
        case = truth[p.case_id]
        fa = false_alarms(p.events, case.events, case.duration_s)
        all_s += fa.non_bleeding_s
        all_alarms += fa.count
        if case.bleeding_free:
            free_n += 1
            free_s += case.duration_s
            free_alarms += len(p.events)
    return {"bleeding_free_cases": free_n, "bleeding_free_hours": _r(free_s / 3600.0, 6),
            "bleeding_free_false_alarms": free_alarms,
            "per_hour_bleeding_free": _per_hour(free_alarms, free_s),
            "non_bleeding_hours": _r(all_s / 3600.0, 6), "non_bleeding_false_alarms": all_alarms,
            "per_hour_non_bleeding": _per_hour(all_alarms, all_s)}


def _onset(preds: Sequence[CasePrediction], truth: dict[str, TruthCase]) -> dict[str, Any]:
    """Onset latencies of every true event of the group, pooled."""
    latencies: list[float | None] = []
    for p in preds:
        latencies += onset_latencies(truth[p.case_id].events, p.times_s, p.decisions, p.events)
    return {k: _r(v) if isinstance(v, float) else v
            for k, v in latency_summary(latencies).items()}


def _guidance(labels: np.ndarray, areas: np.ndarray) -> dict[str, Any]:
    """How well the segmentation map's bleeding area alone separates the frame labels."""
    ok = ~np.isnan(areas)
    y, a = labels[ok], areas[ok]
    return {"auroc": _r(auroc(y, a)), "ap": _r(average_precision(y, a)),
            "area_bleeding": _r(a[y == 1].mean()) if (y == 1).any() else None,
            "area_normal": _r(a[y == 0].mean()) if (y == 0).any() else None,
            "frames": int(ok.sum())}


def _components(labels: np.ndarray, fused: np.ndarray, clip: np.ndarray, probe: np.ndarray
                ) -> dict[str, Any]:
    """A probed model's parts ranked alone against the frame labels: the clip network's
    probability, the probe's score (at the instants it has one) and their fusion (the
    model's probability), each by AUROC."""
    known = ~np.isnan(probe)
    return {"clip_auroc": _r(auroc(labels, clip)),
            "probe_auroc": _r(auroc(labels[known], probe[known])),
            "fused_auroc": _r(auroc(labels, fused)),
            "probe_known": _r(known.mean()) if known.size else None}


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


def _alarm_header(prefix: Sequence[str] = ()) -> list[str]:
    cols = [*prefix, "model", "bleeding-free cases", "bleeding-free hours",
            "false alarms/h, bleeding-free cases", "false alarms/h, non-bleeding time",
            "true events", "missed", "median onset latency (s)", "p90 onset latency (s)"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _alarm_row(name: str, s: dict[str, Any], prefix: Sequence[str] = ()) -> str:
    fa, on = s.get("false_alarms"), s.get("onset")
    if fa is None or on is None:  # written before these figures existed
        cells = [*prefix, name, *["–"] * 8]
    else:
        cells = [*prefix, name, str(fa["bleeding_free_cases"]),
                 _fmt(fa["bleeding_free_hours"]), _fmt(fa["per_hour_bleeding_free"]),
                 _fmt(fa["per_hour_non_bleeding"]), str(on["events"]), str(on["missed"]),
                 _fmt(on["median_s"]), _fmt(on["p90_s"])]
    return "| " + " | ".join(cells) + " |"


def _tables(groups: dict[str, dict[str, Any]], models: Sequence[str], ious: Sequence[float],
            col: str) -> list[str]:
    """The main table and the false-alarm/latency table of groups (name -> model -> summary)."""
    lines = [*_header(ious, [col])]
    for g, group in groups.items():
        lines += [_row(m, group[m], [g]) for m in models]
    lines += ["", *_alarm_header([col])]
    for g, group in groups.items():
        lines += [_alarm_row(m, group[m], [g]) for m in models]
    return lines


def _latency_cell(case_model: dict[str, Any]) -> str:
    lat = case_model.get("onset_latencies_s")
    if lat is None:
        return "–"
    found = [x for x in lat if x is not None]
    if not found:
        return f"{len(lat)} missed" if lat else "–"
    text = f"{float(np.median(found)):.2f}"
    return text + (f" ({len(lat) - len(found)} missed)" if len(found) < len(lat) else "")


def _post_processing_line(post: dict[str, Any]) -> str:
    """How the probabilities were read: one point for every model, or each model's own."""
    if "by_model" not in post:
        return f"Post-processing (same for every model): {post}"
    own = "; ".join(f"{name}: {OperatingPoint.from_json(p).describe()}"
                    for name, p in post["by_model"].items())
    return (f"Post-processing at each model's operating point (chosen on validation "
            f"cases, in its model.json): {own}; {post['prediction_hz']:g} predictions/s")


def markdown_report(doc: dict[str, Any], title: str = "Evaluation") -> str:
    """Markdown tables (pooled, per fold, per tag, per case) of an ``amagi evaluate`` result."""
    ious = doc["ious"]
    models = doc["models"]
    lines = [f"# {title}", ""]
    if doc.get("notice"):
        lines += [f"**{doc['notice']}**", ""]
    lines += [f"Data: {doc['data']['description']}", "",
              _post_processing_line(doc["post_processing"]), "",
              "Count and duration errors are the authors' surgical analysis index: mean over "
              "cases of |predicted − true| / true, over the cases with at least one true "
              "event. A bleeding-free case has no such fraction; what a model predicts there "
              "is counted as false alarms instead.", "",
              "False alarms/h, bleeding-free cases: every predicted event on a case without "
              "true events, over the hours of those cases. False alarms/h, non-bleeding time: "
              "predicted events that overlap no true event, over the hours outside true "
              "events, on every case. Onset latency: from a true event's start to the first "
              "positive post-processed decision inside it (0 when an alarm was already on); "
              "an event without one is missed.", "",
              "## Pooled over all held-out cases", "", *_header(ious)]
    lines += [_row(m, doc["pooled"][m]) for m in models]
    lines += ["", *_alarm_header()]
    lines += [_alarm_row(m, doc["pooled"][m]) for m in models]
    lines += _guidance_lines(doc)
    lines += _component_lines(doc)
    lines += _size_lines(doc)
    folds = {str(int(k) + 1): v for k, v in
             sorted(doc["per_fold"].items(), key=lambda kv: int(kv[0]))}
    lines += ["", f"## Per fold ({doc['folds']}-fold, patient-level)", "",
              *_tables(folds, models, ious, "fold")]
    for tag, groups in sorted(doc.get("per_tag", {}).items()):
        lines += ["", f"## Per {tag}", "", *_tables(dict(sorted(groups.items())), models,
                                                     ious, tag)]
    lines += ["", "## Per case", "",
              "| case | patient | fold | true count | true duration (s) | "
              + " | ".join(f"{m} count | {m} duration (s) | {m} false alarms | "
                           f"{m} onset latency (s)" for m in models) + " |",
              "|" + "---|" * (5 + 4 * len(models))]
    for c in doc["cases"]:
        free = " (bleeding-free)" if c["true_count"] == 0 else ""
        cells = [c["case_id"], c["patient_id"], str(c["fold"] + 1), f"{c['true_count']}{free}",
                 f"{c['true_duration_s']:.1f}"]
        for m in models:
            cm = c["models"][m]
            cells += [str(cm["pred_count"]), f"{cm['pred_duration_s']:.1f}",
                      str(cm.get("false_alarms", "–")), _latency_cell(cm)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _seg_frames(doc: dict[str, Any], model: str) -> int:
    """Frames the model's segmentation net sees (1 where the document does not say)."""
    from models import model_cfg
    from models.errors import ModelError

    arch = doc.get("model_info", {}).get(model, {}).get("arch")
    try:
        return model_cfg(arch).seg_frames if arch else 1
    except ModelError:
        return 1


def _guidance_lines(doc: dict[str, Any]) -> list[str]:
    guided = [m for m in doc["models"] if "guidance" in doc["pooled"][m]]
    if not guided:
        return []
    frames = {m: _seg_frames(doc, m) for m in guided}
    if all(k == 1 for k in frames.values()):
        what = ("draws on one frame, the clip's centre. One frame cannot show whether blood "
                "is still flowing.")
    else:
        what = ("draws for the clip's centre frame. A temporal segmenter sees the clip frames "
                "around it too (0.1 s apart; column 'frames seen'), so its map can show "
                "whether blood is still flowing; one frame cannot.")
    rows = []
    for m in guided:
        g = doc["pooled"][m]["guidance"]
        rows.append([m, str(frames[m]), _fmt(g["auroc"]), _fmt(g["ap"]),
                     _fmt(g["area_bleeding"], True, 2), _fmt(g["area_normal"], True, 2)])
    return _section(
        "Segmentation guidance",
        "AMAGI re-weights its clip features with the bleeding map that its frozen "
        f"segmentation net {what} This table scores the map on its own: the "
        "fraction of the frame it marks as bleeding, at each prediction instant, against "
        "the frame labels (AUROC 0.5 = chance). The guidance can only add what this map "
        "tells apart.",
        ["model", "frames seen", "AUROC", "AP", "mean area, bleeding", "mean area, normal"],
        rows)


def _section(title: str, text: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A titled section of ``metrics.md``: a paragraph, then a table."""
    return ["", f"## {title}", "", text, "", "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns), *("| " + " | ".join(r) + " |" for r in rows)]


def _component_lines(doc: dict[str, Any]) -> list[str]:
    probed = [m for m in doc["models"] if "components" in doc["pooled"][m]]
    if not probed:
        return []
    rows = [[m, *(_fmt(c[k]) for k in ("clip_auroc", "probe_auroc", "fused_auroc")),
             _fmt(c["probe_known"], True)]
            for m in probed for c in (doc["pooled"][m]["components"],)]
    return _section(
        "The probe and the clip network",
        "A model with a neighbourhood probe fuses, at each instant, the clip network's "
        "probability with the probe's score at the segmentation map's peaks (their moving "
        "mean). Each part ranked alone against the frame labels (AUROC; the probe's at the "
        "instants it scored), beside the fusion the model reports:",
        ["model", "clip network alone", "probe alone", "fused", "instants the probe scored"],
        rows)


def _size_lines(doc: dict[str, Any]) -> list[str]:
    sized = [m for m in doc["models"] if "by_size" in doc["pooled"][m]]
    if not sized:
        return []
    names = [name for name, _ in SIZE_BINS]
    counts = doc["pooled"][sized[0]]["by_size"]
    lines = ["", "## By visible bleeding size", "",
             "Bleeding instants grouped by the share of the frame their visible active "
             "bleeding covers (the ground truth's active pixels; 'none visible': the event is "
             "on but hidden, e.g. under an instrument). AUROC: those instants against every "
             "non-bleeding instant. Recall: the share of them called bleeding.", "",
             "| model | " + " | ".join(f"{n} ({counts[n]['instants']} instants)"
                                      for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for m in sized:
        b = doc["pooled"][m]["by_size"]
        lines.append(f"| {m} | " + " | ".join(
            f"AUROC {_fmt(b[n]['auroc'])}, recall {_fmt(b[n]['recall'], True, 0)}"
            for n in names) + " |")
        if all("guidance_auroc" in b[n] for n in names):
            lines.append(f"| {m}: map alone | " + " | ".join(
                f"AUROC {_fmt(b[n]['guidance_auroc'])}" for n in names) + " |")
    return lines


def plot_fold(doc: dict[str, Any], fold: int, path: str | os.PathLike[str]) -> Path:
    """Ground truth vs each model: event count and total duration per case (one PNG).

    A plain :class:`~matplotlib.figure.Figure`: no pyplot, so no process-wide backend.
    """
    from matplotlib.figure import Figure

    cases = [c for c in doc["cases"] if c["fold"] == fold]
    models = doc["models"]
    names = [c["case_id"] for c in cases]
    x = np.arange(len(cases))
    width = 0.8 / (1 + len(models))
    fig = Figure(figsize=(max(6, 1.6 * len(cases) + 3), 3.6))
    axes = fig.subplots(1, 2)
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
    return out
