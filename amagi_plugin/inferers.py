"""MONAI inferers for the two networks: clips → class probabilities, frames → bleeding masks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer, SlidingWindowInferer


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class ClipProbabilityInferer(Inferer):
    """Runs a clip classifier on a batch ``(N, 3, T, H, W)`` and returns softmax ``(N, C)``.

    The softmax is taken in float32 even under bf16 autocast, as the authors'
    ``average_clip`` averages probabilities, not logits. ``channels_last``: the clips go in as
    ``channels_last_3d`` (the speed switch; the network's weights are converted to match).
    """

    def __init__(self, device: torch.device | str = "cpu", bf16: bool = False,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.bf16 = bf16
        self.channels_last = channels_last

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor],
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        x = inputs.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), _autocast(self.device, self.bf16):
            logits = network(x, *args, **kwargs)
        return torch.softmax(logits.float(), dim=1).cpu()


class MaskInferer(Inferer):
    """Bleeding segmentation of whole frames at native resolution.

    Frames no larger than ``roi`` go through the network at once (padded to ``roi`` where
    smaller); larger frames use MONAI's sliding-window inferer with Gaussian blending.
    The segmentation network returns logits at 1/4 resolution (HRNet-OCR); they are
    upsampled back to the window before blending, so the mask is pixel-aligned with the frame.
    """

    def __init__(self, roi: int = 224, device: torch.device | str = "cpu", bf16: bool = False,
                 overlap: float = 0.25, sw_batch_size: int = 4) -> None:
        super().__init__()
        self.roi = roi
        self.device = torch.device(device)
        self.bf16 = bf16
        self.window = SlidingWindowInferer(roi_size=(roi, roi), sw_batch_size=sw_batch_size,
                                           overlap=overlap, mode="gaussian", padding_mode="replicate")

    def __call__(self, inputs: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor],
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        """``inputs`` ``(N, 3·K, H, W)`` normalised (K stacked frames for a temporal
        segmenter, else 1) → bleeding probability ``(N, H, W)``."""

        def full_res(x: torch.Tensor) -> torch.Tensor:
            logits = network(x).float()
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

        x = inputs.to(self.device)
        with torch.inference_mode(), _autocast(self.device, self.bf16):
            logits = self.window(x, full_res)
        return bleeding_probability(torch.as_tensor(logits)).cpu()


def bleeding_probability(logits: torch.Tensor, size: tuple[int, int] | None = None
                         ) -> torch.Tensor:
    """Segmentation logits ``(N, 2, h, w)`` → bleeding probability ``(N, H, W)``: softmax
    over the classes, channel 1, in float32; upsampled first (bilinear) to ``size`` when
    given, as :class:`MaskInferer` reads one window (where its blending of a single window
    divides its own weight out again, to within rounding)."""
    logits = logits.float()
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return torch.softmax(logits, dim=1)[:, 1]
