"""A neighbourhood probe fitted to a model's segmentation map (``amagi train probe`` and the
demo build's probe stage).

The data are an ``amagi synth`` rawframes set (``--formats rawframes``: JPEG frames,
``labels.json`` with a bleeding mask every ``--mask-every`` frames). At each masked frame
(:func:`extract_neighbourhoods`):

- positive: a neighbourhood at the centre of the bleeding mask, and ``extra_pos`` at random
  mask pixels;
- the segmenter's ``candidates`` highest map peaks, found exactly as analysis finds them
  (:class:`~amagi_plugin.probing.NeighbourhoodProbe`): positive when active bleeding lies
  within 2 px, else negative (the map's own false peaks: still blood, red tissue, gauze,
  hard negatives); peaks within ``NEAR`` px of bleeding but not on it are left out;
- ``rand_neg`` random places away from any bleeding (negative);
- ``lookalike_neg`` places on blood that is not active bleeding (negative): the set's
  look-alike masks (``lookalikes/``: still pools, stained instrument jaws, lens blood), one
  place in each of that many cells of a grid chosen at random among those the look-alikes
  reach, so that a small stain is drawn about as often as a large pool
  (:func:`lookalike_places`). The map need not peak there: the probe learns such blood
  whether or not this segmenter mistakes it in training.

With ``after_end_s``, frames at those seconds after each event's end where no bleeding is
active (its frame label 0) are read as masked frames with an empty mask: every map peak
there is a negative, most often the blood the bleeding left, which keeps its fresh look for
seconds but neither grows nor flows (:mod:`amagi_plugin.synth.events`).

Each is the probe's frames around the masked frame at the probe's scale (the model's, or a
whole multiple of it: ``amagi train probe --scale``), ``crop + MARGIN`` pixels square
(training draws a random ``crop`` square of it). The distances above are at the model's scale
(map pixels) and grow with the probe's.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from amagi_plugin.errors import InputError
from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
from amagi_plugin.probing import PairShifts, probe_frames, probe_neighbourhoods
from amagi_plugin.schedule import ClipSchedule
from models.patchnet import PatchNet, PatchNetConfig

log = logging.getLogger(__name__)

__all__ = ["MARGIN", "NEAR", "MaskedCase", "after_end_frames", "extract_neighbourhoods",
           "load_probe_analyzer", "lookalike_places", "mask_at_scale", "near_bleeding",
           "place_label", "probe_analyzer", "source_point"]

MARGIN = 4  # extracted side = crop + MARGIN (room for the random crop)
NEAR = 8  # px: map peaks this close to bleeding but not on it are left out


def probe_analyzer(model: torch.nn.Module, probe: PatchNet,
                   device: str = "cpu") -> BleedingAnalyzer:
    """An analyzer of ``model`` with ``probe`` (untrained, for extraction: only its
    geometry counts): what finds the map's peaks as analysis does."""
    try:
        return BleedingAnalyzer.for_model(model, AnalysisOptions(device=device), probe=probe)
    except ValueError as e:
        raise InputError(str(e)) from None


def _case_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    cases = sorted(d for d in root.iterdir() if (d / "labels.json").is_file())
    if not cases:
        raise InputError(f"{root}: no amagi synth case (folders with labels.json)")
    return cases


def after_end_frames(events: Sequence[dict[str, Any]], frame_labels: Sequence[int],
                     fps: float, after_end_s: Sequence[float]) -> list[int]:
    """The frames ``after_end_s`` seconds after each event's ``end_frame`` (exclusive) that
    lie in the video and where no bleeding is active (``frame_labels`` 0), sorted, once."""
    n = len(frame_labels)
    frames = {int(ev["end_frame"]) - 1 + max(1, round(s * fps))
              for ev in events for s in after_end_s}
    return sorted(f for f in frames if 0 <= f < n and not frame_labels[f])


def _check_after_end(after_end_s: Sequence[float]) -> None:
    if any(not 0 < s < math.inf for s in after_end_s):
        raise ValueError("seconds after an event's end must be finite and > 0, got "
                         f"{list(after_end_s)}")


def _check_lookalike(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"look-alike negatives a frame must be a whole number >= 0, got {k!r}")


def extract_neighbourhoods(analyzer: BleedingAnalyzer, root: Path, *, rand_neg: int = 0,
                           extra_pos: int = 0, after_end_s: Sequence[float] = (),
                           lookalike_neg: int = 0, seed: int = 0,
                           progress: Callable[[int, int, int, int], None] | None = None
                           ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The training neighbourhoods of the rawframes set ``root`` (module docstring):
    ``uint8 (N, frames, side, side, 3)``, labels ``uint8 (N,)`` and a summary;
    ``progress(cases done, cases, neighbourhoods, positives)`` after each case."""
    probe = analyzer.probe
    if probe is None:
        raise ValueError("the analyzer has no probe (use probe_analyzer)")
    cfg = probe.cfg
    rng = np.random.default_rng(seed)
    side = cfg.crop + MARGIN
    scale = probe.geometry.scale  # the probe's frame pixels a map pixel spans
    on_px, near_px = 2 * scale, NEAR * scale
    _check_after_end(after_end_s)
    _check_lookalike(lookalike_neg)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    after = alikes = 0
    cases = _case_dirs(root)
    t0 = time.perf_counter()
    for k, case in enumerate(cases):
        try:
            labels = json.loads((case / "labels.json").read_text())
            n, fps = int(labels["n_frames"]), float(labels["fps"])
            masked = [{"frame": int(m["frame"]), "mask": str(m["mask"]),
                       "lookalike": m.get("lookalike")} for m in labels.get("masks") or []]
            if after_end_s:
                seen = {m["frame"] for m in masked}
                flags = [int(v) for v in labels["frame_labels"]]
                if len(flags) != n:
                    raise ValueError(f"{len(flags)} frame labels for {n} frames")
                extra = [f for f in after_end_frames(labels["events"], flags, fps, after_end_s)
                         if f not in seen]
                masked += [{"frame": f, "mask": None, "lookalike": None} for f in extra]
                after += len(extra)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{case / 'labels.json'}: not an amagi synth labels file "
                             f"({type(e).__name__}: {e})") from None
        if lookalike_neg and any(m["mask"] is not None and not m["lookalike"] for m in masked):
            raise InputError(f"{case / 'labels.json'}: no look-alike masks (lookalikes/); the "
                             "set was made by an amagi synth before they were written: make "
                             "it again for look-alike negatives")
        outside = [m["frame"] for m in masked if not 0 <= m["frame"] < n]
        if outside:
            raise InputError(f"{case / 'labels.json'}: masks at frames {outside[:3]} outside "
                             f"its {n} frames")
        if not (case / "rawframes").is_dir():
            raise InputError(f"{case}: no rawframes/ (amagi synth --formats rawframes)")
        schedule = ClipSchedule(n, fps, clip_len=analyzer.clip_len, prediction_hz=10.0)

        def window(i: int, schedule: ClipSchedule = schedule) -> list[int]:
            return schedule.window(i, analyzer.seg_frames)

        needed = sorted({f for m in masked
                         for f in (*probe_frames(m["frame"], n, fps, cfg), *window(m["frame"]))})
        frames = {}
        for i in needed:
            path = case / "rawframes" / f"img_{i + 1:05d}.jpg"
            if not path.is_file():
                raise InputError(f"{path}: missing (the set's labels.json says {n} frames)")
            frames[i] = probe.geometry.frame(np.asarray(Image.open(path).convert("RGB")))
        found = probe.places(frames, [m["frame"] for m in masked], window)
        pairs: PairShifts = {}  # a stabilising probe's view shifts, found once a case
        for m, places in zip(masked, found, strict=True):
            h, w = frames[m["frame"]].shape[-2:]
            mask = (np.zeros((h, w), bool) if m["mask"] is None  # no bleeding active there
                    else mask_at_scale(case / m["mask"], (h, w)))
            near = near_bleeding(mask, near_px)
            chosen: list[tuple[int, int, int]] = []  # (y, x, label)
            if mask.any():
                my, mx = np.nonzero(mask)
                centre = int(np.argmin((my - my.mean()) ** 2 + (mx - mx.mean()) ** 2))
                picks = [centre, *rng.integers(0, len(my), extra_pos)]
                chosen += [(int(my[j]), int(mx[j]), 1) for j in picks]
            for y, x, _v in places:
                label = place_label(mask, near, y, x, on_px)
                if label is not None:
                    chosen.append((y, x, label))
            for _ in range(rand_neg):
                y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
                if not near[y, x]:
                    chosen.append((y, x, 0))
            if lookalike_neg and m["lookalike"]:
                alike = mask_at_scale(case / m["lookalike"], (h, w)) & ~near
                picked = lookalike_places(alike, lookalike_neg, rng)
                chosen += [(y, x, 0) for y, x in picked]
                alikes += len(picked)
            if chosen:
                crops = probe_neighbourhoods(frames, m["frame"], n, fps, cfg,
                                             [(y, x) for y, x, _ in chosen], side, pairs)
                xs.append(crops.round().clamp(0, 255).to(torch.uint8)
                          .permute(0, 1, 3, 4, 2).numpy())
                ys += [label for _, _, label in chosen]
        if progress:
            progress(k + 1, len(cases), len(ys), int(sum(ys)))
    if not ys:
        raise InputError(f"{root}: no masked frame to extract neighbourhoods from")
    summary = {"data": str(root), "cases": len(cases), "neighbourhoods": len(ys),
               "positive": int(sum(ys)), "candidates": cfg.candidates, "rand_neg": rand_neg,
               "extra_pos": extra_pos, "after_end_s": list(after_end_s),
               "after_end_frames": after, "lookalike_neg": lookalike_neg,
               "lookalike_negatives": alikes, "seed": seed,
               "seconds": round(time.perf_counter() - t0, 1)}
    log.info("extracted %d neighbourhoods (%d positive) from %d cases", len(ys), sum(ys),
             len(cases))
    return np.concatenate(xs), np.array(ys, np.uint8), summary


def lookalike_places(mask: np.ndarray, k: int, rng: np.random.Generator,
                     ) -> list[tuple[int, int]]:
    """Up to ``k`` places on ``mask``: the frame cut into a grid of cells (an eighth of its
    short side, at least 8 px), ``k`` cells drawn without replacement among those the mask
    reaches, one of the mask's pixels drawn in each. A stain of a few cells is drawn about as
    often as a pool of many."""
    if k <= 0 or not mask.any():
        return []
    cell = max(8, min(mask.shape) // 8)
    ys, xs = np.nonzero(mask)
    cells = (ys // cell) * (mask.shape[1] // cell + 1) + xs // cell
    occupied = np.unique(cells)
    out = []
    for c in rng.choice(occupied, size=min(k, len(occupied)), replace=False):
        j = rng.choice(np.flatnonzero(cells == c))
        out.append((int(ys[j]), int(xs[j])))
    return out


def near_bleeding(mask: np.ndarray, near_px: int) -> np.ndarray:
    """The pixels within ``near_px`` (a square) of the bleeding ``mask``."""
    if not mask.any():
        return np.zeros_like(mask)
    return F.max_pool2d(torch.as_tensor(mask, dtype=torch.float32)[None, None],
                        2 * near_px + 1, 1, near_px)[0, 0].numpy() > 0


def place_label(mask: np.ndarray, near: np.ndarray, y: int, x: int, on_px: int) -> int | None:
    """A map peak's training label (module docstring): 1 with bleeding within ``on_px``, 0
    away from it, None (left out) ``near`` it but not on it."""
    on = bool(mask[max(0, y - on_px):y + on_px + 1, max(0, x - on_px):x + on_px + 1].any())
    return int(on) if on or not near[y, x] else None


@dataclass(frozen=True)
class MaskedCase:
    """A case folder's masked frames opened for analysis by ``analyzer``: its ``labels.json``
    (``masks``: the masked frames), its video (``video.dcm``, or ``video.mp4`` as
    ``scripts/model/other_renderer.py --masks`` writes it) and the segmenter's frames around
    a frame (:meth:`window`)."""

    labels: dict[str, Any]
    masked: list[dict[str, Any]]
    video: Any
    schedule: ClipSchedule
    seg_frames: int

    @classmethod
    def open(cls, analyzer: BleedingAnalyzer, case: Path) -> MaskedCase | None:
        """``case`` opened, or None when it has no masked frame."""
        from dicom_io.video import open_video

        labels = json.loads((case / "labels.json").read_text())
        masked = list(labels.get("masks") or [])
        if not masked:
            return None
        video = open_video(case / "video.dcm" if (case / "video.dcm").exists() else
                           case / "video.mp4")
        return cls(labels, masked, video, analyzer.schedule_for(video), analyzer.seg_frames)

    def window(self, i: int) -> list[int]:
        return self.schedule.window(i, self.seg_frames)


def load_probe_analyzer(model_dir: Path, threads: int | None = None
                        ) -> BleedingAnalyzer | None:
    """The analyzer of the last model in ``model_dir``'s ``model.json`` that has a probe, at
    the default options, torch on ``threads`` threads when given; None when none has one."""
    from amagi_plugin.modelspec import model_dir_specs
    from amagi_plugin.runtime import load_analyzer

    if threads:
        torch.set_num_threads(threads)
    specs = [s for s in model_dir_specs(model_dir)[0] if s.probe]
    return load_analyzer(specs[-1], AnalysisOptions()) if specs else None


def source_point(mask: np.ndarray) -> tuple[int, int]:
    """The mask pixel nearest the mask's centroid (on the bleeding even when it is a ring
    or a bent stream)."""
    ys, xs = np.nonzero(mask)
    j = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[j]), int(xs[j])


def mask_at_scale(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A saved bleeding mask, resized (nearest) to the frames' scale ``shape``."""
    if not path.is_file():
        raise InputError(f"{path}: mask file missing")
    try:
        img = Image.open(path)
        if img.size != (shape[1], shape[0]):
            img = img.resize((shape[1], shape[0]), Image.NEAREST)
        return np.asarray(img) > 0
    except OSError as e:  # PIL's unreadable or truncated image
        raise InputError(f"{path}: not a readable mask image ({e})") from None


def fit_probe(data: Sequence[Path], arch: str, seg_checkpoint: Path, *,
              epochs: int | None = None,
              candidates: int | None = None, step_s: float | None = None,
              frames: int | None = None, align: bool = False, stabilise: bool = False,
              pool: str = "avg",
              norm: str = "fixed", rand_neg: int = 0, extra_pos: int = 0,
              after_end_s: Sequence[float] = (), lookalike_neg: int = 0,
              look_jitter: float | None = None, reversed_negatives: float = 0.0,
              sliding_negatives: float = 0.0, view_negatives: float = 0.0,
              hinged_negatives: float = 0.0, seed: int = 0,
              threads: int | None = None,
              device: str = "cpu", input_size: int | None = None, scale: int = 1,
              precision: str = "fp32",
              progress: Callable[[str], None] | None = None) -> tuple[PatchNet, dict[str, Any]]:
    """A probe trained on the rawframes sets ``data`` (pooled) at the map peaks of ``arch``'s
    segmentation net loaded from ``seg_checkpoint`` (an ``amagi train seg`` file; the model
    built at ``input_size`` when given, as its ``model.json`` build says), reading its
    neighbourhoods at ``scale`` times the model's scale, and the record to keep with it
    (``meta`` of its file). A setting left ``None`` takes its default from
    :class:`~models.training.patchnet.PatchTrainConfig` or :class:`PatchNetConfig`."""
    from models import build_model, list_models, load_checkpoint
    from models.errors import CheckpointError, ModelConfigError, ModelError
    from models.training.patchnet import PatchTrainConfig, train_patchnet

    if arch not in list_models():
        raise InputError(f"unknown architecture {arch!r}")
    try:
        _check_after_end(after_end_s)
        _check_lookalike(lookalike_neg)
    except ValueError as e:
        raise InputError(str(e)) from None
    if threads:
        torch.set_num_threads(threads)
    build = {} if input_size is None else {"input_size": input_size}
    model = build_model(arch, **build)
    if not model.default_cfg.has_segmentation:
        raise InputError(f"{arch} has no segmentation net: a probe looks where its map peaks")
    try:
        load_checkpoint(model, seg_checkpoint, kind="segmentation")
    except CheckpointError as e:
        raise InputError(str(e)) from None
    shape = {k: v for k, v in (("candidates", candidates), ("step_s", step_s), ("frames", frames))
             if v is not None}
    if not (isinstance(scale, int) and scale >= 1):
        raise InputError(f"the probe's scale must be a whole number >= 1, got {scale!r}")
    try:
        cfg = PatchNetConfig(short_side=model.default_cfg.input_size * scale, align=align,
                             stabilise=stabilise,
                             pool=pool, norm=norm, **shape)
    except ModelConfigError as e:
        raise InputError(str(e)) from None
    given = {k: v for k, v in (("epochs", epochs), ("look_jitter", look_jitter))
             if v is not None}
    try:  # the settings before the data: a typo costs no reading
        tcfg = PatchTrainConfig(seed=seed, architecture=cfg, reversed_negatives=reversed_negatives,
                                sliding_negatives=sliding_negatives,
                                view_negatives=view_negatives,
                                hinged_negatives=hinged_negatives, precision=precision, **given)
    except ModelError as e:
        raise InputError(str(e)) from None
    analyzer = probe_analyzer(model, PatchNet(cfg), device)

    xs, ys, summaries = [], [], []
    for k, root in enumerate(data):
        def said(done: int, total: int, n: int, pos: int, root: Path = root) -> None:
            if progress:
                progress(f"extract {root.name}: {done}/{total} cases, {n} neighbourhoods, "
                         f"{pos} positive")

        x, y, summary = extract_neighbourhoods(
            analyzer, root, rand_neg=rand_neg, extra_pos=extra_pos, after_end_s=after_end_s,
            lookalike_neg=lookalike_neg, seed=seed + k, progress=said)
        xs.append(x)
        ys.append(y)
        summaries.append(summary)
    x, y = np.concatenate(xs), np.concatenate(ys)
    summary = {"data": [str(p) for p in data], "sets": summaries,
               "cases": sum(s["cases"] for s in summaries), "neighbourhoods": len(y),
               "positive": int(y.sum()),
               "seconds": round(sum(s["seconds"] for s in summaries), 1)}

    def epoch_said(epoch: int, total: int, loss: float) -> None:
        if progress:
            progress(f"train: epoch {epoch}/{total}, loss {loss:.4f}")

    try:
        result = train_patchnet(x, y, tcfg, epoch_said, device=device)
    except ModelError as e:
        raise InputError(f"{', '.join(map(str, data))}: {e}") from None
    meta = {"seg_arch": arch, "build": build, "seg_checkpoint": str(seg_checkpoint),
            "extraction": summary,
            "epochs": tcfg.epochs, "look_jitter": tcfg.look_jitter, "lr": tcfg.lr,
            "reversed_negatives": tcfg.reversed_negatives,
            "sliding_negatives": tcfg.sliding_negatives,
            "view_negatives": tcfg.view_negatives,
            "hinged_negatives": tcfg.hinged_negatives,
            "after_end_s": list(after_end_s), "lookalike_neg": lookalike_neg,
            "batch": tcfg.batch, "seed": seed, "device": str(device),
            "precision": tcfg.precision,
            "losses": [round(v, 4) for v in result.losses],
            "seconds": round(summary["seconds"] + result.seconds, 1)}
    return result.net, meta
