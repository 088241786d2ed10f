"""AMAGI: SlowFast features re-weighted by a segmentation network's bleeding map.

``Amagi`` is the backbone (``slow_path``, ``fast_path``, ``seg_model``: the authors' key
layout) and ``AmagiHead`` the fusion head with the semantics of the authors' ``AmagiHead2``
(reference README, quirks 1, 6 and 14-17):

- the segmentation net sees the clip's centre frame ``x[:, :, T // 2]`` (already normalised
  with the SlowFast mean/std) and returns ``[aux, main]`` logits at 1/4 resolution; a
  *temporal* segmenter (``seg_model.cfg.in_frames`` = K > 1: :class:`models.flowseg.FlowSeg`
  in this project's demo models, not the authors' design) sees the K clip frames centred on
  it instead, stacked on the channel axis (:meth:`Amagi.segmentation_input`), and so marks
  blood that flows, not all blood; with ``seg_scale`` > 1 (not the authors' design either)
  the segmenter sees those frames upsampled that many times (bilinear), so a source of a few
  pixels covers more of its receptive field, and its maps are that much larger;
- the head sums the two raw logit maps, reduces them with ``Conv2d(2, 2, k, stride=k)`` to
  the pathways' spatial grid and applies a per-channel sigmoid;
- each pathway goes through a 1x1x1 conv with temporal stride ``time_rate``, is re-weighted
  as ``s0·f + s1·f``, passed through ``map_*`` plus a residual, and collapsed over time by
  ``map_*2``; the two results are concatenated ``[slow-path part, fast-path part]`` and go
  through a 1x1 conv, global average pooling, dropout and the classifier.

The authors' names are swapped (their ``fast_conv`` acts on the slow pathway); the module
names are kept for the checkpoint keys, and the docstrings say which pathway each touches.
Sizes that the authors hard-coded (8 frames, 7x7, 2048/256 channels) are computed here from
the clip length, the input size and the pathway widths; the authors' configuration gives
their exact numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import InputShapeError, ModelConfigError
from models.flowseg import FlowSeg, cell_peak
from models.hrnet_ocr import HRNetOCR
from models.resnet3d import ResNet3dPathway
from models.slowfast import Pathways, SlowFast

__all__ = ["EVIDENCE", "Amagi", "AmagiFeatures", "AmagiHead"]

#: What :meth:`AmagiHead.map_evidence` measures on a map, in order.
EVIDENCE = ("peak", "sqrt_area")

AmagiFeatures = tuple[Pathways, list[torch.Tensor]]
"""Backbone output: ``((x_slow, x_fast), [seg_aux, seg_main])``."""


class Amagi(SlowFast):
    """SlowFast backbone plus a frozen HRNet-OCR run on each clip's centre frame.

    Parameters
    ----------
    slow_path, fast_path : ResNet3dPathway
        The two pathways (see :class:`models.slowfast.SlowFast`).
    seg_model : HRNetOCR or FlowSeg
        Segmentation network (``forward(x) -> [aux, main]`` logits at 1/4 resolution,
        ``cfg.in_frames`` frames per input); its parameters are frozen
        (``requires_grad=False``).
    resample_rate, speed_ratio : int
        τ and α.
    seg_scale : int
        The segmentation net sees its input upsampled this many times (bilinear), and its
        maps are that many times larger (1: the clip's own scale, as the authors').
    seg_train_mode : bool
        If False (default) the segmentation net stays in eval mode when the model is put in
        training mode, so its BatchNorm statistics do not drift. The authors' code left it
        in training mode (its BN running statistics changed while training AMAGI); pass
        True to reproduce that. Eval-mode outputs are the same either way.
    """

    def __init__(self, slow_path: ResNet3dPathway, fast_path: ResNet3dPathway,
                 seg_model: HRNetOCR | FlowSeg, resample_rate: int, speed_ratio: int,
                 seg_train_mode: bool = False, seg_scale: int = 1) -> None:
        super().__init__(slow_path, fast_path, resample_rate, speed_ratio)
        if int(seg_scale) != seg_scale or seg_scale < 1:
            raise ModelConfigError(f"seg_scale must be a whole number ≥ 1, got {seg_scale}")
        self.seg_model = seg_model
        self.seg_scale = int(seg_scale)
        self.seg_train_mode = seg_train_mode
        for p in self.seg_model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> Amagi:
        super().train(mode)
        if not self.seg_train_mode:
            self.seg_model.eval()
        return self

    def segment(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Run the segmentation net on normalised frames (N, 3·K, H, W) -> [aux, main]
        logits at ``seg_scale / 4`` of the frames' size (upsampled first if ``seg_scale`` > 1)."""
        if self.seg_scale > 1:
            frames = F.interpolate(frames, scale_factor=self.seg_scale, mode="bilinear",
                                   align_corners=False)
        return self.seg_model(frames)

    @property
    def seg_frames(self) -> int:
        """Clip frames the segmentation net sees (1 = the centre frame only)."""
        return self.seg_model.cfg.in_frames

    def segmentation_input(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) clip -> (N, 3·K, H, W): clip frames ``T//2 - K//2 ... T//2 + K//2``
        stacked frame-major (K = :attr:`seg_frames`; K = 1 gives frame ``T // 2``)."""
        k, t = self.seg_frames, x.shape[2]
        lo = t // 2 - k // 2
        if lo < 0 or lo + k > t:
            raise InputShapeError(f"the segmentation net needs {k} frames around the centre; "
                                  f"the clip has {t}")
        return x[:, :, lo:lo + k].transpose(1, 2).flatten(1, 2)

    def forward(self, x: torch.Tensor) -> AmagiFeatures:  # type: ignore[override]
        """(N, 3, T, H, W) -> ((x_slow, x_fast), [seg_aux, seg_main]).

        The segmentation input is frame ``T // 2`` of the full-rate clip (with its
        neighbours for a temporal segmenter, :meth:`segmentation_input`). A segmenter's
        full-resolution main map reaches the head as each cell's peak (:func:`cell_peak`),
        at the size of its auxiliary map.
        """
        if x.dim() != 5:
            raise InputShapeError(f"AMAGI expects (N, C, T, H, W), got shape {tuple(x.shape)}")
        aux, main = self.segment(self.segmentation_input(x))
        if main.shape[-2:] != aux.shape[-2:]:  # a full-resolution map (FlowSeg ``fine``)
            main = cell_peak(main, main.shape[-1] // aux.shape[-1])
        return super().forward(x), [aux, main]


class AmagiHead(nn.Module):
    """The authors' ``AmagiHead2``: segmentation-weighted fusion of both pathways.

    Parameters
    ----------
    slow_channels : int
        Channels of the slow pathway output (2048 for R50/R152).
    fast_channels : int
        Channels of the fast pathway output (256).
    slow_frames, fast_frames : int
        Frames of the slow / fast pathway outputs (4 and 8 for an 8-frame clip, τ=α=2).
    feature_size : int
        Spatial size of the pathway outputs (7 for 224 input).
    seg_size : int
        Spatial size of the segmentation logits (56 for 224 input); must be a multiple of
        ``feature_size``: the reduction conv has kernel = stride = seg_size / feature_size.
    num_classes : int
        Number of logits (2).
    seg_classes : int
        Channels of the segmentation logits (2: background, bleeding).
    time_rate : int
        Temporal stride of ``fast_conv``/``slow_conv`` (2).
    dropout : float
        Dropout before the classifier (0.5; inactive in eval).
    map_evidence : bool
        Not the authors' design (False keeps their head and keys exactly): also give the
        classifier the map's own evidence, its peak and its area (:meth:`map_evidence`),
        through a batch norm and a linear layer whose logits add to the classifier's. The
        map then reaches the decision directly, not only as weights on pathway features
        that a small net learns to use slowly.
    pathway_dropout : float
        With ``map_evidence``: in training, the chance that a sample's pathway logits are
        left out, so that the evidence alone must decide it. A net whose pathways fit the
        looks of its training video (and the map does not) otherwise leans on the pathways.
        In evaluation the pathway logits are scaled by ``1 - pathway_dropout``, their weight
        in what the evidence path was trained against (as dropout scales its units); 1 means
        the evidence alone decides.
    """

    def __init__(self, slow_channels: int = 2048, fast_channels: int = 256,
                 slow_frames: int = 4, fast_frames: int = 8, feature_size: int = 7,
                 seg_size: int = 56, num_classes: int = 2, seg_classes: int = 2,
                 time_rate: int = 2, dropout: float = 0.5, map_evidence: bool = False,
                 pathway_dropout: float = 0.0) -> None:
        super().__init__()
        if seg_size % feature_size:
            raise ModelConfigError(f"segmentation size {seg_size} is not a multiple of the "
                                   f"feature size {feature_size}")
        if seg_classes != 2:
            raise ModelConfigError(f"AmagiHead re-weights with 2 segmentation maps, "
                                   f"got seg_classes={seg_classes}")
        slow_mid, fast_mid = slow_channels // 2, fast_channels // 2
        t_slow = math.ceil(slow_frames / time_rate)
        t_fast = math.ceil(fast_frames / time_rate)
        k = seg_size // feature_size
        self.slow_mid, self.fast_mid = slow_mid, fast_mid
        self.t_slow, self.t_fast, self.feature_size = t_slow, t_fast, feature_size
        # registration order = the authors' key order
        self.fc_cls = nn.Linear(slow_channels, num_classes)
        self.seg_reduction = nn.Conv2d(seg_classes, seg_classes, k, stride=k)
        #: on the slow pathway (authors' name)
        self.fast_conv = nn.Conv3d(slow_channels, slow_mid, 1, stride=(time_rate, 1, 1))
        #: on the fast pathway (authors' name)
        self.slow_conv = nn.Conv3d(fast_channels, fast_mid, 1, stride=(time_rate, 1, 1))
        self.map_fast = nn.Conv3d(slow_mid, slow_mid, 1)
        self.map_slow = nn.Conv3d(fast_mid, fast_mid, 1)
        #: collapses the slow-pathway branch over time: the "fusion layer" Grad-CAM target
        self.map_fast2 = nn.Conv3d(slow_mid, fast_mid, (t_slow, 1, 1))
        self.map_slow2 = nn.Conv3d(fast_mid, fast_mid, (t_fast, 1, 1))
        self.last_fusion = nn.Conv2d(2 * fast_mid, slow_channels, 1)
        self.sigmoid = nn.Sigmoid()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if not 0.0 <= pathway_dropout <= 1.0:
            raise ModelConfigError(f"pathway_dropout must lie in [0, 1], got {pathway_dropout}")
        if pathway_dropout and not map_evidence:
            raise ModelConfigError("pathway_dropout needs map_evidence: without it a dropped "
                                   "sample has no logits")
        self.pathway_dropout = pathway_dropout
        self.evidence_norm: nn.BatchNorm1d | None = None
        self.fc_evidence: nn.Linear | None = None
        if map_evidence:
            self.evidence_norm = nn.BatchNorm1d(len(EVIDENCE))
            self.fc_evidence = nn.Linear(len(EVIDENCE), num_classes)
            nn.init.zeros_(self.fc_evidence.weight)  # starts as the plain head
            nn.init.zeros_(self.fc_evidence.bias)

    def seg_map(self, seg_out: list[torch.Tensor]) -> torch.Tensor:
        """Sigmoid re-weighting maps (N, 2, h, w) from ``[aux, main]`` segmentation logits."""
        return self.sigmoid(self.seg_reduction(seg_out[0] + seg_out[1]))

    @staticmethod
    def map_evidence(seg_out: list[torch.Tensor]) -> torch.Tensor:
        """(N, 2) evidence of the main segmentation logits (N, 2, h, w), in :data:`EVIDENCE`
        order: the peak bleeding probability (3x3 mean, so one noisy pixel is not a peak)
        and the square root of the area marked as bleeding (p ≥ 0.5, a fraction of the map).
        """
        p = torch.softmax(seg_out[1].float(), dim=1)[:, 1:2]
        peak = F.avg_pool2d(p, 3, stride=1, padding=1, count_include_pad=False)
        area = (p >= 0.5).float().mean(dim=(1, 2, 3))
        return torch.stack([peak.amax(dim=(1, 2, 3)), area.sqrt()], dim=1)

    @staticmethod
    def _reweight(f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # The authors expand each map to (N, C, T, h, w) and compute s0*f + s1*f (two
        # products, then a sum); broadcasting gives the same values without the copies.
        s0 = s[:, 0, None, None]
        s1 = s[:, 1, None, None]
        return s0 * f + s1 * f

    def forward(self, features: AmagiFeatures) -> torch.Tensor:
        """((x_slow, x_fast), [seg_aux, seg_main]) -> logits (N, num_classes)."""
        (x_slow, x_fast), seg_out = features
        if x_slow.shape[-1] != self.feature_size or x_slow.shape[-2] != self.feature_size:
            raise InputShapeError(
                f"AMAGI head built for {self.feature_size}x{self.feature_size} features, got "
                f"{tuple(x_slow.shape[-2:])}: the input size differs from the model's")
        s = self.seg_map(seg_out)
        a = self.fast_conv(x_slow)
        a = self.map_fast(self._reweight(a, s)) + a
        a = self.map_fast2(a).squeeze(2)
        b = self.slow_conv(x_fast)
        b = self.map_slow(self._reweight(b, s)) + b
        b = self.map_slow2(b).squeeze(2)
        x = self.last_fusion(torch.cat([a, b], dim=1))
        x = self.dropout(self.gap(x))
        logits = self.fc_cls(x.flatten(1))
        if self.fc_evidence is None or self.evidence_norm is None:
            return logits
        if self.pathway_dropout:  # training drops a sample's; analysis weighs them alike
            keep = (torch.rand(logits.shape[0], 1, device=logits.device) >= self.pathway_dropout
                    ).to(logits.dtype) if self.training else 1.0 - self.pathway_dropout
            logits = logits * keep
        evidence = self.evidence_norm(self.map_evidence(seg_out).to(logits.dtype))
        return logits + self.fc_evidence(evidence)
