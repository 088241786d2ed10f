"""SlowFast backbone (two ResNet3d pathways with lateral fusion) and the plain SlowFast head.

Matches mmaction2's ``ResNet3dSlowFast`` and ``SlowFastHead`` as used by the authors
(reference README, quirks 2-4 and 18):

- temporal subsampling is nearest-neighbour: the slow path sees frames ``0, τ, 2τ, ...``
  (τ = ``resample_rate``), the fast path frames ``0, τ/α, ...`` (α = ``speed_ratio``);
- after the stems and after stages 1-3 the fast features go through the slow path's lateral
  conv and are concatenated *after* the slow features;
- the head pools both pathways and concatenates ``[fast, slow]`` (mmaction2 swaps the names
  on unpacking, so the fast pathway's features come first in the FC input).
"""

from __future__ import annotations

import torch
from torch import nn

from models.errors import InputShapeError, ModelConfigError
from models.resnet3d import ResNet3dPathway

__all__ = ["SlowFast", "SlowFastHead", "temporal_subsample"]

Pathways = tuple[torch.Tensor, torch.Tensor]


def temporal_subsample(x: torch.Tensor, rate: int) -> torch.Tensor:
    """Every ``rate``-th frame of ``x`` (N, C, T, H, W), as ``F.interpolate(mode='nearest')``.

    Nearest interpolation with scale ``1/rate`` keeps frames ``0, rate, 2·rate, ...`` and
    ``T // rate`` of them; this view selects the same frames without copying.
    """
    if rate == 1:
        return x
    t = x.shape[2] // rate
    return x[:, :, : t * rate : rate]


class SlowFast(nn.Module):
    """SlowFast backbone: ``slow_path`` then ``fast_path``, as in mmaction2's key layout.

    Parameters
    ----------
    slow_path : ResNet3dPathway
        The slow pathway, built with ``lateral_channels`` matching ``fast_path``.
    fast_path : ResNet3dPathway
        The fast pathway (no laterals).
    resample_rate : int
        τ: the slow path takes every τ-th frame.
    speed_ratio : int
        α: the fast path takes every (τ/α)-th frame.
    """

    def __init__(self, slow_path: ResNet3dPathway, fast_path: ResNet3dPathway,
                 resample_rate: int, speed_ratio: int) -> None:
        super().__init__()
        if resample_rate < 1 or speed_ratio < 1 or resample_rate % speed_ratio:
            raise ModelConfigError(
                f"resample_rate ({resample_rate}) must be a positive multiple of "
                f"speed_ratio ({speed_ratio})")
        self.slow_path = slow_path
        self.fast_path = fast_path
        self.resample_rate = resample_rate
        self.speed_ratio = speed_ratio

    @property
    def out_channels(self) -> tuple[int, int]:
        """Channels of the (slow, fast) outputs."""
        return self.slow_path.out_channels, self.fast_path.out_channels

    def forward(self, x: torch.Tensor) -> Pathways:
        """Run both pathways.

        Parameters
        ----------
        x : Tensor (N, 3, T, H, W)
            Normalised clip.

        Returns
        -------
        (x_slow, x_fast) : (N, C_s, T/τ, H/32, W/32), (N, C_f, T·α/τ, H/32, W/32)
        """
        if x.dim() != 5:
            raise InputShapeError(f"SlowFast expects (N, C, T, H, W), got shape {tuple(x.shape)}")
        slow, fast = self.slow_path, self.fast_path
        x_slow = slow.stem(temporal_subsample(x, self.resample_rate))
        x_fast = fast.stem(temporal_subsample(x, self.resample_rate // self.speed_ratio))
        if slow.lateral:
            x_slow = torch.cat((x_slow, slow.lateral_conv(0)(x_fast)), dim=1)
        for i in range(4):
            x_slow = slow.stage(i)(x_slow)
            x_fast = fast.stage(i)(x_fast)
            if slow.lateral and i < 3:
                x_slow = torch.cat((x_slow, slow.lateral_conv(i + 1)(x_fast)), dim=1)
        return x_slow, x_fast


class SlowFastHead(nn.Module):
    """Global average pool of both pathways, concat ``[fast, slow]``, dropout, linear.

    Parameters
    ----------
    slow_channels, fast_channels : int
        Output channels of the slow and fast pathway (2048 and 256 for R50).
    num_classes : int
        Number of logits.
    dropout : float
        Dropout before the FC (0.5 in the authors' configs; inactive in eval mode).
    """

    def __init__(self, slow_channels: int, fast_channels: int, num_classes: int,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.fc_cls = nn.Linear(slow_channels + fast_channels, num_classes)
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, features: Pathways) -> torch.Tensor:
        """(x_slow, x_fast) -> logits (N, num_classes)."""
        x_slow, x_fast = features
        x = torch.cat((self.avg_pool(x_fast), self.avg_pool(x_slow)), dim=1)
        x = self.dropout(x)
        return self.fc_cls(x.flatten(1))
