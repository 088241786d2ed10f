"""How well does a trained segmentation net's map tell active bleeding apart, on its own?

For every ``--every``-th frame of each case of ``amagi synth`` data sets (folders with
``labels.json`` and ``video.dcm`` or ``video.mp4``), the segmentation net of ``ARCH`` with
the weights of ``SEG_CHECKPOINT`` (``amagi train seg``'s output) draws its bleeding map as
AMAGI draws it for a clip's centre frame (the same preprocessing and, for a temporal
segmenter, the same neighbouring frames). Two scores per frame: the map's *peak* (its largest
3x3 mean probability) and its *area* (the share of the frame at p >= 0.5). Printed per data
set as JSON: frame AUROC and AP of the peak against the frame labels, the AUROC of the area,
the AUROC on visible bleeding (instants whose active bleeding covers >= 0.5 % of the frame,
against every non-bleeding one), the peak's AUROC per visible-size bin of ``amagi evaluate``
(each bin's bleeding instants against every non-bleeding one), per-case AUROC, and for bleeding-free sets how much the map
marks (share of frames with any pixel at p >= 0.5, mean peak and area).

Run: ``python scripts/model/map_score.py ARCH SEG_CHECKPOINT NAME=DIR [NAME=DIR ...]
[--every 15] [--threads 1] [--input-size N]`` (``--input-size``: the size the segmenter
was trained at, when ``amagi train seg --input-size`` changed it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from amagi_plugin.evaluation.cases import load_cases
from amagi_plugin.evaluation.metrics import auroc, average_precision
from amagi_plugin.evaluation.report import auroc_by_size
from amagi_plugin.inferers import MaskInferer
from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
from dicom_io.video import open_video
from models import build_model, load_checkpoint

VISIBLE = 0.005  # share of the frame: the gate's "visible bleeding"


def frame_scores(analyzer: BleedingAnalyzer, root: Path, every: int
                 ) -> list[tuple[str, int, float, float, float]]:
    """``(case, label, peak, area, visible share)`` for every ``every``-th frame."""
    network = analyzer._segmentation_network()
    if network is None:
        raise ValueError("the model has no segmentation net")
    inferer = MaskInferer(analyzer.input_size, analyzer.options.device, False)
    rows = []
    for case in load_cases(root):
        video = open_video(case.video, fallback_fps=case.fps)
        schedule = analyzer.schedule_for(video)
        targets = list(range(0, schedule.frame_count, every))
        windows = {i: schedule.window(i, analyzer.seg_frames) for i in targets}
        wanted = {f for w in windows.values() for f in w}
        pixels = {i: rgb for i, _t, rgb in video.frames(min(wanted), max(wanted) + 1,
                                                          wanted=wanted)}
        ready = [i for i in targets if all(f in pixels for f in windows[i])]
        for b in range(0, len(ready), 32):
            chunk = ready[b:b + 32]
            x = torch.stack([analyzer._seg_input(windows[i], pixels, analyzer.transform)
                             for i in chunk])
            p = inferer(x, network)
            peak = F.avg_pool2d(p[:, None], 3, 1).flatten(1).max(1).values
            area = (p >= 0.5).float().flatten(1).mean(1)
            for i, pk, ar in zip(chunk, peak.tolist(), area.tolist(), strict=True):
                vis = (float(case.active_fraction[i]) if case.active_fraction is not None
                       else float("nan"))
                rows.append((case.case_id, int(case.frame_labels[i]), pk, ar, vis))
    return rows


def summary(rows: list[tuple[str, int, float, float, float]]) -> dict[str, Any]:
    """The scores of one data set (see the module docstring)."""
    y = np.array([r[1] for r in rows])
    peak = np.array([r[2] for r in rows])
    area = np.array([r[3] for r in rows])
    vis = np.array([r[4] for r in rows])
    out: dict[str, Any] = {"frames": len(rows), "bleeding": int(y.sum()),
                           "mean_peak": float(peak.mean()), "mean_area": float(area.mean()),
                           "marked": float((area > 0).mean())}
    if y.any() and not y.all():
        visible = (y == 0) | (vis >= VISIBLE)
        out.update(auroc_peak=auroc(y, peak), ap_peak=average_precision(y, peak),
                   auroc_area=auroc(y, area), auroc_peak_visible=auroc(y[visible], peak[visible]),
                   mean_area_bleeding=float(area[y == 1].mean()),
                   mean_area_normal=float(area[y == 0].mean()))
        if not np.isnan(vis).any():
            out["by_size_auroc_peak"] = auroc_by_size(y, peak, vis)
        cases = sorted({r[0] for r in rows})
        out["per_case_auroc_peak"] = {
            c: auroc(y[sel], peak[sel]) for c in cases
            for sel in [np.array([r[0] == c for r in rows])]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arch")
    p.add_argument("seg_checkpoint", type=Path)
    p.add_argument("data", nargs="+", help="NAME=DIR: amagi synth data sets")
    p.add_argument("--every", type=int, default=15, help="frames between scored frames")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--input-size", type=int, default=None,
                   help="frames' short side as the net sees them (default: the model's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model(args.arch, **({"input_size": args.input_size} if args.input_size else {}))
    if not model.default_cfg.has_segmentation:
        p.error(f"{args.arch} has no segmentation net")
    load_checkpoint(model, args.seg_checkpoint, kind="segmentation")
    analyzer = BleedingAnalyzer.for_model(model, AnalysisOptions())
    report: dict[str, Any] = {"arch": args.arch, "seg_checkpoint": str(args.seg_checkpoint),
                              "every": args.every, "input_size": analyzer.input_size}
    for item in args.data:
        name, _, folder = item.partition("=")
        if not folder:
            p.error(f"expected NAME=DIR, got {item!r}")
        report[name] = summary(frame_scores(analyzer, Path(folder), args.every))
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
