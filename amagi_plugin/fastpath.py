"""The speed switch (``model.fast``, ``--fast``) and the devices the service analyses on.

Off (the default) the analysis is the exact fp32 path. On, :class:`FastPath` changes, for
the device the model runs on:

- bfloat16 autocast where the device computes it natively: CUDA of compute capability 8.0
  or later, a CPU with AMX or AVX-512 BF16. Elsewhere the arithmetic stays fp32.
- channels-last memory format: ``channels_last_3d`` for the video pathways' 5-D weights and
  the clips, ``channels_last`` for the 2-D segmentation net (oneDNN and cuDNN both prefer it).
- frames go to the device as uint8 and are resized, cropped and normalised there with torch
  ops (:func:`~amagi_plugin.transforms.device_frame_transform`), the same arithmetic as the
  MONAI transforms of the exact path; on a CPU the resize runs on the uint8 frame (torch's
  fixed-point kernel, within a grey level of the float resize, several times cheaper).
- on CUDA: the uint8 frame is copied from pinned memory without blocking, TF32 for what
  autocast leaves in fp32, cuDNN autotuning; and, when the configuration does not set
  ``model.batch_size``, a batch sized for the device's memory (:func:`device_batch_size`).

The CUDA settings (TF32, cuDNN autotuning) are process-wide flags.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from amagi_plugin.errors import ConfigError
from amagi_plugin.modelspec import bf16_native, cuda_devices_lacking
from amagi_plugin.transforms import (
    AUTHORS_MEAN,
    AUTHORS_STD,
    DeviceFrameTransform,
    device_frame_transform,
)

log = logging.getLogger(__name__)


def check_devices_available(devices: Sequence[str], key: str = "worker.devices") -> None:
    """Raise :class:`ConfigError` naming the first configured device this host lacks."""
    for name in devices:
        count = cuda_devices_lacking(name)
        if count is not None:
            raise ConfigError(f"configured device {name} is not available: this host has "
                              f"{count} CUDA device{'' if count == 1 else 's'} ({key})")


def checked_bf16(requested: bool, device: torch.device | str) -> bool:
    """``model.bf16`` for analysis on ``device``: refused (:class:`ConfigError`) where bf16
    would be emulated, which made the demo network 60 times slower than fp32 on a 2-core
    AVX2 CPU (session 38); the speed switch is the way to take bf16 only where native."""
    if requested and not bf16_native(device):
        raise ConfigError(
            f"model.bf16: {device} does not compute bfloat16 natively (a CPU needs AMX or "
            "AVX512-BF16, CUDA compute capability 8.0), so autocast would emulate it: on a "
            "2-core AVX2 CPU the demo network ran 60 times slower than in fp32. Leave it off, "
            "or set model.fast, which takes bf16 only where the device computes it")
    return requested


def device_batch_size(device: torch.device | str, default: int = 8) -> int:
    """Clips per batch for ``device`` when the configuration does not set one.

    On CUDA: 32, or 16 below 16 GiB of memory (amagi_sf152 needs well under 100 MB of
    activations per clip in inference). Elsewhere ``default``: two CPU cores gain nothing from
    larger batches.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return default
    total = torch.cuda.get_device_properties(device).total_memory
    return max(default, 16 if total < 15.5 * 2**30 else 32)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Put ``model``'s 5-D tensors in ``channels_last_3d`` and 4-D ones in ``channels_last``
    (in place; values unchanged)."""
    for t in [*model.parameters(), *model.buffers()]:
        fmt = {5: torch.channels_last_3d, 4: torch.channels_last}.get(t.dim())
        if fmt is not None:
            t.data = t.data.contiguous(memory_format=fmt)
    return model


@dataclass(frozen=True)
class FastPath:
    """What the speed switch does on one device (see the module docstring)."""

    device: torch.device
    bf16: bool
    channels_last: bool = True

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @classmethod
    def for_device(cls, device: torch.device | str) -> FastPath:
        device = torch.device(device)
        fast = cls(device, bf16=bf16_native(device))
        if not fast.bf16:
            log.info("fast path on %s: bfloat16 is not native there, arithmetic stays fp32",
                     device)
        return fast

    def prepare(self, model: nn.Module) -> nn.Module:
        """Set ``model`` (already on the device) up for the fast path, in place."""
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        return to_channels_last(model) if self.channels_last else model

    def frame_transform(self, size: int, mean: Sequence[float] = AUTHORS_MEAN,
                        std: Sequence[float] = AUTHORS_STD) -> DeviceFrameTransform:
        """uint8 RGB frame → normalised ``(3, size, size)`` on the device."""
        return device_frame_transform(size, mean, std, self.device)
