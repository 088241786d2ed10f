"""Training a :class:`~models.refiner.TemporalRefiner` on a clip model's predictions.

The data are whole videos: one model's probability per prediction instant and the truth
label of that instant (``amagi evaluate``'s ``predictions.json`` holds both). The videos
must be ones the clip model did not train on, or the refiner learns the model's training
fit instead of its errors on new video.

Each step draws ``batch`` videos and a window of ``window`` instants from each. The loss is
class-balanced binary cross-entropy plus MS-TCN's smoothing term (the truncated squared
difference of neighbouring log-probabilities, weight ``smoothing``; Farha & Gall, CVPR
2019), which discourages flickering decisions. ``offset`` shifts each drawn window's logits
by a random amount in ±``offset`` (the second feature, relative to the video's median, is
unchanged by such a shift): the look of unseen video moves the baseline, so the absolute
level should not be trusted more than the training videos justify.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from models.errors import ModelError
from models.refiner import RefinerConfig, TemporalRefiner, refiner_features

__all__ = ["RefinerTrainConfig", "RefinerTrainResult", "train_refiner"]


@dataclass(frozen=True)
class RefinerTrainConfig:
    steps: int = 400
    batch: int = 8
    window: int = 300  # instants per drawn window (30 s at 10 Hz)
    lr: float = 1e-3
    weight_decay: float = 1e-2
    smoothing: float = 0.15
    offset: float = 1.0
    seed: int = 0
    architecture: RefinerConfig = field(default_factory=RefinerConfig)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.window < 2:
            raise ModelError(f"refiner training needs steps, batch >= 1 and window >= 2, got "
                             f"{self.steps}, {self.batch}, {self.window}")
        if self.offset < 0 or self.smoothing < 0 or not self.lr > 0:
            raise ModelError("refiner training: offset and smoothing must be >= 0, lr > 0")


@dataclass
class RefinerTrainResult:
    refiner: TemporalRefiner
    losses: list[float]  # mean loss per 50 steps
    positive_share: float
    videos: int
    seconds: float


def train_refiner(videos: Sequence[tuple[np.ndarray, np.ndarray]],
                  cfg: RefinerTrainConfig | None = None,
                  progress: Callable[[int, int], None] | None = None) -> RefinerTrainResult:
    """A refiner trained on ``videos``: ``(probabilities, labels)`` per video, at the
    refiner's ``rate_hz``. Deterministic for a seed (on one CPU thread)."""
    cfg = cfg or RefinerTrainConfig()
    data = [(refiner_features(p), np.asarray(y, dtype=np.float32)) for p, y in videos]
    if not data:
        raise ModelError("no video to train the refiner on")
    for (x, y), (p, _) in zip(data, videos, strict=True):
        if y.shape != (x.shape[1],) or not np.isin(y, (0.0, 1.0)).all():
            raise ModelError(f"refiner training: labels must be 0/1, one per probability "
                             f"(got {y.shape} for {np.shape(p)})")
    positives = float(sum(y.sum() for _, y in data))
    total = float(sum(y.size for _, y in data))
    if positives == 0 or positives == total:
        raise ModelError("refiner training needs bleeding and non-bleeding instants")
    share = positives / total
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = TemporalRefiner(cfg.architecture)
    opt = torch.optim.AdamW(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    pos_weight = torch.tensor((1.0 - share) / share)
    losses: list[float] = []
    running = 0.0
    net.train()
    for step in range(cfg.steps):
        loss = torch.zeros(())
        for i in rng.choice(len(data), size=cfg.batch, replace=len(data) < cfg.batch):
            x, y = data[i]
            a = int(rng.integers(0, max(1, x.shape[1] - cfg.window + 1)))
            xw = torch.from_numpy(x[:, a:a + cfg.window].copy())
            if cfg.offset:
                xw[0] += float(rng.uniform(-cfg.offset, cfg.offset))
            yw = torch.from_numpy(y[a:a + cfg.window])
            logits = net(xw[None])[0]
            loss = loss + F.binary_cross_entropy_with_logits(logits, yw, pos_weight=pos_weight)
            if cfg.smoothing and logits.numel() > 1:
                logp = F.logsigmoid(torch.stack([logits, -logits]))
                diff = (logp[:, 1:] - logp[:, :-1].detach()) ** 2
                loss = loss + cfg.smoothing * diff.clamp(max=16.0).mean()
        loss = loss / cfg.batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += float(loss.detach())
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            losses.append(running / ((step % 50) + 1))
            running = 0.0
        if progress:
            progress(step + 1, cfg.steps)
    net.eval()
    return RefinerTrainResult(net, losses, share, len(data), time.perf_counter() - t0)
