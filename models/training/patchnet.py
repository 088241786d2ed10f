"""Training a :class:`~models.patchnet.PatchNet` probe on extracted neighbourhoods.

The data are neighbourhoods ``uint8 (N, frames, side, side, 3)`` with ``side = crop +
margin`` and a label each (``amagi_plugin.probe_training`` extracts them at bleeding masks
and at a segmenter's map peaks). Each step draws a batch, one random ``crop`` square of
the ``side`` square for the whole batch, random flips and a :class:`LookJitter` per sample:
only the neighbourhood's change over time survives every look. Positives are weighted to
balance the classes (so the probe's probabilities are not calibrated: an operating point
is chosen with it in analysis). AdamW with a one-cycle schedule (session 25's recipe).

Four kinds of negatives can be made from each batch's positives (sessions 27, 36 and 58),
because what the probe must not read as flow is red that changes without spreading:

- ``reversed_negatives``: the positive played backwards. Bleeding that spreads, reversed, is
  blood that shrinks (a pool under suction, blood washed away): the same frames, the same
  look, the opposite direction of change.
- ``sliding_negatives``: one frame of the positive moved rigidly across the frames (a
  random direction, 1-3 px a frame, edges mirrored): red that moves without growing, as a
  stained instrument or a pool carried by the camera.
- ``view_negatives``: one frame of the positive held while the view changes (session 36):
  zoomed in or out about a random point by up to :data:`VIEW_ZOOM` over the frames (red
  that grows because the camera comes closer, its texture growing with it) under light
  whose gain drifts by up to :data:`VIEW_GAIN` (a changing exposure or a light source
  moving). The generator's camera zooms by at most about 8 % a second; session 35 found
  faster zooms and flicker lifting still blood's score towards the alarm threshold.
- ``hinged_negatives``: one frame of the positive cut in two along a line through a pivot,
  the two halves turning about it in opposite directions and back (up to :data:`HINGE_DEG`
  each way), the whole carried 0-2 px a frame (session 58): red carried by an instrument's
  opening and closing jaws. A stain on moving jaws changes shape without growing; a rigid
  slide does not show that, and the probe read a stained tip in held-out looks as bleeding
  (heldout-looks/README.md, session 57).

Each is weighted relative to a positive (0: none made). Measured on held-out looks
(models/weights/demo/heldout-looks/README.md, session 27): sliding negatives made the point
chosen on training-look validation find more held-out bleeding; reversed ones lowered the
probe's transfer, since in its view labelled bleeding shrinks almost as often as it grows;
view negatives (session 36) lowered still blood's score under hostile views (highest 0.75 →
0.64) and kept the validation-chosen point, but found 2 fewer of the gate's 24 events (off in
the recipes).
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
    #: weight of one frame of each positive held under a zooming view and drifting light
    view_negatives: float = 0.0
    #: weight of one frame of each positive cut in two, its halves turning like jaws
    hinged_negatives: float = 0.0
    architecture: PatchNetConfig = field(default_factory=PatchNetConfig)
    #: the network's forward pass in ``"bf16"`` autocast or ``"fp32"``
    #: (:data:`models.training.loops.PRECISIONS`; weights and optimiser stay fp32)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        from models.training.loops import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{self.precision!r}")
        made = {"reversed": self.reversed_negatives, "sliding": self.sliding_negatives,
                "view": self.view_negatives, "hinged": self.hinged_negatives}
        if any(not w >= 0 for w in made.values()):
            raise ModelError(f"the weights of made negatives must be >= 0, got {made}")


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


#: Largest zoom of a view negative over its frames (×1.35 or ÷1.35 from first to last frame)
VIEW_ZOOM = 1.35
#: Largest light change of a view negative over its frames (gain ×1.3 or ÷1.3)
VIEW_GAIN = 1.3


def view(frame: torch.Tensor, steps: int, zoom: float, gain: float,
         centre: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """``(3, S, S)`` on the 0-255 scale → ``(steps, 3, S, S)``: the frame seen by a view
    that zooms about ``centre`` (``(y, x)`` in -1..1, the square's own coordinates) under
    light whose gain changes: both change geometrically, by ``zoom`` and ``gain`` from the
    first step to the last, and the middle step (``steps // 2``) is the frame itself
    (bilinear, edges mirrored, clipped to 0-255)."""
    if zoom <= 0 or gain <= 0:
        raise ValueError(f"zoom and gain must be > 0, got {zoom} and {gain}")
    u = torch.linspace(-0.5, 0.5, steps, dtype=torch.float64)
    u = u - u[steps // 2]  # the middle step sees the frame as it is (one step: u = 0)
    scale = torch.as_tensor(zoom, dtype=torch.float64) ** u
    cy, cx = centre
    theta = torch.zeros(steps, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, 0, 2] = cx * (1 - 1 / scale)
    theta[:, 1, 2] = cy * (1 - 1 / scale)
    grid = F.affine_grid(theta.to(frame.dtype), [steps, *frame.shape], align_corners=False)
    out = F.grid_sample(frame.expand(steps, *frame.shape), grid, mode="bilinear",
                        padding_mode="reflection", align_corners=False)
    light = (torch.as_tensor(gain, dtype=torch.float64) ** u).to(frame.dtype)
    return (out * light.view(steps, 1, 1, 1)).clamp(0, 255)


#: Largest turn (degrees) of each half of a hinged negative away from the frame as it is
HINGE_DEG = 25.0


def hinge(frame: torch.Tensor, steps: int, angles_deg: np.ndarray, pivot: tuple[float, float],
          line_deg: float, velocity: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """``(3, S, S)`` → ``(steps, 3, S, S)``: the frame cut in two by the line through
    ``pivot`` (``(y, x)`` in -1..1, the square's own coordinates) at ``line_deg``; at step
    ``t`` one half is turned about the pivot by ``angles_deg[t]`` and the other by minus that
    (jaws opening by twice the angle), and the whole is carried by ``velocity`` (y, x) pixels
    a step from the middle step (bilinear, edges mirrored)."""
    if len(angles_deg) != steps:
        raise ValueError(f"{steps} steps need {steps} angles, got {len(angles_deg)}")
    s = frame.shape[-1]
    lin = (torch.arange(s, dtype=torch.float64) + 0.5) * 2 / s - 1  # pixel centres, -1..1
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    py, px = pivot
    a = np.deg2rad(line_deg)
    side = torch.where((gx - px) * np.sin(a) - (gy - py) * np.cos(a) >= 0, 1.0, -1.0)
    # every step at once, (steps, S, S): each output pixel's half's turn, the carried offset
    turn = torch.as_tensor(np.deg2rad(np.asarray(angles_deg, float)), dtype=side.dtype)
    th = side * turn[:, None, None]
    u = (torch.arange(steps, dtype=torch.float64) - steps // 2)[:, None, None]
    qy, qx = gy - py - velocity[0] * u * 2 / s, gx - px - velocity[1] * u * 2 / s
    # where the turned half's pixel came from: the inverse turn about the pivot
    sx = px + qx * torch.cos(th) + qy * torch.sin(th)
    sy = py - qx * torch.sin(th) + qy * torch.cos(th)
    grid = torch.stack([sx, sy], -1).to(frame.dtype)
    return F.grid_sample(frame.expand(steps, *frame.shape), grid, mode="bilinear",
                         padding_mode="reflection", align_corners=False)


def _made_negatives(xb: torch.Tensor, yb: torch.Tensor, cfg: PatchTrainConfig,
                    rng: np.random.Generator) -> list[tuple[torch.Tensor, float]]:
    """The batch's positives played backwards, slid, viewed and hinged (module docstring),
    as asked, each with its weight relative to a positive."""
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
    if cfg.view_negatives and len(pos):
        t = pos.shape[1]
        ks = rng.integers(0, t, len(pos))
        zooms = np.exp(rng.uniform(-1, 1, len(pos)) * np.log(VIEW_ZOOM))
        gains = np.exp(rng.uniform(-1, 1, len(pos)) * np.log(VIEW_GAIN))
        centres = rng.uniform(-1, 1, (len(pos), 2))
        out.append((torch.stack([view(p[k], t, float(z), float(g), (float(c[0]), float(c[1])))
                                 for p, k, z, g, c in zip(pos, ks, zooms, gains, centres,
                                                          strict=True)]),
                    cfg.view_negatives))
    if cfg.hinged_negatives and len(pos):
        t = pos.shape[1]
        ks = rng.integers(0, t, len(pos))
        made = []
        for p, k in zip(pos, ks, strict=True):
            # open and close 0.3-1 times over the frames, from the frame as it is (turn 0)
            cycles, phase = rng.uniform(0.3, 1.0), rng.uniform(0, 2 * np.pi)
            u = np.arange(t) / max(1, t - 1)
            wave = np.sin(2 * np.pi * cycles * u + phase)
            angles = rng.uniform(0.3, 1.0) * HINGE_DEG * (wave - wave[k]) / 2
            angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 2.0)
            made.append(hinge(p[k], t, angles, tuple(rng.uniform(-0.5, 0.5, 2)),
                              rng.uniform(0, 180), (speed * np.sin(angle),
                                                    speed * np.cos(angle))))
        out.append((torch.stack(made), cfg.hinged_negatives))
    return out


def train_patchnet(x: np.ndarray, y: np.ndarray, cfg: PatchTrainConfig | None = None,
                   progress: Callable[[int, int, float], None] | None = None,
                   device: str | torch.device = "cpu") -> PatchTrainResult:
    """Train a probe on neighbourhoods ``x`` (module docstring) with labels ``y`` (0/1);
    ``progress(epoch, epochs, loss)`` after each epoch. The network trains on ``device``
    (each batch is drawn and jittered on the CPU with the same random numbers whatever the
    device); the trained network comes back on the CPU."""
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
    net = PatchNet(arch).to(device)
    opt = torch.optim.AdamW(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(y) // cfg.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps)
    pos_weight = torch.tensor((1 - y.mean()) / y.mean())
    look = LookJitter(cfg.look_jitter)
    losses: list[float] = []
    device_type, bf16 = torch.device(device).type, cfg.precision == "bf16"
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
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(xb.to(device))
            loss = (F.binary_cross_entropy_with_logits(logits.float(), yb.to(device),
                                                       reduction="none")
                    * weight.to(device)).sum() / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += float(loss.detach())
        losses.append(total / steps)
        if progress:
            progress(epoch + 1, cfg.epochs, losses[-1])
    return PatchTrainResult(net.cpu().eval(), losses, len(y), float(y.mean()),
                            time.perf_counter() - t0)
