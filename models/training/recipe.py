"""The authors' optimisation recipe: losses, SGD, warm-up + cosine schedule, gradient clip.

Numbers (DESIGN.md, "training"): weighted cross-entropy with class weights
``[0.6060, 2.8592]`` for clips, ``[0.4, 1]`` for the segmentation net, SGD with momentum
0.9 and weight decay 4e-5 (lr 0.01), gradient-norm clipping at 40, a cosine schedule after
a linear warm-up. The authors' clip weights are ``N / (2 · N_c)`` for their class counts
``N_c``; :func:`balanced_class_weights` applies the same formula to another data set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "AUTHORS_CLIP_CLASS_WEIGHTS",
    "AUTHORS_SEG_CLASS_WEIGHTS",
    "AUX_LOSS_WEIGHTS",
    "balanced_class_weights",
    "build_optimizer",
    "clip_gradients",
    "crop_peak_loss",
    "seg_loss",
    "warmup_cosine",
]

#: Clip classifier class weights (normal, active bleeding).
AUTHORS_CLIP_CLASS_WEIGHTS = (0.6060, 2.8592)
#: Segmentation class weights (background, bleeding).
AUTHORS_SEG_CLASS_WEIGHTS = (0.4, 1.0)
#: HRNet-OCR's balance of its auxiliary (soft-region) and main (OCR) outputs.
AUX_LOSS_WEIGHTS = (0.4, 1.0)
GRAD_CLIP = 40.0


def balanced_class_weights(labels: Sequence[int], num_classes: int = 2,
                           relabelled: float = 0.0) -> tuple[float, ...]:
    """``N / (num_classes · N_c)`` per class (the formula behind the authors' weights).

    ``relabelled`` is the expected fraction of class-1 samples that training turns into
    class 0 (still negatives): the counts are taken after it.

    Raises
    ------
    ValueError
        If a class has no sample.
    """
    counts = [float(sum(1 for y in labels if int(y) == c)) for c in range(num_classes)]
    if relabelled:
        moved = counts[1] * relabelled
        counts[0], counts[1] = counts[0] + moved, counts[1] - moved
    if min(counts) == 0:
        raise ValueError(f"every class needs at least one sample, got counts {counts}")
    n = sum(counts)
    return tuple(round(n / (num_classes * c), 4) for c in counts)


def build_optimizer(params: Iterable[nn.Parameter], lr: float = 0.01, momentum: float = 0.9,
                    weight_decay: float = 4e-5) -> torch.optim.SGD:
    """SGD over the trainable parameters (those with ``requires_grad``)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters")
    return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  warmup_ratio: float = 0.1, min_ratio: float = 0.0
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``warmup_ratio · lr`` to ``lr`` over ``warmup_steps``, then cosine
    annealing to ``min_ratio · lr`` at ``total_steps`` (stepped once per iteration)."""
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps, total_steps >= 1; got "
                         f"{warmup_steps}, {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_ratio + (1.0 - warmup_ratio) * step / max(1, warmup_steps)
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float = GRAD_CLIP) -> float:
    """Clip the total gradient norm (L2) to ``max_norm``; returns the norm before clipping."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))


def crop_peak_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of each crop's peak logit margin (its largest 3x3 mean of
    ``logits[:, 1] - logits[:, 0]``, ``(N, 2, H, W)``) against whether its mask
    (``int64 (N, H, W)``) holds any bleeding pixel; see :func:`seg_loss`'s ``peak_weight``."""
    margin = (logits[:, 1:2] - logits[:, 0:1]).float()
    smooth = nn.functional.avg_pool2d(margin, 3, stride=1, padding=1, count_include_pad=False)
    peak = smooth.flatten(1).amax(dim=1)
    present = (target.flatten(1) == 1).any(dim=1).to(peak.dtype)
    return nn.functional.binary_cross_entropy_with_logits(peak, present)


def seg_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor,
             class_weights: Sequence[float] = AUTHORS_SEG_CLASS_WEIGHTS,
             aux_weights: Sequence[float] = AUX_LOSS_WEIGHTS,
             hard_pixels: float = 0.0, peak_weight: float = 0.0) -> torch.Tensor:
    """Weighted CE of HRNet-OCR's ``[aux, main]`` logits (N, 2, h, w) against a mask.

    ``target`` is ``int64 (N, H, W)``; the logits are upsampled bilinearly to ``(H, W)``.
    ``hard_pixels`` in (0, 1): online hard example mining (Shrivastava et al., 2016; HRNet-OCR's
    own code base has an OHEM cross-entropy): each output's loss also adds the weighted mean
    over the ``hard_pixels`` share of the batch's pixels with the largest loss, so that a
    bleed of a few pixels and a false peak elsewhere are not averaged away by thousands of
    easy background pixels. Added to the mean over every pixel, not in its place: the hard
    share alone let a net trained from scratch settle on one constant probability (session
    18). 0: the mean over every pixel only.

    ``peak_weight`` > 0 (not the authors' recipe): each output's loss also adds
    ``peak_weight`` times a per-crop loss on its *peak*, multiple-instance style (Maron &
    Lozano-Pérez, 1998): the largest 3x3 mean of the bleeding-minus-background logit margin
    in a crop is read as that crop's bleeding logit, with binary cross-entropy against
    whether the crop's mask holds any bleeding. The peak is what the AMAGI head's map
    evidence and the analysis read; every crop counts once, so a source of ten pixels weighs
    as much as a pool of four hundred, where in the per-pixel mean it weighs forty times
    less.
    """
    if not 0.0 <= hard_pixels < 1.0:
        raise ValueError(f"hard_pixels must be in [0, 1), got {hard_pixels!r}")
    if not 0.0 <= peak_weight < math.inf:
        raise ValueError(f"peak_weight must be finite and >= 0, got {peak_weight!r}")
    w = torch.as_tensor(class_weights, dtype=torch.float32, device=target.device)
    total = target.new_zeros((), dtype=torch.float32)
    for weight, logits in zip(aux_weights, outputs, strict=True):
        up = nn.functional.interpolate(logits, size=target.shape[-2:], mode="bilinear",
                                       align_corners=False)
        if peak_weight:
            total = total + weight * peak_weight * crop_peak_loss(up, target)
        if not hard_pixels:
            total = total + weight * nn.functional.cross_entropy(up, target, weight=w)
            continue
        per_pixel = nn.functional.cross_entropy(up, target, weight=w, reduction="none").flatten()
        pixel_w = w[target.flatten()]
        hard = per_pixel.topk(max(1, round(hard_pixels * per_pixel.numel()))).indices
        total = total + weight * (per_pixel.sum() / pixel_w.sum()
                                  + per_pixel[hard].sum() / pixel_w[hard].sum())
    return total
