"""A probe that reads the map of all blood over seconds instead of pixels: does it transfer?

Session 56 (``models/weights/demo/heldout-looks/README.md``) found hand-made growth statistics
on the all-blood map (``scripts/model/blood_map.py``) a cue on another renderer's video
(frame AUROC 0.68-0.78) but not on ``amagi synth``'s held-out looks (0.53-0.63), where an
instrument that uncovers blood and a view that zooms make a square's blood grow as much as
bleeding does. This asks whether a network can learn those apart from spreading when it sees
only the two maps (all blood, hidden), never the pixels, so that no renderer's drawing reaches
it: a :class:`~models.patchnet.PatchNet` whose three input channels are the blood map, the
hidden map and zero (0-255), over ``--frames`` frames ``--step-s`` apart, each frame's square
where the view carried the place (:func:`~amagi_plugin.probing.view_shifts`).

``extract`` reads ``amagi synth`` sets with video and masks (``--formats dicom``; the other
renderer's ``--masks`` sets) at each masked frame: the bundled probe's places (the
segmenter's map peaks) labelled as the probe's training labels them
(:mod:`amagi_plugin.probe_training`: on active bleeding within 2 px, positive; near it but not
on it, left out) and the mask's centre (positive). With ``--reference`` each place is also
scored by the model folder's own probe, read stabilised, for a comparison on the very same
places and frames. ``train`` fits the map probe; ``score`` prints the frame AUROC (the highest
score over a frame's places; active frames against frames where nothing is active) of the map
probe, the reference probe and their mean.

Run: ``python scripts/model/map_probe.py extract OUT.npz SET_DIR [...] --blood-net FILE
[--frames 8] [--step-s 0.6] [--reference]``, ``... train NET.pth DATA.npz [...] [--epochs 6]``,
``... score NET.pth DATA.npz [...]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from amagi_plugin.modelspec import DEMO_DIR
from amagi_plugin.probe_training import (
    NEAR,
    MaskedCase,
    load_probe_analyzer,
    mask_at_scale,
    near_bleeding,
    place_label,
    source_point,
)
from amagi_plugin.probing import (
    STABILISE_SHARE,
    neighbourhoods,
    probe_frames,
    probe_neighbourhoods,
    view_shifts,
)
from models.patchnet import PatchNet, PatchNetConfig, load_patchnet, save_patchnet
from models.training.patchnet import PatchTrainConfig, train_patchnet

sys.path.insert(0, str(Path(__file__).parent))
from blood_map import blood_maps, load_blood_net
from map_growth import _auc

MARGIN = 4


def extract_case(analyzer, blood: torch.nn.Module, case: Path, cfg: PatchNetConfig,
                 reference: bool | torch.nn.Module) -> dict[str, np.ndarray] | None:
    """One case's squares (module docstring): ``x`` uint8 ``(N, frames, S, S, 3)``, ``label``
    (1 positive, 0 negative, -1 near bleeding but not on it), ``source`` (the mask's centre,
    not a place), ``frame`` (the masked frame's number), ``active`` (bleeding in its mask) and
    ``ref`` (the reference probe's probability at a place, NaN elsewhere): with ``reference``
    True the model's own probe, or the probe given, read stabilised."""
    probe = analyzer.probe
    geo = probe.geometry
    opened = MaskedCase.open(analyzer, case)
    if opened is None:
        return None
    video = opened.video
    n, fps = video.frame_count, video.fps
    targets = [int(m["frame"]) for m in opened.masked]
    spans = {t: probe_frames(t, n, fps, cfg) for t in targets}
    ref_net = (None if reference is False else
               reference if isinstance(reference, torch.nn.Module) else probe.net)
    ref_cfg = None if ref_net is None else dataclasses.replace(ref_net.cfg, stabilise=True)
    ref_spans = {} if ref_cfg is None else {t: probe_frames(t, n, fps, ref_cfg) for t in targets}
    span_frames = {f for s in spans.values() for f in s}
    wanted = sorted(span_frames | {f for s in ref_spans.values() for f in s}
                    | {w for t in targets for w in opened.window(t)})
    frames = {i: geo.frame(rgb) for i, _t, rgb in video.frames(wanted[0], wanted[-1] + 1,
                                                                 wanted=wanted)}
    found = probe.places(frames, targets, opened.window)
    maps = blood_maps(blood, geo, frames, sorted(span_frames))
    scale = geo.scale
    on_px, near_px = 2 * scale, NEAR * scale
    side = cfg.crop + MARGIN
    out: dict[str, list] = {k: [] for k in ("x", "label", "source", "frame", "active", "ref")}
    for m, t, places in zip(opened.masked, targets, found, strict=True):
        shape = frames[t].shape[-2:]
        mask = mask_at_scale(case / m["mask"], tuple(shape))
        near = near_bleeding(mask, near_px)
        chosen: list[tuple[int, int, int, bool]] = []
        if mask.any():
            chosen.append((*source_point(mask), 1, True))
        for y, x, _v in places:
            label = place_label(mask, near, y, x, on_px)
            chosen.append((y, x, -1 if label is None else label, False))
        if not chosen:
            continue
        rgb = torch.stack([frames[f] for f in spans[t]])
        shifts = view_shifts(rgb, len(spans[t]) // 2, STABILISE_SHARE * min(shape), spans[t])
        stack = torch.stack([maps[f] for f in spans[t]])  # (T, 2, H, W) in 0..1
        stack = torch.cat([stack, torch.zeros_like(stack[:, :1])], 1) * 255.0
        sq = neighbourhoods(stack, [(y, x) for y, x, *_ in chosen], side, shifts)
        out["x"].append(sq.round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy())
        ref = np.full(len(chosen), np.nan)
        at = [j for j, c in enumerate(chosen) if not c[3]]
        if ref_net is not None and at:
            crops = probe_neighbourhoods(frames, t, n, fps, ref_cfg,
                                         [(chosen[j][0], chosen[j][1]) for j in at])
            with torch.inference_mode():
                ref[at] = torch.sigmoid(ref_net(crops).float()).numpy()
        out["ref"].append(ref)
        for _y, _x, label, is_source in chosen:
            out["label"].append(label)
            out["source"].append(is_source)
            out["frame"].append(t)
            out["active"].append(bool(mask.any()))
    if not out["x"]:
        return None
    return {"x": np.concatenate(out["x"]), "label": np.array(out["label"], np.int8),
            "source": np.array(out["source"]), "frame": np.array(out["frame"]),
            "active": np.array(out["active"]), "ref": np.concatenate(out["ref"])}


def extract(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    analyzer = load_probe_analyzer(args.model_dir, args.threads)
    blood = load_blood_net(args.blood_net)[0]
    cfg = PatchNetConfig(frames=args.frames, step_s=args.step_s, crop=args.crop,
                         short_side=analyzer.probe.cfg.short_side)
    reference = (load_patchnet(args.reference_probe) if args.reference_probe is not None
                 else args.reference)
    parts = []
    t0 = time.perf_counter()
    for root in args.sets:
        cases = sorted(p.parent for p in Path(root).glob("*/labels.json"))
        for k, case in enumerate(cases):
            got = extract_case(analyzer, blood, case, cfg, reference)
            if got is not None:
                got["case"] = np.array([f"{Path(root).name}/{case.name}"] * len(got["label"]))
                parts.append(got)
            print(f"{root}: {k + 1}/{len(cases)} cases ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    np.savez_compressed(args.out, **data, cfg=json.dumps(dataclasses.asdict(cfg)))
    print(f"{len(data['label'])} squares, {int((data['label'] == 1).sum())} positive -> {args.out}")


def _load(paths: Sequence[Path]) -> tuple[dict[str, np.ndarray], PatchNetConfig]:
    parts = [dict(np.load(p)) for p in paths]
    cfg = PatchNetConfig(**json.loads(str(parts[0].pop("cfg"))))
    for p in parts[1:]:
        p.pop("cfg")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, cfg


def train(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    data, cfg = _load(args.data)
    keep = data["label"] >= 0
    tcfg = PatchTrainConfig(epochs=args.epochs, look_jitter=0.0, seed=args.seed,
                            sliding_negatives=args.sliding_negatives,
                            view_negatives=args.view_negatives,
                            architecture=dataclasses.replace(cfg, width=args.width),
                            precision=args.precision)
    result = train_patchnet(data["x"][keep], data["label"][keep].astype(np.uint8), tcfg,
                            lambda e, n, loss: print(f"epoch {e}/{n}: loss {loss:.4f}",
                                                     flush=True))
    save_patchnet(result.net, args.out, meta={"map_probe": True, "blood_net": str(args.blood_net),
                                              "data": [str(p) for p in args.data],
                                              "losses": result.losses,
                                              "seconds": round(result.seconds)})
    print(f"{result.samples} squares, {result.positive_share:.3f} positive, "
          f"{result.seconds:.0f} s -> {args.out}")


def score(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    net: PatchNet = load_patchnet(args.net)
    data, _cfg = _load(args.data)
    crop, m = net.cfg.crop, MARGIN // 2
    x = torch.as_tensor(data["x"][..., m:m + crop, m:m + crop, :]).permute(0, 1, 4, 2, 3).float()
    with torch.inference_mode():
        p = torch.cat([torch.sigmoid(net(x[k:k + 256]).float()) for k in range(0, len(x), 256)])
    p = p.numpy()
    place = ~data["source"]
    ref = data["ref"]
    table = {}
    for name in sorted(set(c.split("/")[0] for c in data["case"])):
        in_set = np.char.startswith(data["case"].astype(str), name + "/") & place
        keys = sorted(set(zip(data["case"][in_set], data["frame"][in_set], strict=True)))
        rows = {"map": [], "ref": [], "mean": []}
        active = []
        for c, f in keys:
            sel = in_set & (data["case"] == c) & (data["frame"] == f)
            rows["map"].append(float(p[sel].max()))
            rows["ref"].append(float(np.nanmax(ref[sel])) if np.isfinite(ref[sel]).any()
                               else np.nan)
            rows["mean"].append(float((p[sel] + ref[sel]).max() / 2))
            active.append(bool(data["active"][sel][0]))
        active = np.array(active)
        table[name] = {"active": int(active.sum()), "idle": int((~active).sum())}
        for k, v in rows.items():
            v = np.array(v)
            if np.isfinite(v).all():
                table[name][k] = _auc(list(v[active]), list(v[~active]))
                if (~active).any():  # how high frames where nothing bleeds score
                    table[name][f"{k}_idle_mean"] = round(float(v[~active].mean()), 3)
                    table[name][f"{k}_idle_max"] = round(float(v[~active].max()), 3)
        lab = data["label"][in_set]
        table[name]["square_auroc_map"] = _auc(list(p[in_set][lab == 1]), list(p[in_set][lab == 0]))
        if np.isfinite(ref[in_set]).all():
            table[name]["square_auroc_ref"] = _auc(list(ref[in_set][lab == 1]),
                                                   list(ref[in_set][lab == 0]))
    print("| set | active frames | idle frames | frame AUROC: map probe / reference / mean | "
          "square AUROC: map / reference | idle frames, mean / highest: map; reference |\n"
          "|---|---|---|---|---|---|")
    for name, t in table.items():
        print(f"| {name} | {t['active']} | {t['idle']} | {t.get('map')} / {t.get('ref')} / "
              f"{t.get('mean')} | {t['square_auroc_map']} / {t.get('square_auroc_ref')} | "
              f"{t.get('map_idle_mean')} / {t.get('map_idle_max')}; {t.get('ref_idle_mean')} / "
              f"{t.get('ref_idle_max')} |")
    if args.json:
        args.json.write_text(json.dumps({"net": str(args.net), "data": [str(d) for d in args.data],
                                         "figures": table}, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("out", type=Path)
    e.add_argument("sets", nargs="+")
    e.add_argument("--blood-net", type=Path, required=True)
    e.add_argument("--model-dir", type=Path, default=DEMO_DIR)
    e.add_argument("--frames", type=int, default=8)
    e.add_argument("--step-s", type=float, default=0.6)
    e.add_argument("--crop", type=int, default=32)
    e.add_argument("--reference", action="store_true",
                   help="score each place with the model folder's probe too")
    e.add_argument("--reference-probe", type=Path, default=None,
                   help="score each place with this probe file instead (read stabilised)")
    e.add_argument("--threads", type=int, default=None)
    t = sub.add_parser("train")
    t.add_argument("out", type=Path)
    t.add_argument("data", nargs="+", type=Path)
    t.add_argument("--blood-net", type=Path, default=None, help="recorded only")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--width", type=int, default=32)
    t.add_argument("--seed", type=int, default=7)
    t.add_argument("--sliding-negatives", type=float, default=1.0)
    t.add_argument("--view-negatives", type=float, default=1.0)
    t.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    t.add_argument("--threads", type=int, default=None)
    s = sub.add_parser("score")
    s.add_argument("net", type=Path)
    s.add_argument("data", nargs="+", type=Path)
    s.add_argument("--json", type=Path, default=None)
    s.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    {"extract": extract, "train": train, "score": score}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
