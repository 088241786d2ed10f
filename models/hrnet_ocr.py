"""HRNetV2 + OCR segmentation network, with the module names of ``seg_hrnet_ocr.py``.

The authors' segmentation model (HRNet-W48 + OCR, 2 classes) is reproduced with its
original module tree (``conv1``, ``bn1``, ``layer1``, ``transition1``, ``stage2`` ... ``aux_head``,
``nn.Sequential`` indices included) so its ``state_dict`` keys are those of the authors'
checkpoints. Behaviour matched (reference README, quirks 7-13):

- bilinear upsampling with ``align_corners=True`` in the fuse layers and the final concat;
- both outputs stay at 1/4 resolution; the forward returns ``[out_aux, out]`` (aux first);
- OCR: soft-region gather (softmax over positions of ``out_aux``), object attention scaled by
  ``key_channels ** -0.5`` with a softmax over regions, concat ``[context, feats]``;
- ``conv3x3_ocr`` and ``aux_head.0`` convs have a bias; dropout is inactive in eval.

BatchNorm is plain ``BatchNorm2d`` (the authors' SyncBatchNorm has the same keys and the
same eval-mode math).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import InputShapeError, ModelConfigError

__all__ = ["HRNET_TINY_OCR", "HRNET_W48_OCR", "HRNetConfig", "HRNetOCR", "StageSpec",
           "main_logits"]

BN_MOMENTUM = 0.1


def main_logits(outputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The main map of a segmenter's output: the last of ``[aux, main]`` (HRNet-OCR's and
    FlowSeg's forward), or the output itself when it is one map."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs[-1]


@dataclass(frozen=True)
class StageSpec:
    """One HRNet stage: modules, block type, blocks and channels per branch."""

    num_modules: int
    block: str  # "BASIC" or "BOTTLENECK"
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]


@dataclass(frozen=True)
class HRNetConfig:
    """Architecture of an HRNetV2 + OCR network.

    ``stem_channels`` is 64 in every published HRNet; smaller values give tiny variants.
    ``in_frames`` is 1 for the authors' network (one RGB frame). A larger odd value makes a
    *temporal* segmenter: its input is that many consecutive RGB frames stacked on the
    channel axis, frame-major (``3 · in_frames`` channels, the middle frame being the one
    segmented), so it can tell blood that flows from blood that lies still.
    """

    stage1: StageSpec
    stage2: StageSpec
    stage3: StageSpec
    stage4: StageSpec
    num_classes: int = 2
    ocr_mid_channels: int = 512
    ocr_key_channels: int = 256
    stem_channels: int = 64
    in_frames: int = 1

    def __post_init__(self) -> None:
        if self.in_frames < 1 or self.in_frames % 2 == 0:
            raise ModelConfigError(f"in_frames must be a positive odd number (the middle "
                                   f"frame is segmented), got {self.in_frames}")

    @property
    def in_channels(self) -> int:
        """Input channels: RGB of each stacked frame."""
        return 3 * self.in_frames


HRNET_W48_OCR = HRNetConfig(
    stage1=StageSpec(1, "BOTTLENECK", (4,), (64,)),
    stage2=StageSpec(1, "BASIC", (4, 4), (48, 96)),
    stage3=StageSpec(4, "BASIC", (4, 4, 4), (48, 96, 192)),
    stage4=StageSpec(3, "BASIC", (4, 4, 4, 4), (48, 96, 192, 384)),
)
"""The authors' segmentation network (``ocr.yml``: HRNet-W48 + OCR 512/256, 2 classes)."""

HRNET_TINY_OCR = HRNetConfig(
    stage1=StageSpec(1, "BOTTLENECK", (1,), (16,)),
    stage2=StageSpec(1, "BASIC", (1, 1), (8, 16)),
    stage3=StageSpec(1, "BASIC", (1, 1, 1), (8, 16, 32)),
    stage4=StageSpec(1, "BASIC", (1, 1, 1, 1), (8, 16, 32, 64)),
    ocr_mid_channels=32,
    ocr_key_channels=16,
    stem_channels=16,
)
"""A narrow, shallow HRNet-OCR (W8, one block per branch) for tests and the CPU demo model."""


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=BN_MOMENTUM)


def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class BasicBlock(nn.Module):
    """3x3 -> 3x3 residual block (expansion 1)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block (expansion 4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def _make_layer(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int,
                blocks: int, stride: int = 1) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
            _bn(planes * block.expansion))
    layers: list[nn.Module] = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches followed by all-to-all fusion (sum, then ReLU)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: Sequence[int],
                 num_inchannels: Sequence[int], num_channels: Sequence[int],
                 multi_scale_output: bool = True) -> None:
        super().__init__()
        n = len(num_channels)
        if not (len(num_blocks) == len(num_inchannels) == n):
            raise ModelConfigError(f"HRNet branch specs disagree: blocks {num_blocks}, "
                                   f"in {num_inchannels}, channels {num_channels}")
        self.num_branches = n
        self.branches = nn.ModuleList(
            _make_layer(block, num_inchannels[i], num_channels[i], num_blocks[i])
            for i in range(n))
        self.num_inchannels = [c * block.expansion for c in num_channels]
        self.fuse_layers = self._make_fuse_layers(multi_scale_output) if n > 1 else None
        self.relu = nn.ReLU(inplace=True)

    def _make_fuse_layers(self, multi_scale_output: bool) -> nn.ModuleList:
        c = self.num_inchannels
        fuse_layers = []
        for i in range(self.num_branches if multi_scale_output else 1):
            row: list[nn.Module | None] = []
            for j in range(self.num_branches):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(c[j], c[i], 1, 1, 0, bias=False),
                                             _bn(c[i])))
                elif j == i:
                    row.append(None)
                else:
                    convs: list[nn.Module] = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out = c[i] if last else c[j]
                        seq: list[nn.Module] = [nn.Conv2d(c[j], out, 3, 2, 1, bias=False), _bn(out)]
                        if not last:
                            seq.append(nn.ReLU(inplace=True))
                        convs.append(nn.Sequential(*seq))
                    row.append(nn.Sequential(*convs))
            fuse_layers.append(nn.ModuleList(row))
        return nn.ModuleList(fuse_layers)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(xi) for branch, xi in zip(self.branches, x, strict=True)]
        if self.fuse_layers is None:
            return x
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = x[0] if i == 0 else row[0](x[0])
            for j in range(1, self.num_branches):
                if i == j:
                    y = y + x[j]
                elif j > i:
                    y = y + _up(row[j](x[j]), x[i].shape[-2:])
                else:
                    y = y + row[j](x[j])
            out.append(self.relu(y))
        return out


class _BNReLU(nn.Sequential):
    """BatchNorm2d + non-inplace ReLU (``ModuleHelper.BNReLU``: keys ``.0.*``)."""

    def __init__(self, c: int) -> None:
        super().__init__(nn.BatchNorm2d(c), nn.ReLU())


class SpatialGather(nn.Module):
    """Object-region features: softmax over positions of the soft regions, weighted sum."""

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """feats (N, C, H, W), probs (N, K, H, W) -> context (N, C, K, 1)."""
        n, k = probs.shape[:2]
        p = F.softmax(probs.reshape(n, k, -1), dim=2)
        f = feats.reshape(n, feats.shape[1], -1).permute(0, 2, 1)
        return torch.matmul(p, f).permute(0, 2, 1).unsqueeze(3)


class ObjectAttentionBlock(nn.Module):
    """Pixel-to-region attention (scale 1), as ``_ObjectAttentionBlock``."""

    def __init__(self, in_channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(
            nn.Conv2d(in_channels, key_channels, 1, bias=False), _BNReLU(key_channels),
            nn.Conv2d(key_channels, key_channels, 1, bias=False), _BNReLU(key_channels))
        self.f_object = nn.Sequential(
            nn.Conv2d(in_channels, key_channels, 1, bias=False), _BNReLU(key_channels),
            nn.Conv2d(key_channels, key_channels, 1, bias=False), _BNReLU(key_channels))
        self.f_down = nn.Sequential(
            nn.Conv2d(in_channels, key_channels, 1, bias=False), _BNReLU(key_channels))
        self.f_up = nn.Sequential(
            nn.Conv2d(key_channels, in_channels, 1, bias=False), _BNReLU(in_channels))

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        kc = self.key_channels
        query = self.f_pixel(x).reshape(n, kc, -1).permute(0, 2, 1)
        key = self.f_object(proxy).reshape(n, kc, -1)
        value = self.f_down(proxy).reshape(n, kc, -1).permute(0, 2, 1)
        sim = F.softmax((kc**-0.5) * torch.matmul(query, key), dim=-1)
        context = torch.matmul(sim, value).permute(0, 2, 1).reshape(n, kc, h, w)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """Object-contextual representation: attention context, concat with feats, 1x1 conv."""

    def __init__(self, in_channels: int, key_channels: int, out_channels: int,
                 dropout: float = 0.05) -> None:
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(in_channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, 1, bias=False), _BNReLU(out_channels),
            nn.Dropout2d(dropout))

    def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, proxy)
        return self.conv_bn_dropout(torch.cat([context, feats], 1))


class HRNetOCR(nn.Module):
    """HRNetV2 backbone + OCR head returning ``[aux_logits, logits]`` at 1/4 resolution.

    Parameters
    ----------
    cfg : HRNetConfig
        Architecture (``HRNET_W48_OCR`` for the authors' network).
    """

    def __init__(self, cfg: HRNetConfig = HRNET_W48_OCR) -> None:
        super().__init__()
        self.cfg = cfg
        s = cfg.stem_channels
        self.conv1 = nn.Conv2d(cfg.in_channels, s, 3, 2, 1, bias=False)
        self.bn1 = _bn(s)
        self.conv2 = nn.Conv2d(s, s, 3, 2, 1, bias=False)
        self.bn2 = _bn(s)
        self.relu = nn.ReLU(inplace=True)

        b1 = _BLOCKS[cfg.stage1.block]
        self.layer1 = _make_layer(b1, s, cfg.stage1.num_channels[0], cfg.stage1.num_blocks[0])
        pre = [b1.expansion * cfg.stage1.num_channels[0]]

        self.transition1, self.stage2, pre = self._stage(pre, cfg.stage2)
        self.transition2, self.stage3, pre = self._stage(pre, cfg.stage3)
        self.transition3, self.stage4, pre = self._stage(pre, cfg.stage4)

        last = sum(pre)
        mid, key, k = cfg.ocr_mid_channels, cfg.ocr_key_channels, cfg.num_classes
        self.conv3x3_ocr = nn.Sequential(
            nn.Conv2d(last, mid, 3, 1, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.ocr_gather_head = SpatialGather()
        self.ocr_distri_head = SpatialOCR(mid, key, mid, dropout=0.05)
        self.cls_head = nn.Conv2d(mid, k, 1, 1, 0, bias=True)
        self.aux_head = nn.Sequential(
            nn.Conv2d(last, last, 1, 1, 0), nn.BatchNorm2d(last), nn.ReLU(inplace=True),
            nn.Conv2d(last, k, 1, 1, 0, bias=True))

    def _stage(self, pre: list[int], spec: StageSpec
               ) -> tuple[nn.ModuleList, nn.Sequential, list[int]]:
        block = _BLOCKS[spec.block]
        cur = [c * block.expansion for c in spec.num_channels]
        transition = self._transition(pre, cur)
        modules = []
        inch = list(cur)
        for _ in range(spec.num_modules):
            m = HighResolutionModule(block, spec.num_blocks, inch, spec.num_channels)
            modules.append(m)
            inch = m.num_inchannels
        return transition, nn.Sequential(*modules), inch

    @staticmethod
    def _transition(pre: list[int], cur: list[int]) -> nn.ModuleList:
        layers: list[nn.Module | None] = []
        for i, c in enumerate(cur):
            if i < len(pre):
                if c != pre[i]:
                    layers.append(nn.Sequential(nn.Conv2d(pre[i], c, 3, 1, 1, bias=False),
                                                _bn(c), nn.ReLU(inplace=True)))
                else:
                    layers.append(None)
            else:
                convs = []
                for j in range(i + 1 - len(pre)):
                    out = c if j == i - len(pre) else pre[-1]
                    convs.append(nn.Sequential(nn.Conv2d(pre[-1], out, 3, 2, 1, bias=False),
                                               _bn(out), nn.ReLU(inplace=True)))
                layers.append(nn.Sequential(*convs))
        return nn.ModuleList(layers)

    @staticmethod
    def _apply_transition(transition: nn.ModuleList, y: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, t in enumerate(transition):
            src = y[i] if i < len(y) else y[-1]
            out.append(src if t is None else t(src))
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """HRNet features of all branches upsampled to 1/4 and concatenated (N, ΣC, H/4, W/4)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        y = [self.layer1(x)]
        y = self.stage2(self._apply_transition(self.transition1, y))
        y = self.stage3(self._apply_transition(self.transition2, y))
        y = self.stage4(self._apply_transition(self.transition3, y))
        size = y[0].shape[-2:]
        return torch.cat([y[0], *(_up(t, size) for t in y[1:])], 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Segment images.

        Parameters
        ----------
        x : Tensor (N, 3 · in_frames, H, W)
            Normalised images (``in_frames`` consecutive frames stacked frame-major for a
            temporal segmenter); H and W should be multiples of 32.

        Returns
        -------
        [out_aux, out] : two Tensors (N, num_classes, H/4, W/4)
            Raw logits of the auxiliary (soft-region) head and of the OCR head.
        """
        c = self.cfg.in_channels
        if x.dim() != 4 or x.shape[1] != c:
            raise InputShapeError(f"HRNetOCR expects (N, {c}, H, W), got shape {tuple(x.shape)}")
        feats = self.forward_features(x)
        out_aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        context = self.ocr_gather_head(feats, out_aux)
        feats = self.ocr_distri_head(feats, context)
        return [out_aux, self.cls_head(feats)]
