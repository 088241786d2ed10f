"""Does a neighbourhood probe (:class:`models.patchnet.PatchNet`) find the bleeding the clip
network misses? Extract training neighbourhoods, train the probe, score it on video sets.

Training neighbourhoods come from an ``amagi synth`` rawframes set, at its masked frames
(every 30th): one at each bleeding mask's centre plus ``--extra-pos`` at random mask pixels
(positive), the ``--candidates`` highest local maxima of a trained segmenter's map
(positive when active bleeding lies within 2 px, negative away from it: the map's own false
peaks, hard negatives) and ``--rand-neg`` random places away from any bleeding (negative).
Places close to bleeding but not on it are left out. Each is ``frames`` frames ``step_s``
apart around the masked frame, ``crop + 4`` pixels square (a random ``crop`` square of it in
training, with flips and ``--look-jitter``).

Scoring (``score``) runs the probe on every ``--every``-th frame of ``amagi synth`` video
sets (folders with ``labels.json`` and ``video.dcm``/``video.mp4``). With ``--seg ARCH
SEG_CHECKPOINT`` it looks where that segmenter's map peaks (``--candidates`` peaks, as in
extraction) and the frame's score is its highest candidate; without, it runs densely and
the frame's score is its highest window of the whole frame (session 25: worse, the probe's
false positives anywhere in the frame outweigh what it finds). Printed as JSON per set:
frame AUROC and AP against the frame labels and per visible-size bin of ``amagi
evaluate``, raw and after a moving mean of ``--smooth-s`` seconds over the frames of a
case (with ``--seg``, the same for the map's highest peak alone); for bleeding-free sets
the share of frames over 0.5; and with ``--still NAME``, the AUROC of the first set's
bleeding frames against NAME's frames (bleeding against still blood), smoothed.

Run::

    python scripts/model/patch_stage.py extract ARCH SEG_CHECKPOINT RAWFRAMES_DIR OUT.npz
    python scripts/model/patch_stage.py train OUT.npz NET.pt [--epochs 6]
    python scripts/model/patch_stage.py score NET.pt NAME=DIR [NAME=DIR ...] [--still NAME] \
        [--seg ARCH SEG_CHECKPOINT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from amagi_plugin.evaluation.cases import load_cases
from amagi_plugin.evaluation.metrics import auroc, average_precision
from amagi_plugin.evaluation.report import auroc_by_size
from amagi_plugin.inferers import MaskInferer
from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
from amagi_plugin.schedule import ClipSchedule
from amagi_plugin.transforms import FrameToTensor
from dicom_io.video import open_video
from models import build_model, load_checkpoint
from models.patchnet import PatchNet, PatchNetConfig
from models.training.augment import LookJitter

MARGIN = 4  # extracted side = crop + MARGIN (room for the random crop)
NEAR = 8  # px: candidates this close to bleeding but not on it are left out


def frame_indices(i: int, n: int, fps: float, cfg: PatchNetConfig) -> list[int]:
    """The probe's frames around frame ``i`` (clamped to the video)."""
    step = max(1, round(cfg.step_s * fps))
    return [min(n - 1, max(0, i + step * (t - cfg.frames // 2))) for t in range(cfg.frames)]


def neighbourhood(pixels: dict[int, np.ndarray], frames: list[int], y: int, x: int,
                  side: int) -> np.ndarray:
    """``uint8 (frames, side, side, 3)`` centred on ``(y, x)``, zero outside the frame."""
    h, w = pixels[frames[0]].shape[:2]
    out = np.zeros((len(frames), side, side, 3), np.uint8)
    y0, x0 = y - side // 2, x - side // 2
    ya, yb, xa, xb = max(0, y0), min(h, y0 + side), max(0, x0), min(w, x0 + side)
    for t, f in enumerate(frames):
        out[t, ya - y0:yb - y0, xa - x0:xb - x0] = pixels[f][ya:yb, xa:xb]
    return out


def map_peaks(p: torch.Tensor, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` highest local maxima (9 × 9) of the map's 3 × 3 mean as ``(y, x, value)``,
    highest first."""
    pp = F.avg_pool2d(p[None, None], 3, 1, 1)[0, 0]
    peak = (pp == F.max_pool2d(pp[None, None], 9, 1, 4)[0, 0]) & (pp > 1e-4)
    ys, xs = torch.nonzero(peak, as_tuple=True)
    order = torch.argsort(pp[ys, xs], descending=True)[:k]
    return [(int(ys[o]), int(xs[o]), float(pp[ys[o], xs[o]])) for o in order]


class Segmenter:
    """A trained segmenter's map of a frame as AMAGI draws it, in native pixel coordinates."""

    def __init__(self, arch: str, checkpoint: Path) -> None:
        model = build_model(arch)
        if not model.default_cfg.has_segmentation:
            raise SystemExit(f"{arch} has no segmentation net")
        load_checkpoint(model, checkpoint, kind="segmentation")
        self.analyzer = BleedingAnalyzer.for_model(model, AnalysisOptions())
        self.network = self.analyzer._segmentation_network()
        self.inferer = MaskInferer(self.analyzer.input_size, "cpu", False)

    def peaks(self, pixels: dict[int, np.ndarray], centres: list[int], n: int, fps: float,
              k: int) -> list[list[tuple[int, int, float]]]:
        """For each centre frame, its map's ``k`` highest peaks as native ``(y, x, value)``."""
        a = self.analyzer
        schedule = ClipSchedule(n, fps, clip_len=a.clip_len, prediction_hz=10.0)
        h, w = pixels[centres[0]].shape[:2] if centres else (0, 0)
        s = a.input_size / min(h, w) if centres else 1.0
        oy = max(a.input_size, round(h * s)) // 2 - a.input_size // 2
        ox = max(a.input_size, round(w * s)) // 2 - a.input_size // 2
        out = []
        for b in range(0, len(centres), 32):
            x = torch.stack([a._seg_input(schedule.window(i, a.seg_frames), pixels, a.transform)
                             for i in centres[b:b + 32]])
            for p in self.inferer(x, self.network):
                out.append([(min(h - 1, round((cy + oy) / s)), min(w - 1, round((cx + ox) / s)), v)
                            for cy, cx, v in map_peaks(p, k)])
        return out


def extract(segmenter: Segmenter, root: Path, out: Path, cfg: PatchNetConfig,
            candidates: int = 8, rand_neg: int = 4, extra_pos: int = 2, seed: int = 0) -> dict:
    """Write the training neighbourhoods of a rawframes set (see the module docstring)."""
    rng = np.random.default_rng(seed)
    side = cfg.crop + MARGIN
    xs: list[np.ndarray] = []
    ys: list[int] = []
    cases = sorted(d for d in root.iterdir() if (d / "labels.json").is_file())
    if not cases:
        raise SystemExit(f"{root}: no amagi synth cases")
    t0 = time.perf_counter()
    for k, case in enumerate(cases):
        labels = json.loads((case / "labels.json").read_text())
        n, fps = labels["n_frames"], labels["fps"]
        if not (case / "rawframes").is_dir():
            raise SystemExit(f"{case}: no rawframes/ (amagi synth --formats rawframes)")
        pixels = {i: np.array(Image.open(case / "rawframes" / f"img_{i + 1:05d}.jpg")
                                .convert("RGB")) for i in range(n)}
        h, w = pixels[0].shape[:2]
        masked = labels["masks"]
        peaks = segmenter.peaks(pixels, [m["frame"] for m in masked], n, fps, candidates)
        for m, places in zip(masked, peaks, strict=True):
            frames = frame_indices(m["frame"], n, fps, cfg)
            mask = np.asarray(Image.open(case / m["mask"])) > 0
            near = np.zeros_like(mask)
            chosen: list[tuple[int, int, int]] = []  # (y, x, label)
            if mask.any():
                my, mx = np.nonzero(mask)
                near = F.max_pool2d(torch.as_tensor(mask, dtype=torch.float32)[None, None],
                                    2 * NEAR + 1, 1, NEAR)[0, 0].numpy() > 0
                centre = int(np.argmin((my - my.mean()) ** 2 + (mx - mx.mean()) ** 2))
                picks = [centre, *rng.integers(0, len(my), extra_pos)]
                chosen += [(int(my[j]), int(mx[j]), 1) for j in picks]
            for y, x, _ in places:
                on = bool(mask[max(0, y - 2):y + 3, max(0, x - 2):x + 3].any())
                if on or not near[y, x]:
                    chosen.append((y, x, int(on)))
            for _ in range(rand_neg):
                y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
                if not near[y, x]:
                    chosen.append((y, x, 0))
            for y, x, label in chosen:
                xs.append(neighbourhood(pixels, frames, y, x, side))
                ys.append(label)
        if k % 10 == 0 or k == len(cases) - 1:
            print(f"{k + 1}/{len(cases)} cases, {len(ys)} neighbourhoods, {sum(ys)} positive, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    np.savez(out, x=np.stack(xs), y=np.array(ys, np.uint8))
    return {"neighbourhoods": len(ys), "positive": int(sum(ys)), "cases": len(cases)}


def _tensor(x: np.ndarray) -> torch.Tensor:
    """``uint8 (N, T, S, S, 3)`` → ``float32 (N, T, 3, S, S)`` on 0-255."""
    return torch.as_tensor(x).permute(0, 1, 4, 2, 3).float()


def train(data: Path, out: Path, epochs: int = 6, seed: int = 0, look_jitter: float = 1.0,
          batch: int = 64, lr: float = 2e-3, cfg: PatchNetConfig | None = None) -> list[float]:
    """Train a probe on extracted neighbourhoods (positives weighted to balance); returns
    the loss of each epoch and writes the weights (a state dict) after each."""
    cfg = cfg or PatchNetConfig()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    d = np.load(data)
    x, y = d["x"], d["y"].astype(np.float32)
    if not 0 < y.mean() < 1:
        raise SystemExit(f"{data}: needs positive and negative neighbourhoods")
    net = PatchNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    steps = max(1, len(y) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps)
    pos_weight = torch.tensor((1 - y.mean()) / y.mean())
    look = LookJitter(look_jitter)
    losses = []
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        net.train()
        total = 0.0
        for b in range(steps):
            idx = np.sort(order[b * batch:(b + 1) * batch])
            oy, ox = rng.integers(0, MARGIN + 1, 2)
            xb = _tensor(x[idx])[..., oy:oy + cfg.crop, ox:ox + cfg.crop]
            for dim in (-1, -2):
                if rng.random() < 0.5:
                    xb = xb.flip(dim)
            if look_jitter:
                xb = torch.stack([look(s, rng) for s in xb])
            loss = F.binary_cross_entropy_with_logits(net(xb), torch.as_tensor(y[idx]),
                                                      pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += float(loss.detach())
        losses.append(total / steps)
        print(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
        torch.save(net.state_dict(), out)
    return losses


def frame_scores(net: PatchNet, root: Path, every: int, segmenter: Segmenter | None = None,
                 candidates: int = 8) -> dict[str, np.ndarray]:
    """Per scored frame: case, label, visible share and the probe's score, the highest
    probability over the segmenter's ``candidates`` map peaks, or with no segmenter over
    every window of the frame (dense); with a segmenter also the map peak's own value; and
    the set's frame rate (its last case's)."""
    cases, labels, visible, scores, peaks = [], [], [], [], []
    side, to_tensor, fps = net.cfg.crop, FrameToTensor(), 30.0
    with torch.inference_mode():
        for case in load_cases(root):
            video = open_video(case.video, fallback_fps=case.fps)
            n, fps = video.frame_count, video.fps
            pixels = {i: rgb for i, _t, rgb in video.frames(0, n)}
            centres = list(range(0, n, every))
            places = (segmenter.peaks(pixels, centres, n, video.fps, candidates)
                      if segmenter is not None else None)
            for k, i in enumerate(centres):
                frames = frame_indices(i, n, video.fps, net.cfg)
                if places is None:
                    stack = torch.stack([to_tensor(pixels[f]) for f in frames])
                    scores.append(float(torch.sigmoid(net.dense(stack).max())))
                else:
                    found = places[k]
                    xs = np.stack([neighbourhood(pixels, frames, y, x, side) for y, x, _ in found]
                                  ) if found else None
                    scores.append(float(torch.sigmoid(net(_tensor(xs))).max())
                                  if xs is not None else 0.0)
                    peaks.append(found[0][2] if found else 0.0)
                cases.append(case.case_id)
                labels.append(int(case.frame_labels[i]))
                visible.append(float(case.active_fraction[i])
                               if case.active_fraction is not None else float("nan"))
    out = {"case": np.array(cases), "y": np.array(labels, int), "visible": np.array(visible),
           "score": np.array(scores), "fps": np.array(fps)}
    if segmenter is not None:
        out["map_peak"] = np.array(peaks)
    return out


def moving_mean(scores: np.ndarray, cases: np.ndarray, width: int) -> np.ndarray:
    """Each case's scores averaged over ``width`` consecutive frames (edges repeated)."""
    out = scores.astype(float).copy()
    if width <= 1:
        return out
    for c in np.unique(cases):
        sel = cases == c
        padded = np.pad(scores[sel], (width // 2, width - 1 - width // 2), mode="edge")
        out[sel] = np.convolve(padded, np.ones(width) / width, "valid")
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


def score(net_path: Path, sets: dict[str, Path], every: int = 6, smooth_s: float = 1.0,
          still: str | None = None, segmenter: Segmenter | None = None,
          candidates: int = 8) -> dict[str, Any]:
    """The report of the module docstring."""
    net = PatchNet()
    net.load_state_dict(torch.load(net_path))
    net.eval()
    raw = {name: frame_scores(net, root, every, segmenter, candidates)
           for name, root in sets.items()}
    report: dict[str, Any] = {"every": every, "smooth_s": smooth_s,
                              "where": "dense" if segmenter is None else f"{candidates} map peaks"}
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
    e = sub.add_parser("extract", help="training neighbourhoods of a rawframes set")
    e.add_argument("arch")
    e.add_argument("seg_checkpoint", type=Path)
    e.add_argument("root", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--candidates", type=int, default=8)
    e.add_argument("--rand-neg", type=int, default=4)
    e.add_argument("--extra-pos", type=int, default=2)
    e.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="train a probe")
    t.add_argument("data", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--look-jitter", type=float, default=1.0)
    s = sub.add_parser("score", help="score a probe on video sets")
    s.add_argument("net", type=Path)
    s.add_argument("sets", nargs="+", help="NAME=DIR: amagi synth video sets")
    s.add_argument("--every", type=int, default=6)
    s.add_argument("--smooth-s", type=float, default=1.0)
    s.add_argument("--still", default=None, help="a bleeding-free set's NAME")
    s.add_argument("--seg", nargs=2, metavar=("ARCH", "SEG_CHECKPOINT"), default=None,
                   help="score the probe at this segmenter's map peaks (default: every window)")
    s.add_argument("--candidates", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "extract":
        result: Any = extract(Segmenter(args.arch, args.seg_checkpoint), args.root, args.out,
                              PatchNetConfig(), args.candidates, args.rand_neg, args.extra_pos,
                              args.seed)
    elif args.command == "train":
        result = {"losses": train(args.data, args.out, args.epochs, args.seed,
                                  args.look_jitter)}
    else:
        sets = {}
        for item in args.sets:
            name, _, folder = item.partition("=")
            if not folder:
                p.error(f"expected NAME=DIR, got {item!r}")
            sets[name] = Path(folder)
        segmenter = Segmenter(args.seg[0], Path(args.seg[1])) if args.seg else None
        result = score(args.net, sets, args.every, args.smooth_s, args.still, segmenter,
                       args.candidates)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
