"""Does the segmentation map itself grow where blood flows, whoever drew the video?

The bundled probe reads pixels and has learned mainly the flicker of ``amagi synth``'s active
blood (a heartbeat, a travelling ripple; session 50 of
``models/weights/demo/heldout-looks/README.md``); another renderer's welling blood, which
does not flicker, it hardly recognises. Growth, blood covering more tissue from one moment to
the next, is the cue no renderer can leave out. This measures it as the model already sees
it: at each masked frame ``t`` of ``amagi synth`` sets (or ``scripts/model/other_renderer.py
--masks`` sets), the model's segmentation net maps each of ``--frames`` frames ``--step-s``
apart around ``t`` (as analysis maps an instant), and in a ``--side`` × ``--side`` square
(map pixels) the map's mass is compared early and late in that span:

- ``net``: the late frames' mass minus the early frames' (map pixels; a third of the frames
  each), blood gained in the square;
- ``rel``: ``net`` over the square's largest mass in the span (+1), growth as a share;
- ``new``: the mass that appears (the late mean above the early mean, summed), blood
  arriving whatever leaves.

Each is read at the bleeding's source (the mask pixel nearest its centroid) on frames with
active bleeding, and at the map's ``candidates`` highest peaks at ``t`` (the places the
probe is given; an instant's score is the highest over its places) on every masked frame.
Printed per set: the frames, the share whose source lies inside the map (the centre crop),
the mean at the source, and the frame AUROC of each statistic at the places (active frames
against frames where nothing is active, within the set and, with ``--negatives``, against
those sets' frames too), and at the source against the places of frames with nothing active.

Run: ``python scripts/model/map_growth.py NAME=DIR [NAME=DIR ...] [--negatives NAME ...]
[--model-dir DIR] [--frames 8] [--step-s 0.2] [--side 16] [--threads 1] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amagi_plugin.evaluation.metrics import auroc
from amagi_plugin.modelspec import DEMO_DIR
from amagi_plugin.probe_training import MaskedCase, load_probe_analyzer, mask_at_scale, source_point
from amagi_plugin.probing import (
    STABILISE_SHARE,
    map_peaks,
    neighbourhoods,
    probe_frames,
    view_shifts,
)
from models.patchnet import PatchNetConfig
from models.training.augment import short_side_shape

sys.path.insert(0, str(Path(__file__).parent))
from blood_map import blood_maps, load_blood_net

STATS = ("net", "rel", "new")


def growth(maps: torch.Tensor, y: int, x: int, side: int) -> dict[str, float]:
    """The statistics of the module docstring for maps ``(T, S, S)`` in the ``side`` square
    centred on map pixel ``(y, x)`` (clipped to the map)."""
    _, h, w = maps.shape
    ya, xa = max(0, y - side // 2), max(0, x - side // 2)
    return growth_of(maps[:, ya:min(h, ya + side), xa:min(w, xa + side)])


def growth_of(sq: torch.Tensor, seen: torch.Tensor | None = None) -> dict[str, float]:
    """The statistics of the module docstring for one square's maps ``(T, h, w)``;
    ``seen`` ``(h, w)``: only these pixels count (nothing covered them in the span)."""
    sq = sq.double()
    if seen is not None:
        sq = sq * seen.double()
    t = sq.shape[0]
    third = max(1, t // 3)
    early, late = sq[:third].mean(0), sq[-third:].mean(0)
    net = float(late.sum() - early.sum())
    return {"net": net, "rel": net / (float(sq.sum((1, 2)).max()) + 1.0),
            "new": float((late - early).clamp(min=0).sum())}


def measure(analyzer, case: Path, cfg: PatchNetConfig, side: int,
            blood: torch.nn.Module | None = None, stabilise: bool = False,
            hidden_below: float = 0.5, grow_hidden: int = 0) -> list[dict]:
    """One row per masked frame of ``case``: ``active`` (any bleeding in its mask), the
    statistics at the source (active frames whose source lies in the map) and their highest
    over the map's peaks at the frame. ``blood``: the statistics are read on this all-blood
    net's single-frame maps of the whole frame (``scripts/model/blood_map.py``), the places
    still the segmenter's peaks; ``stabilise``: each frame's square where the view carried
    the place (:func:`~amagi_plugin.probing.view_shifts`, as the stabilised probe)."""
    opened = _open(analyzer, case, cfg, segmented="span" if blood is None else "targets")
    if opened is None:
        return []
    if blood is not None:
        return _measure_blood(analyzer, case, opened, side, blood, stabilise, hidden_below,
                              grow_hidden)
    probe = analyzer.probe
    geo = probe.geometry
    masked, targets, spans, frames, window = opened
    maps = _segment(probe, frames, window, sorted({f for s in spans.values() for f in s}))
    shape = frames[targets[0]].shape[-2:]
    model_shape = short_side_shape(*shape, geo.size)
    oy, ox = geo.offset(model_shape)
    rows = []
    for m, t in zip(masked, targets, strict=True):
        stack = torch.stack([maps[f] for f in spans[t]])
        peaks = map_peaks(maps[t], probe.cfg.candidates)
        at_places = [growth(stack, y, x, side) for y, x, _v in peaks]
        row = {"case": case.name, "frame": t,
               "places": {s: max((g[s] for g in at_places), default=0.0) for s in STATS}}
        mask = mask_at_scale(case / m["mask"], model_shape)
        row["active"] = bool(mask.any())
        if mask.any():
            y, x = source_point(mask)
            sy, sx = y - oy, x - ox
            if 0 <= sy < geo.size and 0 <= sx < geo.size:
                row["source"] = growth(stack, sy, sx, side)
        rows.append(row)
    return rows


def _open(analyzer, case: Path, cfg: PatchNetConfig, segmented: str):
    """``case``'s masked rows, their frames, each one's probe span, the frames read (at the
    model's scale) and the segmenter's window: the frames of every span, and the segmenter's
    windows around each span frame (``segmented="span"``) or around each masked frame only
    (``"targets"``); None for a case without masks."""
    geo = analyzer.probe.geometry
    opened = MaskedCase.open(analyzer, case)
    if opened is None:
        return None
    masked, video, window = opened.masked, opened.video, opened.window
    targets = [int(m["frame"]) for m in masked]
    spans = {t: probe_frames(t, video.frame_count, video.fps, cfg) for t in targets}
    mapped = {f for s in spans.values() for f in s}
    around = mapped if segmented == "span" else targets
    wanted = sorted({w for f in around for w in window(f)} | mapped)
    frames = {i: geo.frame(rgb) for i, _t, rgb in video.frames(wanted[0], wanted[-1] + 1,
                                                                 wanted=wanted)}
    return masked, targets, spans, frames, window


def _segment(probe, frames: dict, window, which: Sequence[int]) -> dict[int, torch.Tensor]:
    """The segmenter's map of each frame of ``which`` (batches of 32)."""
    geo = probe.geometry
    maps: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        for k in range(0, len(which), 32):
            batch = which[k:k + 32]
            x = torch.stack([torch.cat([geo.map_input(frames[w]) for w in window(f)])
                             for f in batch])
            maps.update(zip(batch, probe.segment(x.to(probe.device)).cpu(), strict=True))
    return maps


def _measure_blood(analyzer, case: Path, opened: tuple, side: int, blood: torch.nn.Module,
                   stabilise: bool, hidden_below: float, grow_hidden: int) -> list[dict]:
    """:func:`measure` on the all-blood net's maps, ``opened`` by :func:`_open`."""
    probe = analyzer.probe
    geo = probe.geometry
    masked, targets, spans, frames, window = opened
    mapped = sorted({f for s in spans.values() for f in s})
    seg = _segment(probe, frames, window, targets)
    bmaps = blood_maps(blood, geo, frames, mapped)
    shape = frames[targets[0]].shape[-2:]
    oy, ox = geo.offset(shape)
    rows = []
    for m, t in zip(masked, targets, strict=True):
        span = spans[t]
        stack = torch.stack([bmaps[f] for f in span])  # (T, outputs, H, W)
        shifts = None
        if stabilise:
            shifts = view_shifts(torch.stack([frames[f] for f in span]), len(span) // 2,
                                 STABILISE_SHARE * min(shape))
        places = [(y + oy, x + ox) for y, x, _v in map_peaks(seg[t], probe.cfg.candidates)]
        mask = mask_at_scale(case / m["mask"], shape)
        row = {"case": case.name, "frame": t, "active": bool(mask.any())}
        if mask.any():
            places.append(source_point(mask))
        squares = neighbourhoods(stack, places, side, shifts) if places else []
        # a pixel counts where no frame of the span hid it (a two-output net's second map)
        at = [growth_of(sq[:, 0], _seen(sq[:, 1], hidden_below, grow_hidden)
                        if sq.shape[1] > 1 else None) for sq in squares]
        if mask.any():
            row["source"] = at.pop()
            now = bmaps[t][0] >= 0.5
            row["blood_recall"] = round(float(now[torch.from_numpy(mask)].float().mean()), 3)
        row["places"] = {s: max((g[s] for g in at), default=0.0) for s in STATS}
        rows.append(row)
    return rows


def _seen(hidden: torch.Tensor, below: float, grow: int) -> torch.Tensor:
    """Pixels of a square that no frame hid: ``hidden`` ``(T, h, w)`` under ``below`` in
    every frame, the hidden pixels grown by ``grow`` first."""
    covered = (hidden >= below).any(0).float()[None, None]
    if grow:
        covered = F.max_pool2d(covered, 2 * grow + 1, 1, grow)
    return covered[0, 0] < 0.5


def summary(rows: Sequence[dict], negatives: Sequence[dict]) -> dict:
    """The per-set figures of the module docstring."""
    active = [r for r in rows if r["active"]]
    idle = [r for r in rows if not r["active"]] + list(negatives)
    at_source = [r for r in active if "source" in r]
    out: dict = {"active": len(active), "idle": len(idle),
                 "in_map": round(len(at_source) / len(active), 3) if active else None}
    recall = [r["blood_recall"] for r in active if "blood_recall" in r]
    if recall:
        out["blood_recall"] = round(float(np.mean(recall)), 3)
    for s in STATS:
        neg = [r["places"][s] for r in idle]
        pos_p = [r["places"][s] for r in active]
        pos_s = [r["source"][s] for r in at_source]
        out[s] = {"source_mean": round(float(np.mean(pos_s)), 3) if pos_s else None,
                  "idle_places_mean": round(float(np.mean(neg)), 3) if neg else None,
                  "auroc_places": _auc(pos_p, neg), "auroc_source": _auc(pos_s, neg)}
    return out


def _auc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    if not pos or not neg:
        return None
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    a = auroc(y.astype(int).tolist(), np.r_[pos, neg].tolist())
    return None if a is None else round(float(a), 3)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", nargs="+", help="NAME=DIR: amagi synth sets (labels, masks, video)")
    ap.add_argument("--negatives", nargs="*", default=[],
                    help="names of sets whose frames join every set's idle frames")
    ap.add_argument("--model-dir", type=Path, default=DEMO_DIR)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--step-s", type=float, default=0.2)
    ap.add_argument("--side", type=int, default=16, help="square side, map pixels")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--blood-net", type=Path, default=None,
                    help="read an all-blood net's maps (scripts/model/blood_map.py)")
    ap.add_argument("--stabilise", action="store_true",
                    help="with --blood-net: squares follow the view's motion")
    ap.add_argument("--hidden-below", type=float, default=0.5,
                    help="with a two-output --blood-net: a pixel counts where its hidden "
                    "probability stays under this in every frame")
    ap.add_argument("--grow-hidden", type=int, default=0,
                    help="grow the hidden pixels by this many pixels first")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows and figures")
    args = ap.parse_args(argv)
    sets = dict(s.split("=", 1) for s in args.sets)
    if unknown := set(args.negatives) - set(sets):
        ap.error(f"--negatives names no set: {sorted(unknown)}")
    analyzer = load_probe_analyzer(args.model_dir, args.threads)
    if analyzer is None:
        print(f"error: {args.model_dir}/model.json names no probe", file=sys.stderr)
        return 2
    cfg = PatchNetConfig(frames=args.frames, step_s=args.step_s)
    blood = None
    if args.blood_net is not None:
        blood = load_blood_net(args.blood_net)[0]
    rows = {name: [r for case in sorted(p.parent for p in Path(d).glob("*/labels.json"))
                   for r in measure(analyzer, case, cfg, args.side, blood, args.stabilise,
                                     args.hidden_below, args.grow_hidden)]
            for name, d in sets.items()}
    neg = [r for name in args.negatives for r in rows[name]]
    figures = {name: summary(rs, [] if name in args.negatives else neg)
               for name, rs in rows.items()}
    print("| set | active | idle | in map | stat | at source | idle at places | "
          "AUROC places | AUROC source |\n|---|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        if "blood_recall" in f:
            print(f"| {name} | all-blood map's recall of active bleeding: {f['blood_recall']} |")
        for s in STATS:
            print(f"| {name} | {f['active']} | {f['idle']} | {f['in_map']} | {s} | "
                  f"{f[s]['source_mean']} | {f[s]['idle_places_mean']} | "
                  f"{f[s]['auroc_places']} | {f[s]['auroc_source']} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json),
                                                                 "model_dir": str(args.model_dir),
                                                                 "blood_net": str(args.blood_net)},
                                         "figures": figures, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
