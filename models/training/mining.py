"""Hard negatives mined by the segmenter itself: each training frame's *false peak*.

The evidence an AMAGI head reads is the peak of the bleeding map. A frame whose bleeding is
small is lost when any other place of the same frame scores higher (measured in the demo's
held-out-looks README, session 18: small bleeds rank in the frame's top 2 % of pixels but
lose to a false peak in 65–80 % of their frames). Random background crops seldom hold those
places. :func:`false_peaks` finds them with the net being trained: it draws the map of each
training frame whole, at the model's scale, and keeps the place of its largest bleeding
probability more than ``margin`` pixels from any bleeding. A share of the next epochs' crops is
then centred there (:class:`~models.training.augment.SegAugment`'s ``peak_negatives``), so
the net learns exactly what it confuses with flowing blood, whatever that is in the data
(moving suction, stained instruments, still pools) and without labels beyond the masks.
This is online hard example mining (Shrivastava et al., 2016) at the level of crops.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from models.hrnet_ocr import main_logits

__all__ = ["FalsePeak", "false_peaks"]

#: Frames are padded to a multiple of this before the net sees them (HRNet's coarsest branch).
_MULTIPLE = 32


class FalsePeak(NamedTuple):
    """Where a frame's map is highest away from bleeding, and its probability there."""

    y: int
    x: int
    p: float


class WholeFrames(Protocol):
    """What mining reads: a dataset that gives each item's whole normalised frame and mask
    (:meth:`models.training.data.SegDataset.whole`)."""

    def __len__(self) -> int: ...

    def whole(self, i: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def _peaks_of(seg_model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
              margin: int) -> list[FalsePeak | None]:
    h, w = images.shape[-2:]
    pad_h, pad_w = -h % _MULTIPLE, -w % _MULTIPLE
    x = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else images
    logits = main_logits(seg_model(x)).float()
    logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    p = torch.softmax(logits[:, :, :h, :w], dim=1)[:, 1]
    near = F.max_pool2d(masks[:, None].float(), 2 * margin + 1, stride=1, padding=margin)[:, 0]
    p = p.masked_fill(near > 0, -1.0)
    best, where = p.flatten(1).max(dim=1)
    return [FalsePeak(int(k) // w, int(k) % w, float(b)) if b >= 0 else None
            for b, k in zip(best.tolist(), where.tolist(), strict=True)]


def false_peaks(seg_model: nn.Module, frames: WholeFrames, device: torch.device | str = "cpu",
                batch_size: int = 16, margin: int = 6) -> dict[int, FalsePeak]:
    """Each item's false peak: ``{index: FalsePeak(y, x, p)}`` in the coordinates of
    ``frames.whole(index)``. The map is the segmenter's main output, upsampled bilinearly to
    the frame, in eval mode (the net's training mode is restored after). Pixels within
    ``margin`` pixels of bleeding (a square neighbourhood) are left out; a frame that has no
    other pixel has no entry.
    """
    if batch_size < 1 or margin < 0:
        raise ValueError(f"batch_size must be >= 1 and margin >= 0, got {batch_size}, {margin}")
    was_training = seg_model.training
    seg_model.eval()
    found: dict[int, FalsePeak] = {}
    batch: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def flush() -> None:
        if batch:
            images = torch.stack([b[1] for b in batch]).to(device)
            masks = torch.stack([b[2] for b in batch]).to(device)
            for (i, _, _), peak in zip(batch, _peaks_of(seg_model, images, masks, margin),
                                       strict=True):
                if peak is not None:
                    found[i] = peak
            batch.clear()

    try:
        with torch.no_grad():
            for i in range(len(frames)):
                image, mask = frames.whole(i)
                if batch and (image.shape != batch[0][1].shape or len(batch) == batch_size):
                    flush()
                batch.append((i, image, mask))
            flush()
    finally:
        seg_model.train(was_training)
    return found
