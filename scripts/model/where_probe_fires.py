"""Where does a model's probe fire most in a video, and what does it see there?

For each video, the probe of a ``model.json`` folder (the bundled demo by default) scores
every ``1 / --hz`` s instant at its places, as analysis does (the segmentation map's peaks),
from the first second to the last. Printed per video: the raw probe score's mean, 90th
percentile, highest and share above 0.5. For the ``--top`` highest instants at least 3 s
apart, a picture is written to ``OUT``: the frame at the model's scale (twice enlarged) with
the neighbourhood marked, and the probe's ``frames`` crops of it side by side (4×), what the
probe read. Meant for bleeding-free video, to see what it takes for bleeding
(``models/weights/demo/heldout-looks/README.md``, session 51).

Run: ``python scripts/model/where_probe_fires.py OUT VIDEO [VIDEO ...] [--model-dir DIR]
[--top 3] [--hz 10] [--threads 1]``; a picture is named ``<video's folder>_<video>_t<s>_p<score>.png``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from amagi_plugin.modelspec import DEMO_DIR
from amagi_plugin.probe_training import load_probe_analyzer
from amagi_plugin.probing import probe_frames, probe_neighbourhoods
from dicom_io.video import open_video

APART_S = 3.0


def _rgb(frame: torch.Tensor) -> Image.Image:
    return Image.fromarray(frame.permute(1, 2, 0).clamp(0, 255).round().byte().numpy())


def picture(frame: torch.Tensor, y: int, x: int, crops: torch.Tensor) -> Image.Image:
    """``frame`` ``(3, H, W)`` (0-255) twice enlarged with the square of ``crops`` ``(T, 3,
    crop, crop)`` (what the probe read of it over its frames) at ``(y, x)`` marked, beside
    those crops (4×)."""
    crop = crops.shape[-1]
    strip = _rgb(torch.cat(list(crops), dim=2))
    strip = strip.resize((strip.width * 4, strip.height * 4), Image.NEAREST)
    full = _rgb(frame)
    ImageDraw.Draw(full).rectangle([x - crop // 2, y - crop // 2, x + crop // 2,
                                    y + crop // 2], outline=(0, 255, 0))
    full = full.resize((full.width * 2, full.height * 2), Image.NEAREST)
    out = Image.new("RGB", (full.width + strip.width, max(full.height, strip.height)))
    out.paste(full, (0, 0))
    out.paste(strip, (full.width, 0))
    return out


def scan(analyzer, path: Path, hz: float) -> tuple[dict, list]:
    """The probe's scores at ``hz`` instants of the video at ``path``: their summary and
    ``(score, frame, place, seen)`` of each instant, highest first (``seen()``: the
    instant's frame at the probe's scale and the probe's neighbourhoods of the place, as
    :func:`~amagi_plugin.probing.probe_neighbourhoods` gives them to it)."""
    probe, geo = analyzer.probe, analyzer.probe.geometry
    video = open_video(path)
    n, fps = video.frame_count, video.fps
    schedule = analyzer.schedule_for(video)

    def window(i: int) -> list[int]:
        return schedule.window(i, analyzer.seg_frames)

    step = max(1, round(fps / hz))
    targets = list(range(round(fps), n - round(fps), step))
    if not targets:
        raise ValueError(f"{path}: shorter than 2 s")
    wanted = sorted({f for t in targets for f in (*window(t), *probe_frames(t, n, fps,
                                                                          probe.cfg))})
    frames = {i: geo.frame(rgb) for i, _t, rgb in video.frames(wanted[0], wanted[-1] + 1,
                                                                 wanted=wanted)}
    found = probe.places(frames, targets, window)
    scores = probe.place_scores(frames, targets, found, n, fps)
    best = np.array([p.max(initial=0.0) for p in scores])
    ranked = sorted(((float(p.max()), t, found[k][int(p.argmax())][:2])
                     for k, (t, p) in enumerate(zip(targets, scores, strict=True)) if len(p)),
                    key=lambda r: -r[0])
    summary = {"mean": float(best.mean()), "q90": float(np.quantile(best, 0.9)),
               "max": float(best.max()), "above_half": float((best > 0.5).mean()),
               "fps": fps, "instants": len(targets)}
    return summary, [(s, t, yx, lambda t=t, yx=yx: (frames[t], probe_neighbourhoods(
        frames, t, n, fps, probe.cfg, [yx])[0])) for s, t, yx in ranked]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for the pictures")
    ap.add_argument("videos", nargs="+", type=Path)
    ap.add_argument("--model-dir", type=Path, default=DEMO_DIR)
    ap.add_argument("--top", type=int, default=3, help="pictures per video")
    ap.add_argument("--hz", type=float, default=10.0, help="instants per second")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.top < 0 or not args.hz > 0:
        ap.error("--top must be >= 0 and --hz > 0")
    analyzer = load_probe_analyzer(args.model_dir, args.threads)
    if analyzer is None:
        print(f"error: {args.model_dir}/model.json names no probe", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    print("| video | instants | mean | q90 | max | share > 0.5 |\n|---|---|---|---|---|---|")
    for path in args.videos:
        summary, ranked = scan(analyzer, path, args.hz)
        name = f"{path.parent.name}_{path.stem}"
        print(f"| {name} | {summary['instants']} | {summary['mean']:.3f} | "
              f"{summary['q90']:.3f} | {summary['max']:.3f} | {summary['above_half']:.3f} |")
        shown: list[int] = []
        for score, t, (y, x), seen in ranked:
            if len(shown) == args.top:
                break
            if any(abs(t - u) < APART_S * summary["fps"] for u in shown):
                continue
            shown.append(t)
            frame, crops = seen()
            picture(frame, y, x, crops).save(
                args.out / f"{name}_t{t / summary['fps']:05.1f}_p{score:.2f}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
