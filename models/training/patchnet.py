"""Training a :class:`~models.patchnet.PatchNet` probe on extracted neighbourhoods.

The data are neighbourhoods ``uint8 (N, frames, side, side, 3)`` with ``side = crop +
margin`` and a label each (``amagi_plugin.probe_training`` extracts them at bleeding masks
and at a segmenter's map peaks). Each step draws a batch, one random ``crop`` square of
the ``side`` square for the whole batch, random flips and a :class:`LookJitter` per sample:
only the neighbourhood's change over time survives every look. Positives are weighted to
balance the classes (so the probe's probabilities are not calibrated: an operating point
is chosen with it in analysis). AdamW with a one-cycle schedule (session 25's recipe).

Two kinds of negatives can be made from each batch's positives (session 27), because what
the probe must not read as flow is red that changes without spreading:

- ``reversed_negatives``: the positive played backwards. Bleeding that spreads, reversed, is
  blood that shrinks (a pool under suction, blood washed away): the same frames, the same
  look, the opposite direction of change.
- ``sliding_negatives``: one frame of the positive moved rigidly across the frames (a
  random direction, 1-3 px a frame, edges mirrored): red that moves without growing, as a
  stained instrument or a pool carried by the camera.

Each is weighted relative to a positive (0: none made). Measured on held-out looks
(models/weights/demo/heldout-looks/README.md, session 27): sliding negatives made the point
chosen on training-look validation find more held-out bleeding; reversed ones lowered the
probe's transfer, since in its view labelled bleeding shrinks almost as often as it grows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from models.errors import ModelError
from models.patchnet import PatchNet, PatchNetConfig
from models.training.augment import LookJitter

__all__ = ["PatchTrainConfig", "PatchTrainResult", "train_patchnet"]


@dataclass(frozen=True)
class PatchTrainConfig:
    epochs: int = 8
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    look_jitter: float = 1.0
    seed: int = 0
    #: weight (relative to a positive) of each positive played backwards, as a negative
    reversed_negatives: float = 0.0
    #: weight (relative to a positive) of one frame of each positive slid rigidly, a negative
    sliding_negatives: float = 0.0
    architecture: PatchNetConfig = field(default_factory=PatchNetConfig)

    def __post_init__(self) -> None:
        if self.reversed_negatives < 0 or self.sliding_negatives < 0:
            raise ModelError(f"the weights of reversed and sliding negatives must be >= 0, "
                             f"got {self.reversed_negatives} and {self.sliding_negatives}")


@dataclass
class PatchTrainResult:
    net: PatchNet
    losses: list[float]  # mean loss of each epoch
    samples: int
    positive_share: float
    seconds: float


def as_frames(x: np.ndarray) -> torch.Tensor:
    """``uint8 (N, T, S, S, 3)`` → ``float32 (N, T, 3, S, S)`` on the 0-255 scale."""
    return torch.as_tensor(x).permute(0, 1, 4, 2, 3).float()


def slide(frame: torch.Tensor, steps: int, velocity: tuple[float, float]) -> torch.Tensor:
    """``(3, S, S)`` → ``(steps, 3, S, S)``: the frame moved by ``velocity`` (y, x) pixels a
    step, rounded to whole pixels, its edges mirrored; centred on the middle step."""
    s = frame.shape[-1]
    pad = int(np.ceil(max(abs(v) for v in velocity) * steps / 2)) + 1
    if pad >= s:
        raise ValueError(f"a slide of {velocity} px over {steps} steps needs more than {s} px")
    big = F.pad(frame[None], (pad, pad, pad, pad), mode="reflect")[0]
    out = []
    for t in range(steps):
        dy, dx = (round(v * (t - steps // 2)) for v in velocity)
        out.append(big[:, pad - dy:pad - dy + s, pad - dx:pad - dx + s])
    return torch.stack(out)


def _made_negatives(xb: torch.Tensor, yb: torch.Tensor, cfg: PatchTrainConfig,
                    rng: np.random.Generator) -> list[tuple[torch.Tensor, float]]:
    """The batch's positives played backwards and slid (module docstring), as asked, each
    with its weight relative to a positive."""
    pos = xb[yb > 0.5]
    out = []
    if cfg.reversed_negatives and len(pos):
        out.append((pos.flip(1), cfg.reversed_negatives))
    if cfg.sliding_negatives and len(pos):
        t = pos.shape[1]
        ks = rng.integers(0, t, len(pos))
        angle = rng.uniform(0, 2 * np.pi, len(pos))
        speed = rng.uniform(1.0, 3.0, len(pos))
        out.append((torch.stack([slide(p[k], t, (v * np.sin(a), v * np.cos(a)))
                                 for p, k, a, v in zip(pos, ks, angle, speed, strict=True)]),
                    cfg.sliding_negatives))
    return out


def train_patchnet(x: np.ndarray, y: np.ndarray, cfg: PatchTrainConfig | None = None,
                   progress: Callable[[int, int, float], None] | None = None
                   ) -> PatchTrainResult:
    """Train a probe on neighbourhoods ``x`` (module docstring) with labels ``y`` (0/1);
    ``progress(epoch, epochs, loss)`` after each epoch."""
    cfg = cfg or PatchTrainConfig()
    arch = cfg.architecture
    y = np.asarray(y, dtype=np.float32)
    if x.ndim != 5 or x.shape[1] != arch.frames or x.shape[-1] != 3 or len(x) != len(y):
        raise ModelError(f"expected neighbourhoods (N, {arch.frames}, S, S, 3) and N labels, "
                         f"got {x.shape} and {y.shape}")
    margin = x.shape[2] - arch.crop
    if margin < 0 or x.shape[2] != x.shape[3]:
        raise ModelError(f"neighbourhoods of {x.shape[2]} x {x.shape[3]} px cannot give "
                         f"{arch.crop} px squares")
    if not 0.0 < float(y.mean()) < 1.0:
        raise ModelError("the probe needs positive and negative neighbourhoods")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = PatchNet(arch)
    opt = torch.optim.AdamW(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(y) // cfg.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps)
    pos_weight = torch.tensor((1 - y.mean()) / y.mean())
    look = LookJitter(cfg.look_jitter)
    losses: list[float] = []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(y))
        net.train()
        total = 0.0
        for b in range(steps):
            idx = np.sort(order[b * cfg.batch:(b + 1) * cfg.batch])
            oy, ox = rng.integers(0, margin + 1, 2)
            xb = as_frames(x[idx])[..., oy:oy + arch.crop, ox:ox + arch.crop]
            for dim in (-1, -2):
                if rng.random() < 0.5:
                    xb = xb.flip(dim)
            if cfg.look_jitter:
                xb = torch.stack([look(s, rng) for s in xb])
            yb = torch.as_tensor(y[idx])
            weight = torch.where(yb > 0.5, pos_weight, 1.0)
            for m, w in _made_negatives(xb, yb, cfg, rng):
                xb = torch.cat([xb, m])
                yb = torch.cat([yb, torch.zeros(len(m))])
                weight = torch.cat([weight, torch.full((len(m),), w * float(pos_weight))])
            loss = (F.binary_cross_entropy_with_logits(net(xb), yb, reduction="none")
                    * weight).sum() / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += float(loss.detach())
        losses.append(total / steps)
        if progress:
            progress(epoch + 1, cfg.epochs, losses[-1])
    return PatchTrainResult(net.eval(), losses, len(y), float(y.mean()),
                            time.perf_counter() - t0)
