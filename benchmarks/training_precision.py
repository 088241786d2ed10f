"""Training steps in bf16 autocast (``amagi train --precision bf16``) against fp32, the
baseline, measured in the same run; and how far one batch's bf16 gradient lies from fp32's.

Usage::

    .venv/bin/python benchmarks/training_precision.py            # best of 3 steps, 4 batches
    .venv/bin/python benchmarks/training_precision.py --quick    # best of 2, 2 batches

On the bundled demo's two clip networks (``amagi_tiny_tge`` and its SlowFast baseline, their
trained weights), batch 32 of 128-pixel clips of the demo's training looks (``amagi synth
--domain randomised``, 4 cases written once to ``benchmarks/out``; look jitter 1, still
negatives 0.35, the demo's recipe): one training step (forward, weighted cross-entropy,
backward, SGD) in fp32 and under bf16 autocast, with 1 and 2 torch threads; then, for a few
batches, the cosine between the fp32 and the bf16 gradient of the same batch, against the
cosine between the fp32 gradients of two different batches (SGD's own step-to-step noise).
bf16 is only worth it where the CPU computes it natively (AMX); elsewhere the script says
so and measures fp32 alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from amagi_plugin.modelspec import DEMO_DIR, bf16_native  # noqa: E402
from models import build_model, load_checkpoint  # noqa: E402
from models.training import (  # noqa: E402
    ClipDataset,
    balanced_class_weights,
    read_annotation_list,
)

NETWORKS = (("amagi_tiny_tge", "amagi_tiny_tge_demo.pth"),
            ("slowfast_tiny", "slowfast_tiny_demo.pth"))
BATCH = 32
STILL = 0.35


def training_data(folder: Path) -> Path:
    """4 cases of the demo's training looks as rawframes (made once)."""
    if not (folder / "annotations.txt").is_file():
        subprocess.run([sys.executable, "-m", "amagi_plugin.cli", "synth", "-od", str(folder),
                        "--cases", "4", "--seed", "101", "--duration-s", "12", "--size",
                        "160x128", "--fps", "30", "--formats", "rawframes", "--clip-stride",
                        "12", "--domain", "randomised", "--no-progress", "--overwrite"],
                       check=True, cwd=ROOT.parent)
    return folder / "annotations.txt"


class Net:
    """A demo network with its weights, loss and batches of its training clips."""

    def __init__(self, arch: str, checkpoint: str, annotations: Path) -> None:
        self.model = build_model(arch)
        load_checkpoint(self.model, DEMO_DIR / checkpoint)
        self.model.train()
        cfg = self.model.default_cfg
        records = read_annotation_list(annotations)
        self.ds = ClipDataset(records, cfg.input_size, cfg.mean, cfg.std, cfg.clip_len, seed=7,
                              still_negatives=STILL, look_jitter=1.0)
        self.weights = torch.tensor(balanced_class_weights([r.label for r in records],
                                                           relabelled=STILL))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.state = {k: v.clone() for k, v in self.model.state_dict().items()}

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.ds[int(i)] for i in rng.choice(len(self.ds), BATCH, replace=False)]
        return (torch.stack([x for x, *_ in items]),
                torch.as_tensor([int(y) for _, y, *_ in items]))

    def gradient(self, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, float]:
        """One batch's loss gradient from the trained weights (BN statistics restored)."""
        self.model.load_state_dict(self.state)
        torch.manual_seed(1)  # the same dropout draws
        self.model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(self.model(x), y, weight=self.weights)
        loss.float().backward()
        return (torch.cat([p.grad.flatten() for p in self.params]).detach().clone(),
                float(loss.detach()))

    def step_time(self, x: torch.Tensor, y: torch.Tensor, bf16: bool, repeats: int) -> float:
        """Best time of one SGD step (after a warm-up step)."""
        opt = torch.optim.SGD(self.params, lr=1e-4, momentum=0.9)
        best = float("inf")
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(self.model(x), y, weight=self.weights)
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            opt.step()
            if k:
                best = min(best, time.perf_counter() - t0)
        self.model.load_state_dict(self.state)
        return best


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(u, v, dim=0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="best of 2 steps, 2 batches")
    ap.add_argument("--data", type=Path, default=ROOT / "out" / "training_precision")
    args = ap.parse_args(argv)
    repeats, batches = (2, 2) if args.quick else (3, 4)
    native = bf16_native("cpu")
    annotations = training_data(args.data)
    if not native:
        print("this CPU does not compute bf16 natively (no AMX or AVX512-BF16): "
              "--precision bf16 is refused here; fp32 alone is measured")
    modes = (False, True) if native else (False,)
    print("| network | threads | fp32 step (s) | bf16 step (s) | speed-up |")
    print("|---|---|---|---|---|")
    nets = {arch: Net(arch, ck, annotations) for arch, ck in NETWORKS}
    threads_before = torch.get_num_threads()
    try:
        for arch, net in nets.items():
            x, y = net.batch(np.random.default_rng(0))
            for threads in (1, 2):
                torch.set_num_threads(threads)
                t = [net.step_time(x, y, bf16, repeats) for bf16 in modes]
                bf = f"{t[1]:.3f} | {t[0] / t[1]:.2f}×" if native else "– | –"
                print(f"| {arch} | {threads} | {t[0]:.3f} | {bf} |", flush=True)
        if not native:
            return 0
        torch.set_num_threads(min(2, threads_before))
        print()
        print("| network | batch | cos(bf16, fp32), same batch | cos(fp32, fp32), two "
              "batches | bf16 / fp32 gradient norm | \\|Δloss\\| |")
        print("|---|---|---|---|---|---|")
        for arch, net in nets.items():
            rng = np.random.default_rng(1)
            for k in range(batches):
                (xa, ya), (xb, yb) = net.batch(rng), net.batch(rng)
                g32, l32 = net.gradient(xa, ya, False)
                g16, l16 = net.gradient(xa, ya, True)
                other, _ = net.gradient(xb, yb, False)
                print(f"| {arch} | {k + 1} | {_cos(g32, g16):.4f} | {_cos(g32, other):.4f} | "
                      f"{float(g16.norm() / g32.norm()):.4f} | {abs(l32 - l16):.4f} |",
                      flush=True)
    finally:
        torch.set_num_threads(threads_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
