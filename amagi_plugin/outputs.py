"""Files an analysis leaves next to its DICOM results: summary.json, predictions CSV, timeline PNG."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amagi_plugin.modelspec import ModelSpec
from amagi_plugin.pipeline import AnalysisResult
from amagi_plugin.report import NOTICE_COLOUR, draw_timeline
from dicom_io.results import DEMO_DISCLAIMER, WeightsKind

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary(result: AnalysisResult, spec: ModelSpec, fps: float,
            sop_instance_uid: str | None, study_instance_uid: str | None) -> dict[str, Any]:
    """The ``summary.json`` document (exactly the keys ``amagi process`` documents)."""
    return {
        "sop_instance_uid": sop_instance_uid,
        "study_instance_uid": study_instance_uid,
        "model": {"name": spec.name, "version": spec.version, "weights": spec.weights.value},
        "fps": round(float(fps), 6),
        "duration_s": round(result.schedule.duration_s, 3),
        "prediction_hz": round(result.timeline.rate_hz, 6),
        "events": [{"start_s": e.start_s, "end_s": e.end_s, "duration_s": e.duration_s,
                    "peak_probability": e.peak_probability, "key_frame": e.key_frame}
                   for e in result.events],
        "event_count": result.index.event_count,
        "total_bleeding_s": result.index.total_duration_s,
    }


def write_summary(path: Path, doc: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())


def write_predictions_csv(path: Path, result: AnalysisResult) -> None:
    """One row per prediction: time, frame (1-based), probability, post-processed decision."""
    rows = [["time_s", "frame", "bleeding_probability", "bleeding"]]
    tl = result.timeline
    for t, f, p, d in zip(tl.times_s, tl.frames, result.probabilities, result.decisions, strict=True):
        rows.append([f"{t:.3f}", str(int(f) + 1), f"{p:.6f}", str(int(d))])
    with tempfile.SpooledTemporaryFile(mode="w+", newline="") as fh:
        csv.writer(fh).writerows(rows)
        fh.seek(0)
        atomic_write(path, fh.read().encode())


def timeline_figure(result: AnalysisResult, spec: ModelSpec, title: str = "",
                    threshold: float = 0.5, hold_threshold: float | None = None) -> Figure:
    """Bleeding probability over time with the detected events shaded and numbered.

    The headline (count, total, ``title``), the model line (with the demo notice for a
    demo model) and the legend sit in their own places above the plot: they never overlap,
    whatever the length of the title.
    """
    from matplotlib.figure import Figure

    idx = result.index
    head = (f"{idx.event_count} bleeding event(s), {idx.total_duration_s:.1f} s in total"
            + (f" - {title}" if title else ""))
    demo = spec.weights is WeightsKind.DEMO_SYNTHETIC
    note = f"{spec.name} {spec.version}: {DEMO_DISCLAIMER}" if demo else spec.label
    fig = Figure(figsize=(12, 3.6), dpi=100)
    fig.text(0.01, 0.975, head, ha="left", va="top", fontsize=10)
    fig.text(0.01, 0.905, note, ha="left", va="top", fontsize=8.5,
             color=NOTICE_COLOUR if demo else "black", weight="bold" if demo else "normal")
    ax = fig.add_axes((0.055, 0.15, 0.935, 0.65))
    draw_timeline(ax, result.timeline.times_s, result.probabilities,
                  sorted(result.events, key=lambda e: e.start_s), result.schedule.duration_s,
                  threshold, hold_threshold=hold_threshold)
    # the legend goes below the plot, right-aligned with the time-axis label's line
    fig.legend(*ax.get_legend_handles_labels(), loc="lower right", bbox_to_anchor=(0.99, 0.0),
               ncol=3, fontsize=8, frameon=False)
    return fig


def write_timeline_png(path: Path, result: AnalysisResult, spec: ModelSpec, title: str = "",
                       threshold: float = 0.5, hold_threshold: float | None = None) -> None:
    """Write :func:`timeline_figure` as a PNG (1200 x 360 pixels), atomically."""
    buffer = io.BytesIO()
    timeline_figure(result, spec, title, threshold, hold_threshold).savefig(buffer,
                                                                             format="png")
    atomic_write(path, buffer.getvalue())
