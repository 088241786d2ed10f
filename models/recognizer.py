"""Clip recogniser: backbone + head, with the authors' multi-clip averaging.

``Recognizer`` mirrors mmaction2's ``Recognizer3D`` as the authors call it
(``recognizer(imgs, return_loss=False, infer_3d=True)``): ``predict`` flattens
(B, K, C, T, H, W) to (B·K, C, T, H, W) batch-major, runs backbone and head on all clips as
one batch, takes the softmax over classes and averages it over the K clips (reference
README, quirk 19). Its children are ``backbone`` and ``cls_head`` so ``state_dict()`` keys
are the authors' checkpoint keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import InputShapeError, ModelError

__all__ = ["ModelCfg", "Recognizer"]


def centred_window(centre: int, frames: int, step: float, count: int) -> list[int]:
    """Indices of ``frames`` (odd) frames ``step`` apart centred on ``centre``, clamped to
    ``0 .. count - 1``: what a temporal segmenter (``ModelCfg.seg_frames``) sees around the
    frame it segments, in training and in analysis alike."""
    half = frames // 2
    return [min(count - 1, max(0, round(centre + (j - half) * step))) for j in range(frames)]


@dataclass(frozen=True)
class ModelCfg:
    """Preprocessing and clip constants that belong with a model's weights.

    Attributes
    ----------
    name : str
        Variant name (``build_model`` key).
    mean, std : (R, G, B) floats
        Normalisation on the 0-255 scale: ``x = (pixel - mean) / std``.
    input_size : int
        Square crop side in pixels (frames are scaled so the short side is this, then
        centre-cropped).
    clip_len : int
        Frames per clip.
    frame_interval : int
        Source frames between two sampled frames.
    num_classes : int
        Number of logits.
    class_names : tuple of str
        Label of each logit.
    has_segmentation : bool
        Whether the model contains the segmentation net (``Recognizer.segment`` works).
    seg_frames : int
        Frames the segmentation net sees, ``frame_interval`` apart and centred on the one it
        segments (1: that frame alone, as the authors' net; more: a temporal segmenter).
    params_m, gflops : float
        Size for documentation: parameters (millions) and forward GFLOPs per clip
        (multiply-add counted as 2, measured with ``torch.utils.flop_counter``).
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    clip_len: int
    frame_interval: int
    num_classes: int
    class_names: tuple[str, ...] = ()
    has_segmentation: bool = False
    seg_frames: int = 1
    seg_scale: int = 1
    params_m: float = 0.0
    gflops: float = 0.0

    @property
    def seg_input_size(self) -> int:
        """The side of the frames the segmentation net itself sees (and is trained on)."""
        return self.input_size * self.seg_scale

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """Expected clip shape (C, T, H, W)."""
        return (3, self.clip_len, self.input_size, self.input_size)


class Recognizer(nn.Module):
    """A clip classifier: ``cls_head(backbone(clips))``.

    Parameters
    ----------
    backbone : nn.Module
        ``SlowFast`` or ``Amagi``.
    cls_head : nn.Module
        ``SlowFastHead`` or ``AmagiHead``; takes the backbone's output.
    default_cfg : ModelCfg
        Preprocessing constants for this model.
    """

    def __init__(self, backbone: nn.Module, cls_head: nn.Module, default_cfg: ModelCfg) -> None:
        super().__init__()
        self.backbone = backbone
        self.cls_head = cls_head
        self.default_cfg = default_cfg

    def _check_clips(self, clips: torch.Tensor) -> None:
        c, t, h, w = self.default_cfg.clip_shape
        if clips.dim() != 5 or clips.shape[1] != c:
            raise InputShapeError(
                f"clips must be (N, 3, T, H, W), got shape {tuple(clips.shape)}")
        if tuple(clips.shape[2:]) != (t, h, w):
            raise InputShapeError(
                f"{self.default_cfg.name} expects clips of {t} frames at {h}x{w}, "
                f"got {tuple(clips.shape[2:])} (T, H, W)")

    def forward_features(self, clips: torch.Tensor) -> Any:
        """Backbone output for clips (N, 3, T, H, W): ``(x_slow, x_fast)``, or for AMAGI
        ``((x_slow, x_fast), [seg_aux, seg_main])``."""
        self._check_clips(clips)
        return self.backbone(clips)

    def forward_head(self, features: Any) -> torch.Tensor:
        """Logits (N, num_classes) from :meth:`forward_features` output."""
        return self.cls_head(features)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for normalised clips (N, 3, T, H, W)."""
        return self.forward_head(self.forward_features(clips))

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities averaged over clips, as the authors' ``average_clip('prob')``.

        Parameters
        ----------
        batch : Tensor (B, K, 3, T, H, W)
            K normalised clips per prediction (the authors use K = 3).

        Returns
        -------
        Tensor (B, num_classes)
            Mean over the K clips of the per-clip softmax.
        """
        if batch.dim() != 6:
            raise InputShapeError(
                f"predict expects (B, K, 3, T, H, W), got shape {tuple(batch.shape)}")
        b, k = batch.shape[:2]
        logits = self(batch.reshape(-1, *batch.shape[2:]))
        return F.softmax(logits, dim=1).view(b, k, -1).mean(dim=1)

    def segment(self, frames: torch.Tensor) -> torch.Tensor:
        """Bleeding-segmentation logits of the main (OCR) head for normalised frames.

        Parameters
        ----------
        frames : Tensor (N, 3 · seg_frames, H, W)
            Frames normalised with ``default_cfg.mean/std``; for a temporal segmenter
            (``default_cfg.seg_frames`` > 1) that many frames, ``frame_interval`` apart,
            stacked frame-major and centred on the frame to segment.

        Returns
        -------
        Tensor (N, 2, H·s/4, W·s/4)
            Logits (s: ``default_cfg.seg_scale``); channel 1 is bleeding (softmax or argmax
            over dim 1 for a mask).
        """
        segment = getattr(self.backbone, "segment", None)
        if segment is None:
            raise ModelError(f"{self.default_cfg.name} has no segmentation model")
        c = 3 * self.default_cfg.seg_frames
        if frames.dim() != 4 or frames.shape[1] != c:
            raise InputShapeError(f"frames must be (N, {c}, H, W), got shape {tuple(frames.shape)}")
        return segment(frames)[1]
