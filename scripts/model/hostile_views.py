"""Does a model call blood that does not flow bleeding when the *view* changes over time?

For each case of an ``amagi synth`` data set (folders with ``labels.json`` and
``video.dcm``), the decoded frame at the end of its largest bleeding event (the most
fresh-looking blood that case shows) is turned into bleeding-free videos in which only
the view changes:

- ``still``: the frame held, with fresh sensor noise in every frame;
- ``pan``: the view slides over it (±10 px at the model's 160 × 128, period 8 s);
- ``zoom``: the view zooms in by up to 35 % and out again (period 6 s), so the red area
  grows and shrinks as a bleed does;
- ``flicker``: the light's brightness swings ±25 % once a second;
- ``reverse`` (not bleeding-free by construction, reported apart): the whole case played
  backwards, so blood recedes instead of spreading.

Each video (H.264, the case's frame rate and size) goes through ``amagi process`` as a
user runs it, and the table gives the events it reports, their total duration and the
highest probability (``predictions.csv``). Nothing
in the first four flows, so every event there is a false alarm.

Run: ``python scripts/model/hostile_views.py DATA_DIR OUT_DIR [--seconds 30]
[--cases N] [-- extra amagi process arguments]`` (e.g. ``-- --model-dir DIR`` for a
candidate model folder instead of the bundled demo).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from dicom_io.encode import encode_video
from dicom_io.video import open_video

KINDS = ("still", "pan", "zoom", "flicker")


def source_frame(case: Path) -> tuple[np.ndarray, float, list[np.ndarray]]:
    """The frame at the end of the case's largest event, the frame rate, and every frame
    (for ``reverse``)."""
    labels = json.loads((case / "labels.json").read_text())
    event = max(labels["events"], key=lambda e: e["max_radius_px"])
    video = open_video(case / "video.dcm")
    frames = [rgb for _i, _t, rgb in video.frames(0, video.frame_count)]
    return frames[event["end_frame"] - 1], float(labels["fps"]), frames


def view(frame: np.ndarray, kind: str, t: float, rng: np.random.Generator) -> np.ndarray:
    """``frame`` seen at time ``t`` through view ``kind`` (module docstring), uint8 RGB."""
    h, w = frame.shape[:2]
    img = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    scale, dx, dy, gain = 1.0, 0.0, 0.0, 1.0
    if kind == "pan":
        scale = 1 / 1.15  # a view 15 % narrower than the frame leaves room to slide
        dx = 10 * math.sin(2 * math.pi * t / 8)
        dy = 6 * math.sin(2 * math.pi * t / 8 * 1.3 + 1)
    elif kind == "zoom":
        scale = 1 / (1 + 0.35 * (1 - math.cos(2 * math.pi * t / 6)) / 2)
    elif kind == "flicker":
        gain = 1 + 0.25 * math.sin(2 * math.pi * t)
    if scale != 1.0 or dx or dy:
        theta = torch.tensor([[[scale, 0.0, 2 * dx / w], [0.0, scale, 2 * dy / h]]])
        grid = torch.nn.functional.affine_grid(theta, [1, 3, h, w], align_corners=False)
        img = torch.nn.functional.grid_sample(img, grid, mode="bilinear",
                                              padding_mode="border", align_corners=False)
    out = img[0].permute(1, 2, 0).numpy() * gain + rng.normal(0, 2.0, (h, w, 3))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def process(video: Path, out: Path, extra: list[str]) -> tuple[dict, float]:
    """``amagi process``'s summary of ``video`` and its highest (fused) probability."""
    subprocess.run([sys.executable, "-m", "amagi_plugin", "process", str(video), "-od",
                    str(out), "--no-progress", *extra], check=True)
    with open(out / "predictions.csv", newline="") as fh:
        highest = max(float(row["bleeding_probability"]) for row in csv.DictReader(fh))
    return json.loads((out / "summary.json").read_text()), highest


def parse(argv: list[str]) -> argparse.Namespace:
    """The script's own arguments, and everything after ``--`` as ``extra`` (handed to
    ``amagi process`` unread: argparse alone would refuse its options)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="after --: more amagi process arguments")
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--cases", type=int, default=0, help="first N cases (0: all)")
    args = ap.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    cases = sorted(p.parent for p in args.data.glob("*/labels.json"))
    cases = cases[:args.cases] if args.cases else cases
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        frame, fps, frames = source_frame(case)
        rng = np.random.default_rng(0)
        n = round(args.seconds * fps)
        for kind in (*KINDS, "reverse"):
            path = args.out / f"{case.name}_{kind}.mp4"
            encode_video(reversed(frames) if kind == "reverse" else
                         (view(frame, kind, k / fps, rng) for k in range(n)), path, fps, crf=20)
            doc, highest = process(path, args.out / f"{case.name}_{kind}", args.extra)
            rows.append((case.name, kind, doc["duration_s"], doc["event_count"],
                         doc["total_bleeding_s"], highest))
            print(*rows[-1], sep="\t", flush=True)
    print("\n| case | view | video s | events | bleeding s | highest probability |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r)
              + " |")
    alarms = sum(r[3] for r in rows if r[1] in KINDS)
    hours = sum(r[2] for r in rows if r[1] in KINDS) / 3600
    if hours:
        print(f"\nfalse alarms in the bleeding-free views: {alarms} in {hours * 60:.1f} min "
              f"({alarms / hours:.1f} per hour)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
