"""TemporalRefiner: a video's bleeding probabilities, re-read over tens of seconds.

This project's network, not the authors'. A clip model decides from about two seconds of
video. Two things it cannot see there decide whether blood is *actively* bleeding:
- the video's baseline. The look of a scene and blood merely present in it shift every
  clip's probability alike, by a different amount in each video. Measured on the demo's
  held-out looks, the median probability of non-bleeding instants ranged from 0.26 to 0.58
  between videos, while bleeding raised it by about 0.1 within each
  (models/weights/demo/heldout-looks/README.md, session 14);
- the course of an event: onset, growth, a stop, against a steady background.

So a small temporal convolutional network reads the whole sequence of one video's
probabilities and returns refined ones, as multi-stage temporal convolutional networks
refine frame-wise scores for action and surgical phase segmentation (MS-TCN: Farha & Gall,
CVPR 2019; TeCNO: Czempiel et al., MICCAI 2020): a 1x1 input layer, residual layers of
dilated non-causal convolutions (kernel 3, dilations 1, 2, 4, ...) and a 1x1 output layer.
Its inputs at each instant (:func:`refiner_features`) are the logit of the probability and
the same logit less its median over the video, so the baseline is given, not guessed.

The refiner works at one prediction rate (``rate_hz``, the rate it was trained at): a
sequence at another rate is resampled to it and back (:meth:`TemporalRefiner.refine`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.checkpoint import read_checkpoint, save_checkpoint
from models.errors import CheckpointError, ModelConfigError

__all__ = ["FEATURES", "RefinerConfig", "TemporalRefiner", "load_refiner", "refiner_features",
           "save_refiner"]

#: The input features, in order (:func:`refiner_features`).
FEATURES = ("logit", "logit_minus_video_median")
_EPS = 1e-4  # probabilities are clipped to [eps, 1 - eps] before the logit


@dataclass(frozen=True)
class RefinerConfig:
    """Architecture of a :class:`TemporalRefiner` and the rate its dilations assume."""

    width: int = 8
    layers: int = 8
    dropout: float = 0.2
    rate_hz: float = 10.0

    def __post_init__(self) -> None:
        if self.width < 1 or self.layers < 1:
            raise ModelConfigError(f"refiner width and layers must be >= 1, got {self.width}, "
                                   f"{self.layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"refiner dropout must lie in [0, 1), got {self.dropout}")
        if not self.rate_hz > 0:
            raise ModelConfigError(f"refiner rate_hz must be positive, got {self.rate_hz}")

    @property
    def receptive_field(self) -> int:
        """Samples each output sees on either side of its instant."""
        return 2 ** self.layers - 1


def refiner_features(probabilities: np.ndarray) -> np.ndarray:
    """The refiner's input ``(len(FEATURES), T)`` for one video's probabilities ``(T,)``."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"expected a non-empty sequence of probabilities, got shape {p.shape}")
    z = np.log(p / (1.0 - p))
    return np.stack([z, z - np.median(z)]).astype(np.float32)


class _Residual(nn.Module):
    def __init__(self, width: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, 3, dilation=dilation, padding=dilation)
        self.mix = nn.Conv1d(width, width, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.mix(torch.relu(self.conv(x))))


class TemporalRefiner(nn.Module):
    """``forward(x)``: features ``(N, len(FEATURES), T)`` → bleeding logits ``(N, T)``."""

    def __init__(self, cfg: RefinerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or RefinerConfig()
        self.inp = nn.Conv1d(len(FEATURES), self.cfg.width, 1)
        self.blocks = nn.Sequential(*(_Residual(self.cfg.width, 2 ** i, self.cfg.dropout)
                                      for i in range(self.cfg.layers)))
        self.out = nn.Conv1d(self.cfg.width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x)))[:, 0]

    @torch.no_grad()
    def refine(self, probabilities: np.ndarray, rate_hz: float | None = None) -> np.ndarray:
        """Refined probabilities of one video's sequence ``(T,)`` sampled at ``rate_hz``
        (default: the refiner's own rate; another is resampled to it and back)."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.size == 0:
            return p.copy()
        rate = self.cfg.rate_hz if rate_hz is None else float(rate_hz)
        t = np.arange(p.size) / rate
        resample = abs(rate - self.cfg.rate_hz) > 1e-9
        if resample:
            grid = np.arange(max(1, round(t[-1] * self.cfg.rate_hz) + 1)) / self.cfg.rate_hz
            p = np.interp(grid, t, p)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        x = torch.from_numpy(refiner_features(p))[None].to(device)
        out = torch.sigmoid(self(x)[0]).double().cpu().numpy()
        self.train(was_training)
        return np.interp(t, grid, out) if resample else out


def save_refiner(refiner: TemporalRefiner, path: str | os.PathLike[str],
                 meta: dict[str, Any] | None = None) -> Path:
    """Write a refiner checkpoint: its weights, its :class:`RefinerConfig` and ``meta``."""
    return save_checkpoint(refiner, path, meta={**(meta or {}), "arch": "temporal_refiner",
                                                "refiner": asdict(refiner.cfg),
                                                "features": list(FEATURES)})


def load_refiner(path: str | os.PathLike[str], device: str = "cpu") -> TemporalRefiner:
    """A refiner from :func:`save_refiner`'s file, in eval mode; a file that is not one is a
    :class:`~models.errors.CheckpointError`."""
    obj = read_checkpoint(path)
    meta = obj.get("meta", {}) if isinstance(obj, dict) else {}
    if meta.get("arch") != "temporal_refiner" or not isinstance(meta.get("refiner"), dict):
        raise CheckpointError(f"{path}: not a temporal refiner checkpoint (meta.arch is "
                              f"{meta.get('arch')!r})")
    if list(meta.get("features", [])) != list(FEATURES):
        raise CheckpointError(f"{path}: the refiner reads features {meta.get('features')}, "
                              f"this version {list(FEATURES)}")
    try:
        refiner = TemporalRefiner(RefinerConfig(**meta["refiner"]))
        refiner.load_state_dict(obj["state_dict"])
    except (TypeError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: refiner checkpoint does not fit: {e}") from None
    return refiner.eval().to(device)
