"""Is a model's neighbourhood probe limited by where it looks, or by what it sees there?

For each masked frame with active bleeding of ``amagi synth`` sets (case folders with
``labels.json``, ``masks/`` and ``video.dcm``; or ``video.mp4``, as
``scripts/model/other_renderer.py --masks`` writes another renderer's cases), binned by the bleeding's visible size in
pixels at the model's scale:

- ``hit``: the share of frames where one of the segmentation map's ``candidates`` highest
  peaks (the places analysis gives the probe) lies within 3 px (at the model's scale) of the
  bleeding;
- ``at places``: the probe's highest probability over those places, as analysis reads it
  (raw, before the 1 s mean and the fusion);
- ``at source``: its probability centred on the bleeding itself (the mask pixel nearest the
  mask's centroid): what it would read if it always looked in the right place.

A last row gives ``at places`` on the masked frames where no bleeding is active: the level
the bleeding has to rise above. A second table pools the active frames by the form of the
bleeding under way (``labels.json``'s events). Where the set has look-alike masks (``amagi
synth``'s ``lookalikes/``: still pools, stained instrument jaws, lens blood), a third gives
``on look-alikes``: the probe's highest probability over one place in each grid cell that
blood which is not bleeding reaches (away from any bleeding;
:func:`~amagi_plugin.probe_training.lookalike_places`), wherever the map peaks. That is how
far such blood comes towards an alarm if the map points the probe at it (session 59: the
stained tip).

Where ``at source`` is high and ``hit`` low, better places would help; where ``at source``
is low, the probe does not recognise that bleeding even when pointed at it. Session 37
(``models/weights/demo/heldout-looks/README.md``) measured the second for sources under
11 px.

Run: ``python scripts/model/probe_at_source.py DATA [DATA ...] [--model-dir DIR]`` (the
bundled demo model by default; a ``model.json`` folder whose model has a probe).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from amagi_plugin.modelspec import DEMO_DIR
from amagi_plugin.pipeline import BleedingAnalyzer
from amagi_plugin.probe_training import (
    NEAR,
    MaskedCase,
    load_probe_analyzer,
    lookalike_places,
    mask_at_scale,
    near_bleeding,
    source_point,
)
from amagi_plugin.probing import probe_frames
from models.training.augment import short_side_shape

#: visible-size bins (pixels at the model's scale), lower bounds inclusive
BINS = ((1, 10), (11, 30), (31, 100), (101, None))
NEAR_PX = 3


def near(mask: np.ndarray, places: Iterable[tuple[int, int]], px: int = NEAR_PX) -> bool:
    """Whether any ``(y, x)`` lies within ``px`` pixels (Chebyshev) of the mask."""
    h, w = mask.shape
    return any(mask[max(0, y - px):min(h, y + px + 1), max(0, x - px):min(w, x + px + 1)].any()
               for y, x in places)


def size_bin(px: int) -> str:
    for lo, hi in BINS:
        if px >= lo and (hi is None or px <= hi):
            return f"{lo}-{hi} px" if hi is not None else f">= {lo} px"
    raise ValueError(f"no bin for {px} px")


def measure(analyzer: BleedingAnalyzer, case: Path) -> list[dict]:
    """One row per masked frame of ``case`` (``px`` 0 where no bleeding is active; then
    ``hit`` and ``at_source`` are ``None``; ``on_lookalike`` ``None`` where the frame has no
    look-alike mask or its look-alike blood all lies near the bleeding)."""
    probe = analyzer.probe
    geo = probe.geometry  # the probe's frames (finer than the map for a --scale probe)
    opened = MaskedCase.open(analyzer, case)
    if opened is None:
        return []
    labels, masked, video, window = opened.labels, opened.masked, opened.video, opened.window
    n, fps = video.frame_count, video.fps
    events = labels.get("events") or []

    def form_at(frame: int) -> str | None:
        return next((e.get("form") for e in events
                     if e["start_frame"] <= frame < e["end_frame"]), None)

    targets = [int(m["frame"]) for m in masked]
    wanted = sorted({f for t in targets for f in (*window(t), *probe_frames(t, n, fps,
                                                                           probe.cfg))})
    frames = {i: geo.frame(rgb) for i, _t, rgb in video.frames(wanted[0], wanted[-1] + 1,
                                                                 wanted=wanted)}
    found = probe.places(frames, targets, window)
    shape = frames[targets[0]].shape[-2:]
    model_shape = short_side_shape(*shape, geo.size)
    rows = []
    for m, t, places in zip(masked, targets, found, strict=True):
        mask = mask_at_scale(case / m["mask"], shape)
        at_places = probe.scores_at(frames, [t], [places], n, fps)[0]
        on_lookalike = None
        if m.get("lookalike"):
            alike = mask_at_scale(case / m["lookalike"], shape) & ~near_bleeding(
                mask, NEAR * geo.scale)
            spots = lookalike_places(alike, alike.size, np.random.default_rng(t))
            if spots:
                on_lookalike = float(probe.scores_at(
                    frames, [t], [[(y, x, 1.0) for y, x in spots]], n, fps)[0])
        row = {"case": case.name, "frame": t, "px": 0, "hit": None,
               "at_places": float(at_places), "at_source": None, "on_lookalike": on_lookalike}
        if mask.any():
            at_source = probe.scores_at(frames, [t], [[(*source_point(mask), 1.0)]], n, fps)[0]
            row.update(px=int(mask_at_scale(case / m["mask"], model_shape).sum()),  # map scale
                       form=form_at(t),
                       hit=near(mask, [(y, x) for y, x, _v in places], NEAR_PX * geo.scale),
                       at_source=float(at_source))
        rows.append(row)
    return rows


def _row(name: str, sel: Sequence[dict]) -> str:
    src = np.array([r["at_source"] for r in sel])
    return (f"| {name} | {len(sel)} | {np.mean([r['hit'] for r in sel]):.2f} | "
            f"{np.mean([r['at_places'] for r in sel]):.2f} | {src.mean():.2f} | "
            f"{np.median(src):.2f} |")


def table(rows: Sequence[dict]) -> str:
    """The rows pooled by :data:`BINS`, in all, and where no bleeding is active, as a
    Markdown table."""
    out = ["| visible size | frames | hit | at places (mean) | at source (mean) | "
           "at source (median) |", "|---|---|---|---|---|---|"]
    active = [r for r in rows if r["px"] > 0]
    groups = [(size_bin(lo), [r for r in active if size_bin(r["px"]) == size_bin(lo)])
              for lo, _hi in BINS] + [("all active", active)]
    out += [_row(name, sel) for name, sel in groups if sel]
    idle = [r["at_places"] for r in rows if r["px"] == 0]
    if idle:
        out.append(f"| none active | {len(idle)} | | {np.mean(idle):.2f} | | |")
    return "\n".join(out)


def form_table(rows: Sequence[dict]) -> str:
    """The active rows pooled by the form of the bleeding under way (``labels.json``'s
    events; "unknown" where none records one), as a Markdown table."""
    active = [r for r in rows if r["px"] > 0]
    forms = sorted({r.get("form") or "unknown" for r in active})
    out = ["| bleeding form | frames | hit | at places (mean) | at source (mean) | "
           "at source (median) |", "|---|---|---|---|---|---|"]
    out += [_row(f, [r for r in active if (r.get("form") or "unknown") == f]) for f in forms]
    return "\n".join(out)


def lookalike_table(rows: Sequence[dict]) -> str | None:
    """``on_lookalike`` pooled over the frames with and without active bleeding and in all
    (its mean and the share of frames above 0.9, the level that makes alarms), as a Markdown
    table; ``None`` where no row has it."""
    read = [r for r in rows if r.get("on_lookalike") is not None]
    if not read:
        return None
    out = ["| look-alike blood (not bleeding) | frames | on look-alikes (mean) | "
           "on look-alikes > 0.9 (share) |", "|---|---|---|---|"]
    for name, sel in (("beside active bleeding", [r for r in read if r["px"] > 0]),
                      ("none active", [r for r in read if r["px"] == 0]), ("all", read)):
        if sel:
            v = np.array([r["on_lookalike"] for r in sel])
            out.append(f"| {name} | {len(sel)} | {v.mean():.2f} | {np.mean(v > 0.9):.2f} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+", type=Path, help="amagi synth sets (labels, masks, video)")
    ap.add_argument("--model-dir", type=Path, default=DEMO_DIR,
                    help="a model.json folder whose model has a probe (default: the bundled)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    analyzer = load_probe_analyzer(args.model_dir, args.threads)
    if analyzer is None:
        print(f"error: {args.model_dir}/model.json names no probe", file=sys.stderr)
        return 2
    rows = []
    for root in args.data:
        for case in sorted(p.parent for p in root.glob("*/labels.json")):
            rows += measure(analyzer, case)
    if not any(r["px"] for r in rows):
        print("error: no masked frame with active bleeding in " + ", ".join(map(str, args.data)),
              file=sys.stderr)
        return 2
    print(table(rows))
    print()
    print(form_table(rows))
    alike = lookalike_table(rows)
    if alike:
        print()
        print(alike)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
