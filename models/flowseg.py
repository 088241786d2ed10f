"""FlowSeg: a small temporal bleeding segmenter that keeps full resolution where flow shows.

This project's network, not the authors': AMAGI's demo models use it as their segmentation
net (``amagi_tiny_tg``) so that the map re-weighting the clip features marks blood that
*flows*, which one frame cannot show, rather than all blood. Its interface is HRNet-OCR's
(:class:`models.hrnet_ocr.HRNetOCR`): ``forward(x) -> [aux_logits, logits]``, both
``(N, num_classes, H/4, W/4)``, and ``cfg.in_frames``.

Input: ``in_frames`` (odd) consecutive normalised RGB frames stacked frame-major on the
channel axis, the middle one being the frame segmented. The net first re-expresses them as
the middle frame and each other frame's difference from it, scaled by ``diff_gain``: at
the start of training the network sees change explicitly instead of having to discover a
difference of nearly equal inputs. Then two convolutions at full resolution (the flow
texture of a small bleed is a few pixels long, which a stride-4 stem such as HRNet's
averages away), two at 1/2, three dilated ones at 1/4 for context, and a head on the 1/4
features concatenated with the pooled 1/2 features. ``aux`` is a 1x1 head on the context
features alone (deep supervision, weighted as HRNet-OCR's auxiliary output in training).

Measured against HRNet-W8-OCR with the same 5-frame input, trained the same way on the same
domain-randomised data (models/weights/demo/heldout-looks/README.md, session 9): on held-out
looks, HRNet's map stayed near chance while this one separated active bleeding from still
look-alikes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import InputShapeError, ModelConfigError

__all__ = ["FLOWSEG_TINY", "FlowSeg", "FlowSegConfig"]


@dataclass(frozen=True)
class FlowSegConfig:
    """Architecture of a :class:`FlowSeg` net.

    Attributes
    ----------
    in_frames : int
        Stacked frames (odd, at least 3): the middle one is segmented.
    width : int
        Channels at full resolution (2× at 1/2, 3× at 1/4).
    diff_gain : float
        Scale of the differences from the middle frame.
    num_classes : int
        Logit channels (2: background, bleeding).
    """

    in_frames: int = 5
    width: int = 24
    diff_gain: float = 3.0
    num_classes: int = 2

    def __post_init__(self) -> None:
        if self.in_frames < 3 or self.in_frames % 2 == 0:
            raise ModelConfigError(f"FlowSeg needs an odd number of frames >= 3, got "
                                   f"{self.in_frames}")
        if self.width < 1:
            raise ModelConfigError(f"width must be >= 1, got {self.width}")

    @property
    def in_channels(self) -> int:
        """Input channels: RGB of each stacked frame."""
        return 3 * self.in_frames


FLOWSEG_TINY = FlowSegConfig()
"""5 frames, width 24 (about 0.25 M parameters): the demo models' temporal segmenter."""


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FlowSeg(nn.Module):
    """Temporal segmenter: ``(N, 3·K, H, W)`` -> ``[aux, main]`` logits at 1/4 resolution.

    Parameters
    ----------
    cfg : FlowSegConfig
        Architecture (:data:`FLOWSEG_TINY` for the demo models).
    """

    def __init__(self, cfg: FlowSegConfig = FLOWSEG_TINY) -> None:
        super().__init__()
        self.cfg = cfg
        w, k = cfg.width, cfg.num_classes
        self.full_res = nn.Sequential(_block(cfg.in_channels, w), _block(w, w))
        self.half_res = nn.Sequential(_block(w, 2 * w), _block(2 * w, 2 * w))
        self.context = nn.Sequential(_block(2 * w, 3 * w), _block(3 * w, 3 * w, 2),
                                     _block(3 * w, 3 * w, 4))
        self.head = nn.Sequential(_block(5 * w, 2 * w), nn.Conv2d(2 * w, k, 1))
        self.aux_head = nn.Conv2d(3 * w, k, 1)

    def changes(self, x: torch.Tensor) -> torch.Tensor:
        """The middle frame and every other frame's scaled difference from it."""
        n, _, h, w = x.shape
        frames = x.reshape(n, self.cfg.in_frames, 3, h, w)
        mid = self.cfg.in_frames // 2
        centre = frames[:, mid]
        others = torch.cat([frames[:, :mid], frames[:, mid + 1:]], dim=1)
        diffs = (others - centre[:, None]) * self.cfg.diff_gain
        return torch.cat([centre, diffs.flatten(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Segment the middle frame of each stack.

        Parameters
        ----------
        x : Tensor (N, 3 · in_frames, H, W)
            Normalised frames stacked frame-major; H and W multiples of 4.

        Returns
        -------
        [out_aux, out] : two Tensors (N, num_classes, H/4, W/4)
        """
        c = self.cfg.in_channels
        if x.dim() != 4 or x.shape[1] != c:
            raise InputShapeError(f"FlowSeg expects (N, {c}, H, W), got shape {tuple(x.shape)}")
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise InputShapeError(f"FlowSeg needs H and W divisible by 4, got "
                                  f"{tuple(x.shape[-2:])}")
        full = self.full_res(self.changes(x))
        half = self.half_res(F.max_pool2d(full, 2))
        ctx = self.context(F.max_pool2d(half, 2))
        main = self.head(torch.cat([ctx, F.avg_pool2d(half, 2)], dim=1))
        return [self.aux_head(ctx), main]
