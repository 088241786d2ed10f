"""Files an analysis leaves next to its DICOM results: summary.json, predictions CSV, timeline PNG."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from amagi_plugin.modelspec import DEMO_NOTICE, ModelSpec
from amagi_plugin.pipeline import AnalysisResult


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
        "model": {"name": spec.name, "version": spec.version, "weights": spec.weights},
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


def write_timeline_png(path: Path, result: AnalysisResult, spec: ModelSpec, title: str = "",
                       threshold: float = 0.5) -> None:
    """Bleeding probability over time with the detected events shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = result.timeline
    minutes = result.schedule.duration_s >= 180
    scale = 60.0 if minutes else 1.0
    fig, ax = plt.subplots(figsize=(12, 3.2), dpi=100)
    try:
        for e in result.events:
            ax.axvspan(e.start_s / scale, e.end_s / scale, color="#d62728", alpha=0.25, lw=0)
        ax.plot(tl.times_s / scale, result.probabilities, color="#1f3b73", lw=0.9,
                label="bleeding probability")
        ax.axhline(threshold, color="grey", ls="--", lw=0.8, label=f"threshold {threshold:g}")
        ax.set_xlim(0, result.schedule.duration_s / scale)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("time (min)" if minutes else "time (s)")
        ax.set_ylabel("P(active bleeding)")
        idx = result.index
        head = (f"{idx.event_count} bleeding event(s), {idx.total_duration_s:.1f} s in total"
                + (f" — {title}" if title else ""))
        ax.set_title(head, loc="left", fontsize=10)
        note = spec.label if spec.weights != "demo-synthetic" else f"{spec.name}: {DEMO_NOTICE}"
        ax.text(1.0, 1.02, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                color="#a00" if spec.weights == "demo-synthetic" else "black")
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)

