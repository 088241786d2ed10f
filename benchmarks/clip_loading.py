"""Training clips loaded per second by one data-loading process, against the loading of
session 39 (the baseline), measured in the same run.

Usage::

    .venv/bin/python benchmarks/clip_loading.py            # 300 clips a case, best of 3
    .venv/bin/python benchmarks/clip_loading.py --quick    # 60 clips, best of 2

Why: on the lent H200 (session 40) the demo's two clip networks trained at 34 s an epoch
each, side by side, whatever their architecture, with 7 loading processes each: about
33 ms a clip a process, the loading's own cost on this machine's cores. The GPU waited on
the CPU. This measures :class:`models.training.data.ClipDataset` as ``amagi train clip``
builds it for the demo (``amagi_tiny_tge``: 8 frames 3 apart, 128 pixels; look jitter 1,
still negatives 0.35), one process, one torch thread (as a loading worker), on JPEG
rawframes written here (160x128, smooth textured frames). Rows: cold (every frame decoded;
a worker's first epoch, and every epoch as the loaders are made again each epoch) and warm
(frames cached), with and without look jitter; then with the look left to the training
device (``look_on_device``, what ``amagi train clip`` does on a GPU), against the baseline
with look jitter, and that finishing's cost per clip on this CPU.

The baseline is the same dataset with session 39's preprocessing, kept here: MONAI's
``NormalizeIntensity(channel_wise=True)`` over the clip's 3·T channels, MONAI's metadata
tracking on during the crop and resize, the look jitter's sensor noise drawn by numpy in
float64. Both produce the same clip, bit for bit, except the noise's draws (the same
distribution, other numbers; the benchmark checks the rest).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model
from models.training.augment import ClipAugment, LookJitter
from models.training.data import ClipDataset, ClipRecord, FrameCache


class _BaselineLook(LookJitter):
    """Session 39's look jitter: the noise drawn by numpy in float64."""

    @staticmethod
    def noise(shape, sigma: float, rng: np.random.Generator) -> torch.Tensor:
        return torch.as_tensor(rng.normal(0.0, sigma, tuple(shape)), dtype=torch.float32)


class _BaselineAugment(ClipAugment):
    """Session 39's clip preprocessing (see the module's docstring)."""

    def __init__(self, size, mean, std, train=True, look_jitter=0.0):
        super().__init__(size, mean, std, train=train, look_jitter=look_jitter)
        self.look = _BaselineLook(look_jitter)

    def _random_crop(self, flat: torch.Tensor, seed: int) -> torch.Tensor:
        """With MONAI's metadata tracking on."""
        self.random.set_random_state(seed=int(seed) % (2**32))
        return torch.as_tensor(self.random(flat)).as_subclass(torch.Tensor)

    def _normalised(self, flat: torch.Tensor, t: int) -> torch.Tensor:
        """MONAI's channel-wise normalisation over the 3·T channels."""
        from monai.transforms import NormalizeIntensity

        mean, std = self.mean.flatten().numpy(), self.std.flatten().numpy()
        norm = NormalizeIntensity(subtrahend=np.repeat(mean, t), divisor=np.repeat(std, t),
                                  channel_wise=True)
        out = torch.as_tensor(norm(flat)).as_subclass(torch.Tensor)
        return out.reshape(3, t, self.size, self.size).contiguous()


def _write_case(folder: Path, frames: int, seed: int) -> None:
    """Smooth, moving, textured 160x128 frames as JPEG rawframes (quality 90)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 220, (40, 48, 3)).astype(np.float32)
    big = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((320, 256), Image.BICUBIC))
    folder.mkdir(parents=True)
    for k in range(frames):
        dx, dy = int(40 + 30 * math.sin(k / 20)), int(30 + 20 * math.cos(k / 25))
        frame = big[dy:dy + 128, dx:dx + 160].astype(np.float32) + rng.normal(0, 4, (128, 160, 3))
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(
            folder / f"img_{k + 1:05d}.jpg", quality=90)


def _dataset(records, cfg, baseline: bool, look: float, on_device: bool = False
             ) -> ClipDataset:
    ds = ClipDataset(records, cfg.input_size, cfg.mean, cfg.std, cfg.clip_len,
                     cfg.frame_interval, train=True, seed=7, still_negatives=0.35,
                     look_jitter=look, cache=FrameCache(), look_on_device=on_device)
    if baseline:
        ds.augment = _BaselineAugment(cfg.input_size, cfg.mean, cfg.std, train=True,
                                      look_jitter=look)
    return ds


def _ms_per_clip(ds: ClipDataset, items: list[int], cold: bool, rounds: int) -> float:
    best = math.inf
    for _ in range(rounds):
        if cold:
            ds.cache = FrameCache()
        else:
            for i in items:  # fill the cache
                ds[i]
        t0 = time.perf_counter()
        for i in items:
            ds[i]
        best = min(best, (time.perf_counter() - t0) / len(items) * 1e3)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="60 clips, best of 2")
    p.add_argument("--arch", default="amagi_tiny_tge")
    args = p.parse_args(argv)
    clips, rounds = (60, 2) if args.quick else (300, 3)
    torch.set_num_threads(1)
    cfg = build_model(args.arch).default_cfg
    with tempfile.TemporaryDirectory() as tmp:
        records = []
        for c in range(2):
            folder = Path(tmp) / f"case{c}"
            _write_case(folder, 240, c)
            records.append(ClipRecord(folder, 240, c % 2, f"p{c}"))
        records = [records[k % 2] for k in range(clips)]  # half bleeding: still negatives drawn
        items = list(range(clips))
        # the same clip from both, but for the noise's draws
        a = _dataset(records, cfg, False, 0.0)[1][0]
        b = _dataset(records, cfg, True, 0.0)[1][0]
        if not torch.equal(a, b):
            raise SystemExit("the baseline and the current loading differ without look jitter")
        print(f"{args.arch}: {cfg.clip_len} frames {cfg.frame_interval} apart at "
              f"{cfg.input_size} px, still negatives 0.35; one process, 1 torch thread; "
              f"{clips} clips, best of {rounds}")
        print(f"{'case':<34}{'baseline ms':>12}{'now ms':>9}{'clips/s now':>13}{'speed-up':>10}")
        for look in (1.0, 0.0):
            for cold in (True, False):
                base = _ms_per_clip(_dataset(records, cfg, True, look), items, cold, rounds)
                now = _ms_per_clip(_dataset(records, cfg, False, look), items, cold, rounds)
                name = f"look jitter {look:g}, {'cold (JPEG decoded)' if cold else 'warm'}"
                print(f"{name:<34}{base:>12.1f}{now:>9.1f}{1e3 / now:>13.0f}{base / now:>9.2f}×")
        # the look left to the training device (``look_on_device``, a GPU build's loaders)
        deferred = _dataset(records, cfg, False, 1.0, on_device=True)
        for cold in (True, False):
            base = _ms_per_clip(_dataset(records, cfg, True, 1.0), items, cold, rounds)
            now = _ms_per_clip(deferred, items, cold, rounds)
            name = f"look on the device, {'cold' if cold else 'warm'}"
            print(f"{name:<34}{base:>12.1f}{now:>9.1f}{1e3 / now:>13.0f}{base / now:>9.2f}×")
        batch = [deferred[i] for i in items[:32]]
        x, seeds = torch.stack([b[0] for b in batch]), torch.tensor([b[2] for b in batch])
        best = min(_timed(lambda: deferred.finish_batch(x, seeds)) for _ in range(rounds))
        print(f"the look finished on this CPU instead, a batch of {len(batch)}: "
              f"{best / len(batch) * 1e3:.1f} ms a clip (why CPU training keeps it in the "
              f"loaders)")
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main())
