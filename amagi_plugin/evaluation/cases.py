"""Ground truth of evaluation cases and running the analysis pipeline on them.

An evaluation data set is a folder written by ``amagi synth`` (``cases.json`` plus one
folder per case with ``labels.json`` and ``video.dcm`` or ``video.mp4``), or any folder of
case folders laid out the same way (``labels.json`` needs ``fps``, ``frame_labels`` and
``events`` with ``start_s``/``end_s``; ``patient_id`` defaults to the folder name; an
optional top-level ``tags`` object of string values, e.g. ``{"look": "palette-B"}``, lets the
evaluation pool the cases per tag value; optional ``active_pixels`` (visible active-bleeding
pixels per frame) with ``width`` and ``height``, as ``amagi synth`` writes them, lets it
score the frames by how large the bleeding is).
Every model goes through the same :class:`~amagi_plugin.pipeline.BleedingAnalyzer`
post-processing (threshold, smoothing) as ``amagi process``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from amagi_plugin.errors import InputError

log = logging.getLogger(__name__)

VIDEO_NAMES = ("video.dcm", "video.mp4")


@dataclass(frozen=True)
class TruthCase:
    """One evaluation case: its video and ground truth."""

    case_id: str
    patient_id: str
    video: Path
    fps: float
    frame_labels: np.ndarray  # uint8 (n_frames,)
    events: list[tuple[float, float]]  # seconds, [start, end)
    # Grouping tags from labels.json (e.g. {"look": "palette-B"}); empty when absent.
    tags: dict[str, str] = field(default_factory=dict)
    # Share of the frame that visible active bleeding covers, per frame (labels.json's
    # active_pixels over width x height); None when the ground truth does not say.
    active_fraction: np.ndarray | None = None

    @property
    def duration_s(self) -> float:
        """Length of the case in seconds: its number of frame labels over ``fps``."""
        return len(self.frame_labels) / self.fps

    @property
    def bleeding_free(self) -> bool:
        """``True`` when the case has no true event."""
        return not self.events


@dataclass
class CasePrediction:
    """One model's output on one case (prediction instants and post-processed events)."""

    case_id: str
    model: str
    times_s: np.ndarray
    frames: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    decisions: np.ndarray
    events: list[tuple[float, float]]
    seconds: float
    # Bleeding area of the segmentation net's map on each prediction's frame (AMAGI only).
    guidance: np.ndarray | None = None
    # A model with a probe: what its probabilities were fused from at each prediction
    # (amagi_plugin.probing.fuse): the clip network's probability and the probe's score
    # (nan where it has none), so a fusion can be re-read without running the networks
    clip: np.ndarray | None = None
    probe: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        extra = {name: _rounded(values) for name, values in
                 (("guidance", self.guidance), ("clip", self.clip), ("probe", self.probe))
                 if values is not None}
        return {"case_id": self.case_id, "model": self.model,
                "frames": self.frames.tolist(),
                "times_s": [round(float(t), 6) for t in self.times_s],
                "labels": self.labels.tolist(),
                "probabilities": [round(float(p), 6) for p in self.probabilities],
                "decisions": self.decisions.astype(int).tolist(),
                "events": [[round(a, 3), round(b, 3)] for a, b in self.events],
                "seconds": round(self.seconds, 2), **extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], fps: float | None = None) -> CasePrediction:
        """Back from :meth:`to_dict` (a ``predictions.json`` entry). A document written
        before it recorded ``times_s`` gives each instant its frame's time at ``fps``."""
        frames = np.asarray(d["frames"], dtype=np.int64)
        if "times_s" in d:
            times = np.asarray(d["times_s"], dtype=np.float64)
        elif fps:
            times = frames / float(fps)
        else:
            raise ValueError("this prediction records no times_s: pass the video's fps")
        pred = cls(str(d["case_id"]), str(d["model"]), times, frames,
                   np.asarray(d["labels"], dtype=np.uint8),
                   np.asarray(d["probabilities"], dtype=np.float64),
                   np.asarray(d["decisions"], dtype=bool),
                   [(float(a), float(b)) for a, b in d["events"]], float(d["seconds"]),
                   *(_unrounded(d.get(name)) for name in ("guidance", "clip", "probe")))
        for name in ("clip", "probe"):
            values = getattr(pred, name)
            if values is not None and values.shape != pred.probabilities.shape:
                raise ValueError(f"{pred.case_id}: {len(values)} {name} values for "
                                 f"{len(pred.probabilities)} predictions")
        return pred


def _rounded(values: np.ndarray) -> list[float | None]:
    """Per-prediction values as ``predictions.json`` records them (nan as null)."""
    return [None if np.isnan(v) else round(float(v), 6) for v in values]


def _unrounded(values: Sequence[float | None] | None) -> np.ndarray | None:
    """Back from :func:`_rounded` (``None``: not recorded)."""
    return None if values is None else np.asarray(
        [np.nan if v is None else v for v in values], dtype=np.float64)


def read_predictions(path: Path, model: str | None = None) -> tuple[list[CasePrediction], str]:
    """One model's entries of an ``amagi evaluate`` ``predictions.json`` and that model's
    label. ``model`` may be left out when the file holds one model only. A file that is not
    such a document, or names no such model, is an :class:`InputError` naming it."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(text)
        labels = sorted({str(d["model"]) for d in doc})
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"{path}: not an 'amagi evaluate' predictions.json ({e})") from None
    if model is None:
        if len(labels) != 1:
            raise InputError(f"{path} holds the models {', '.join(labels) or 'none'}: choose "
                             "one with --model")
        model = labels[0]
    if model not in labels:
        raise InputError(f"{path} holds no model {model!r} (it holds {', '.join(labels)})")
    try:
        return [CasePrediction.from_dict(d) for d in doc if str(d["model"]) == model], model
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"{path}: malformed prediction entry ({e})") from None


def synth_index(root: Path) -> tuple[dict[str, Any], str | None]:
    """The ``cases.json`` of an ``amagi synth`` data set (``{}`` when absent) and the name of
    its scene-range preset (``None`` when absent or custom ranges)."""
    index = root / "cases.json"
    meta = json.loads(index.read_text()) if index.is_file() else {}
    ranges = meta.get("ranges")
    return meta, ranges if isinstance(ranges, str) else None


def load_cases(root: Path) -> list[TruthCase]:
    """Every case folder under ``root`` (order of ``cases.json`` when present).

    Raises
    ------
    InputError
        No case, missing video, or a ``labels.json`` without the needed keys.
    """
    if not root.is_dir():
        raise InputError(f"evaluation data folder not found: {root}")
    index = root / "cases.json"
    if index.is_file():
        dirs = [root / c["dir"] for c in json.loads(index.read_text())["cases"]]
    else:
        dirs = sorted(p.parent for p in root.glob("*/labels.json"))
    cases = []
    for d in dirs:
        try:
            doc = json.loads((d / "labels.json").read_text())
            fps = float(doc["fps"])
            labels = np.asarray(doc["frame_labels"], dtype=np.uint8)
            events = [(float(e["start_s"]), float(e["end_s"])) for e in doc["events"]]
            if fps <= 0:
                raise ValueError(f"fps must be > 0, got {fps}")
            tags = _tags(doc.get("tags"))
            active = _active_fraction(doc, len(labels))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{d}/labels.json is not a usable ground truth: {e}") from None
        video = next((d / n for n in VIDEO_NAMES if (d / n).is_file()), None)
        if video is None:
            raise InputError(f"{d} has no video ({' or '.join(VIDEO_NAMES)})")
        cases.append(TruthCase(str(doc.get("case_id", d.name)),
                               str(doc.get("patient_id", d.name)), video, fps, labels, events,
                               tags, active))
    if not cases:
        raise InputError(f"no evaluation case (*/labels.json) under {root}")
    return cases


def _active_fraction(doc: Mapping[str, Any], n_frames: int) -> np.ndarray | None:
    """labels.json's ``active_pixels`` over the frame area, or ``None`` when absent."""
    if doc.get("active_pixels") is None:
        return None
    pixels = np.asarray(doc["active_pixels"], dtype=np.float64)
    area = int(doc["width"]) * int(doc["height"])
    if pixels.shape != (n_frames,):
        raise ValueError(f"active_pixels has {pixels.size} values for {n_frames} frame labels")
    if area <= 0 or (pixels < 0).any() or (pixels > area).any():
        raise ValueError(f"active_pixels must lie in [0, width x height = {area}]")
    return pixels / area


def _tags(value: Any) -> dict[str, str]:
    """The ``tags`` object of a labels.json: absent → ``{}``, else a dict of str → str."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"tags must be an object of strings, got {type(value).__name__}")
    bad = {k: v for k, v in value.items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"tags must map names to strings, got {bad!r}")
    return dict(value)


def predict_case(analyzer, case: TruthCase, model_name: str,
                 progress: Callable[[int, int], None] | None = None) -> CasePrediction:
    """Run ``analyzer`` (a :class:`BleedingAnalyzer`) on ``case`` and pair it with the truth.

    For a model with segmentation, the segmentation net's bleeding area on each prediction's
    frame is recorded too (after ``seconds`` is taken, so timings stay the pipeline's).
    """
    from dicom_io.video import open_video

    t0 = time.perf_counter()
    video = open_video(case.video, fallback_fps=case.fps)
    result = analyzer.analyze(video, progress=progress)
    frames = np.asarray(result.timeline.frames, dtype=np.int64)
    if len(case.frame_labels) < video.frame_count:
        raise InputError(f"{case.case_id}: {len(case.frame_labels)} frame labels for "
                         f"{video.frame_count} frames")
    labels = case.frame_labels[frames]
    events = [(float(e.start_s), float(e.end_s)) for e in result.events]
    seconds = time.perf_counter() - t0
    log.info("%s on %s: %d predictions, %d events (truth %d) in %.1f s", model_name,
             case.case_id, len(frames), len(events), len(case.events), seconds)
    guidance = analyzer.guidance_areas(video, frames)
    probed = result.probe_scores is not None
    return CasePrediction(case.case_id, model_name, np.asarray(result.timeline.times_s), frames,
                          labels, np.asarray(result.probabilities), np.asarray(result.decisions),
                          events, seconds, guidance,
                          np.asarray(result.clip_probabilities) if probed else None,
                          np.asarray(result.probe_scores) if probed else None)
