"""ResNet3d pathway (the slow or fast half of SlowFast), laid out like mmaction2.

Module names reproduce mmaction2's ``ResNet3d``/``ResNet3dPathway`` so that a
``state_dict()`` has exactly the keys of the authors' checkpoints:
``conv1.{conv,bn}``, ``layer{1..4}.{i}.conv{1,2,3}.{conv,bn}``, ``layer{1..4}.0.downsample``
and, on a pathway with laterals, ``conv1_lateral.conv`` and ``layer{1,2,3}_lateral.conv``
(registered after the stages, as mmaction2 does).

Behaviour matched (reference README, quirk 4): pytorch-style bottleneck with the spatial
stride on the 1x3x3 conv2, ``3x1x1`` inflation of conv1 where ``inflate`` says so, ReLU after
the residual add, BN eps 1e-5, stem conv then max-pool (1,3,3)/(1,2,2)/(0,1,1). The first
block of a stage that receives laterals takes ``inplanes + 2 * fast_channels`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.errors import ModelConfigError

__all__ = [
    "BasicBlock3d",
    "Bottleneck3d",
    "ConvBnAct3d",
    "ResNet3dPathway",
    "stage_blocks_for_depth",
]

_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def stage_blocks_for_depth(depth: int) -> tuple[type[nn.Module], tuple[int, int, int, int]]:
    """Block class and blocks per stage of a ResNet of the given depth.

    Raises
    ------
    ModelConfigError
        If ``depth`` is not one of 18, 34, 50, 101, 152.
    """
    if depth not in _DEPTHS:
        raise ModelConfigError(f"ResNet3d depth must be one of {sorted(_DEPTHS)}, got {depth!r}")
    kind, blocks = _DEPTHS[depth]
    return (BasicBlock3d if kind == "basic" else Bottleneck3d), blocks


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ModelConfigError(f"expected an int or 3 ints, got {v!r}")
    return t  # type: ignore[return-value]


class ConvBnAct3d(nn.Module):
    """Conv3d (no bias) + optional BatchNorm3d + optional ReLU, named like mmcv ``ConvModule``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    kernel_size, stride, padding : int or (t, h, w)
        Convolution geometry, in frames and pixels.
    norm : bool
        Add ``bn`` (BatchNorm3d, eps 1e-5). Lateral connections have none.
    act : bool
        Apply ReLU after the norm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        *,
        norm: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, _triple(kernel_size),
                              stride=_triple(stride), padding=_triple(padding), bias=False)
        self.bn = nn.BatchNorm3d(out_channels) if norm else None
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x


class BasicBlock3d(nn.Module):
    """Two 3x3 convolutions (1x3x3, or 3x3x3 when inflated) with a residual; expansion 1."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, spatial_stride: int = 1,
                 downsample: nn.Module | None = None, inflate: bool = True) -> None:
        super().__init__()
        k, p = ((3, 3, 3), (1, 1, 1)) if inflate else ((1, 3, 3), (0, 1, 1))
        self.conv1 = ConvBnAct3d(inplanes, planes, k, (1, spatial_stride, spatial_stride), p)
        self.conv2 = ConvBnAct3d(planes, planes, k, 1, p, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        return self.relu(out + identity)


class Bottleneck3d(nn.Module):
    """1x1x1 (or 3x1x1 when inflated) -> 1x3x3 (spatial stride) -> 1x1x1, residual, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, spatial_stride: int = 1,
                 downsample: nn.Module | None = None, inflate: bool = True) -> None:
        super().__init__()
        k1, p1 = ((3, 1, 1), (1, 0, 0)) if inflate else ((1, 1, 1), (0, 0, 0))
        self.conv1 = ConvBnAct3d(inplanes, planes, k1, 1, p1)
        self.conv2 = ConvBnAct3d(planes, planes, (1, 3, 3),
                                 (1, spatial_stride, spatial_stride), (0, 1, 1))
        self.conv3 = ConvBnAct3d(planes, planes * self.expansion, 1, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        return self.relu(out + identity)


class ResNet3dPathway(nn.Module):
    """One SlowFast pathway: stem, four residual stages and (optionally) lateral convs.

    Parameters
    ----------
    depth : int
        18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
    base_channels : int
        Width of the stem and of stage 1 (64 for the slow path, 8 for the fast path).
    conv1_kernel : (t, h, w)
        Stem kernel; (1, 7, 7) slow, (5, 7, 7) fast. Stem stride is (1, 2, 2).
    inflate : 4 bools/ints
        Per stage, whether conv1 of each block is temporal (3x1x1).
    lateral_channels : 4 ints, optional
        Channels of the fast pathway after its stem and after stages 1-3. When given,
        the pathway owns ``conv1_lateral`` and ``layer{1,2,3}_lateral`` (each a Conv3d
        ``c -> 2c`` of kernel (fusion_kernel, 1, 1), stride (speed_ratio, 1, 1)) and its
        stages take the concatenated ``[slow, lateral]`` input.
    fusion_kernel : int
        Temporal kernel of the lateral convs (5 in AMAGI, 7 in the Kinetics 8x8 model).
    speed_ratio : int
        Frame-rate ratio fast/slow, the temporal stride of the lateral convs.
    in_channels : int
        Input channels (3, RGB).
    """

    def __init__(
        self,
        depth: int,
        base_channels: int = 64,
        conv1_kernel: Sequence[int] = (1, 7, 7),
        inflate: Sequence[int | bool] = (0, 0, 1, 1),
        lateral_channels: Sequence[int] | None = None,
        fusion_kernel: int = 5,
        speed_ratio: int = 2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        block, stage_blocks = stage_blocks_for_depth(depth)
        if base_channels < 1:
            raise ModelConfigError(f"base_channels must be >= 1, got {base_channels}")
        if len(inflate) != 4:
            raise ModelConfigError(f"inflate needs one flag per stage (4), got {inflate!r}")
        if lateral_channels is not None and len(lateral_channels) != 4:
            raise ModelConfigError(f"lateral_channels needs 4 values, got {lateral_channels!r}")
        if fusion_kernel < 1 or fusion_kernel % 2 == 0:
            raise ModelConfigError(f"fusion_kernel must be odd and >= 1, got {fusion_kernel}")
        self.depth = depth
        self.lateral = lateral_channels is not None
        k = _triple(conv1_kernel)
        self.conv1 = ConvBnAct3d(in_channels, base_channels, k, (1, 2, 2),
                                 tuple((s - 1) // 2 for s in k))
        self.maxpool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        lat_out = [2 * c for c in lateral_channels] if lateral_channels is not None else [0] * 4
        inplanes = base_channels
        self.stage_channels: list[int] = []
        for i, n_blocks in enumerate(stage_blocks):
            planes = base_channels * 2**i
            stride = 1 if i == 0 else 2
            in_first = inplanes + lat_out[i]
            out_ch = planes * block.expansion
            downsample = None
            if stride != 1 or in_first != out_ch:
                downsample = ConvBnAct3d(in_first, out_ch, 1, (1, stride, stride), act=False)
            blocks = [block(in_first, planes, stride, downsample, bool(inflate[i]))]
            blocks += [block(out_ch, planes, 1, None, bool(inflate[i])) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out_ch
            self.stage_channels.append(out_ch)
        self.out_channels = inplanes
        if lateral_channels is not None:
            for name, c in zip(("conv1_lateral", "layer1_lateral", "layer2_lateral",
                                "layer3_lateral"), lateral_channels, strict=True):
                self.add_module(name, ConvBnAct3d(
                    c, 2 * c, (fusion_kernel, 1, 1), (speed_ratio, 1, 1),
                    ((fusion_kernel - 1) // 2, 0, 0), norm=False, act=False))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Stem conv + max-pool: (N, 3, T, H, W) -> (N, base, T, H/4, W/4)."""
        return self.maxpool(self.conv1(x))

    def stage(self, i: int) -> nn.Sequential:
        """Residual stage ``i`` (0-based)."""
        return getattr(self, f"layer{i + 1}")

    def lateral_conv(self, i: int) -> ConvBnAct3d:
        """Lateral conv feeding stage ``i`` (0 = after the stems)."""
        return getattr(self, "conv1_lateral" if i == 0 else f"layer{i}_lateral")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Single-pathway forward (no laterals): (N, 3, T, H, W) -> (N, C, T, H/32, W/32)."""
        x = self.stem(x)
        for i in range(4):
            x = self.stage(i)(x)
        return x
