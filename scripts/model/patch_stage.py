"""How well does a neighbourhood probe rank bleeding frames, by visible size? Research scores
of a probe trained with ``amagi train probe`` (:mod:`amagi_plugin.probing`).

Runs the probe on every ``--every``-th frame of ``amagi synth`` video sets (folders with
``labels.json`` and ``video.dcm``/``video.mp4``). With ``--seg ARCH SEG_CHECKPOINT`` it
looks where that segmenter's map peaks, as analysis does (the probe's ``candidates`` peaks;
the frame's score is its highest); without, it runs densely over every window of the frame
at the model's scale (session 25: worse, the probe's false positives anywhere in the frame
outweigh what it finds). Printed as JSON per set: frame AUROC and AP against the frame
labels and per visible-size bin of ``amagi evaluate``, raw and after a moving mean of
``--smooth-s`` seconds over the frames of a case (with ``--seg``, the same for the map's
highest peak alone); for bleeding-free sets the share of frames over 0.5; and with
``--still NAME``, the AUROC of the first set's bleeding frames against NAME's frames
(bleeding against still blood), smoothed.

Run::

    python scripts/model/patch_stage.py score PROBE.pth NAME=DIR [NAME=DIR ...] \
        [--still NAME] [--seg ARCH SEG_CHECKPOINT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amagi_plugin.evaluation.cases import load_cases
from amagi_plugin.evaluation.metrics import auroc, average_precision
from amagi_plugin.evaluation.report import auroc_by_size
from amagi_plugin.pipeline import BleedingAnalyzer
from amagi_plugin.probe_training import probe_analyzer
from amagi_plugin.probing import MapGeometry, probe_frames
from amagi_plugin.probing import moving_mean as moving_mean_1d
from amagi_plugin.schedule import ClipSchedule
from dicom_io.video import open_video
from models import build_model, load_checkpoint
from models.patchnet import PatchNet, load_patchnet


def segmenter_analyzer(net: PatchNet, arch: str, checkpoint: Path) -> BleedingAnalyzer:
    """An analyzer running ``net`` at the map peaks of ``arch``'s segmenter loaded from
    ``checkpoint``."""
    model = build_model(arch, input_size=net.cfg.short_side)
    load_checkpoint(model, checkpoint, kind="segmentation")
    return probe_analyzer(model, net)


def frame_scores(net: PatchNet, root: Path, every: int,
                 analyzer: BleedingAnalyzer | None = None) -> dict[str, np.ndarray]:
    """Per scored frame: case, label, visible share and the probe's score (at the map peaks
    of ``analyzer``'s segmenter, else its highest window of the frame); with ``analyzer``
    also the map's highest peak; and the set's frame rate (its last case's)."""
    stage = None if analyzer is None else analyzer.probe
    cases, labels, visible, scores, peaks = [], [], [], [], []
    geometry = MapGeometry(net.cfg.short_side, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    fps = 30.0
    with torch.inference_mode():
        for case in load_cases(root):
            video = open_video(case.video, fallback_fps=case.fps)
            n, fps = video.frame_count, video.fps
            centres = list(range(0, n, every))
            frames = {i: geometry.frame(rgb) for i, _t, rgb in video.frames(0, n)}
            if stage is not None:
                schedule = ClipSchedule(n, fps, clip_len=analyzer.clip_len, prediction_hz=10.0)

                def window(i: int, s: ClipSchedule = schedule) -> list[int]:
                    return s.window(i, analyzer.seg_frames)

                found = stage.places(frames, centres, window)  # the map once per frame
                scores += list(stage.scores_at(frames, centres, found, n, fps))
                peaks += [p[0][2] if p else 0.0 for p in found]
            else:
                for i in centres:
                    stack = torch.stack([frames[f] for f in probe_frames(i, n, fps, net.cfg)])
                    scores.append(float(torch.sigmoid(net.dense(stack).max())))
            cases += [case.case_id] * len(centres)
            labels += [int(case.frame_labels[i]) for i in centres]
            visible += [float(case.active_fraction[i]) if case.active_fraction is not None
                        else float("nan") for i in centres]
    out = {"case": np.array(cases), "y": np.array(labels, int), "visible": np.array(visible),
           "score": np.array(scores, float), "fps": np.array(fps)}
    if stage is not None:
        out["map_peak"] = np.array(peaks, float)
    return out


def moving_mean(scores: np.ndarray, cases: np.ndarray, width: int) -> np.ndarray:
    """Each case's scores averaged over ``width`` consecutive frames (edges repeated)."""
    out = scores.astype(float).copy()
    for c in np.unique(cases):
        sel = cases == c
        out[sel] = moving_mean_1d(scores[sel], width)
    return out


def summary(d: dict[str, np.ndarray], score: np.ndarray) -> dict[str, Any]:
    """One set's figures for one (smoothed) score."""
    y = d["y"]
    out: dict[str, Any] = {"frames": len(y), "bleeding": int(y.sum()),
                           "share_at_0.5": float((score >= 0.5).mean()) if len(y) else None}
    if y.any() and not y.all():
        out.update(auroc=auroc(y, score), ap=average_precision(y, score))
        if not np.isnan(d["visible"]).any():
            out["by_size_auroc"] = auroc_by_size(y, score, d["visible"])
    return out


def score(probe_path: Path, sets: dict[str, Path], every: int = 6, smooth_s: float = 1.0,
          still: str | None = None, seg: tuple[str, Path] | None = None) -> dict[str, Any]:
    """The report of the module docstring."""
    net = load_patchnet(probe_path)
    analyzer = None if seg is None else segmenter_analyzer(net, seg[0], seg[1])
    raw = {name: frame_scores(net, root, every, analyzer) for name, root in sets.items()}
    report: dict[str, Any] = {"every": every, "smooth_s": smooth_s,
                              "where": "dense" if analyzer is None
                              else f"{net.cfg.candidates} map peaks"}
    smoothed = {}
    for name, d in raw.items():
        width = max(1, round(smooth_s * float(d["fps"]) / every))
        smoothed[name] = moving_mean(d["score"], d["case"], width)
        report[name] = {"raw": summary(d, d["score"]), "smoothed": summary(d, smoothed[name])}
        if "map_peak" in d:
            report[name]["map_peak"] = summary(d, moving_mean(d["map_peak"], d["case"], width))
    if still is not None:
        if still not in raw:
            raise SystemExit(f"--still {still}: not one of the sets")
        first = next(iter(raw))
        pos = smoothed[first][raw[first]["y"] == 1]
        neg = smoothed[still]
        report[f"{first}_bleeding_vs_{still}_auroc"] = auroc(
            np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score a probe on video sets")
    s.add_argument("probe", type=Path, help="an 'amagi train probe' file")
    s.add_argument("sets", nargs="+", help="NAME=DIR: amagi synth video sets")
    s.add_argument("--every", type=int, default=6)
    s.add_argument("--smooth-s", type=float, default=1.0)
    s.add_argument("--still", default=None, help="a bleeding-free set's NAME")
    s.add_argument("--seg", nargs=2, metavar=("ARCH", "SEG_CHECKPOINT"), default=None,
                   help="score the probe at this segmenter's map peaks (default: every window)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = {}
    for item in args.sets:
        name, _, folder = item.partition("=")
        if not folder:
            p.error(f"expected NAME=DIR, got {item!r}")
        sets[name] = Path(folder)
    seg = (args.seg[0], Path(args.seg[1])) if args.seg else None
    json.dump(score(args.probe, sets, args.every, args.smooth_s, args.still, seg),
              sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
