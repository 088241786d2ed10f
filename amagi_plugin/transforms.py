"""Frame preprocessing as the authors' inference: scale the short side, centre crop, normalise.

MONAI transforms, channel-first. The authors use ``Scale(224)`` + ``CenterCrop(224)`` and
``Normalize(mean/255, std/255)`` after ``ToTensor`` (reference README, quirk 20); on the
0-255 scale that is ``(x - mean) / std`` with the RGB mean/std of the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import CenterSpatialCrop, Compose, NormalizeIntensity, Transform

from models.training.augment import resize_short, resize_short_side

#: The authors' RGB normalisation on the 0-255 scale (img_norm_cfg).
AUTHORS_MEAN = (117.1168392375, 75.27494787, 67.376296503)
AUTHORS_STD = (60.241352388, 51.261253263, 49.192591569)


def frame_tensor(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An RGB frame ``(H, W, 3)`` as a tensor, sharing a writable array's memory; a read-only
    array (a memory map's, a decoder's buffer) is copied first, as torch does not wrap one
    without a warning (the transforms only read it)."""
    if isinstance(frame, np.ndarray):
        frame = np.ascontiguousarray(frame)
        t = torch.from_numpy(frame if frame.flags.writeable else frame.copy())
    else:
        t = torch.as_tensor(frame)
    if t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(f"expected an RGB frame of shape (H, W, 3), got {tuple(t.shape)}")
    return t


class FrameToTensor(Transform):
    """``uint8 (H, W, 3)`` RGB → ``float32 (3, H, W)`` on the 0-255 scale."""

    def __call__(self, frame: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = frame_tensor(frame)
        return t.permute(2, 0, 1).float()


class ResizeShortSide(Transform):
    """Resize ``(C, H, W)`` so the shorter side is ``size`` pixels (bilinear, antialiased,
    in float)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return resize_short(img, self.size)


def clip_frame_transform(size: int = 224, mean: Sequence[float] = AUTHORS_MEAN,
                         std: Sequence[float] = AUTHORS_STD) -> Compose:
    """The per-frame preprocessing of a clip: RGB frame → normalised ``(3, size, size)``."""
    return Compose([
        FrameToTensor(),
        ResizeShortSide(size),
        CenterSpatialCrop((size, size)),
        NormalizeIntensity(subtrahend=list(mean), divisor=list(std), channel_wise=True),
    ])


def native_frame_transform(mean: Sequence[float] = AUTHORS_MEAN,
                           std: Sequence[float] = AUTHORS_STD) -> Compose:
    """Normalisation only, at native resolution (for key-frame segmentation)."""
    return Compose([
        FrameToTensor(),
        NormalizeIntensity(subtrahend=list(mean), divisor=list(std), channel_wise=True),
    ])


class DeviceFrameTransform:
    """:func:`clip_frame_transform` done where the network runs, from the uint8 frame.

    The ``uint8 (H, W, 3)`` frame goes to ``device`` as is (a quarter of the float bytes;
    from pinned memory without blocking on CUDA), then the same short-side resize, centre
    crop (MONAI's ``CenterSpatialCrop`` start: ``n // 2 - size // 2``) and normalisation run
    there with torch ops. On a CPU the resize runs on the uint8 frame (rounded to uint8:
    within a grey level of the float resize, about four times cheaper for 720p); on a GPU,
    where it costs little, in float.
    Returns a plain ``float32 (3, size, size)`` tensor on ``device``.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str) -> None:
        self.size = int(size)
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1)

    def __call__(self, frame: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = frame_tensor(frame)
        if self.pin and t.device.type == "cpu":
            t = t.pin_memory()
        t = t.to(self.device, non_blocking=True).permute(2, 0, 1)
        if self.device.type != "cpu":
            t = t.float()
        t = resize_short_side(t, self.size)
        h, w = t.shape[-2:]
        top, left = h // 2 - self.size // 2, w // 2 - self.size // 2
        t = t[:, top:top + self.size, left:left + self.size].float()
        return (t - self.mean) / self.std


def device_frame_transform(size: int = 224, mean: Sequence[float] = AUTHORS_MEAN,
                           std: Sequence[float] = AUTHORS_STD,
                           device: torch.device | str = "cpu") -> DeviceFrameTransform:
    """The per-frame preprocessing of a clip on ``device`` (the speed switch's path)."""
    return DeviceFrameTransform(size, mean, std, device)
