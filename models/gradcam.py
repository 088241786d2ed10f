"""Grad-CAM for the layers the authors visualise, and an overlay writer (GIF + PNG strip).

Targets (names accepted by :class:`GradCAM`):

- ``'fast'``: the fast pathway's last stage (``backbone.fast_path.layer4``, T=8 at 1/32);
- ``'fusion'``: AMAGI's fusion layer (``cls_head.map_fast2``, the slow-path branch after the
  segmentation re-weighting, one time step at 1/32);
- ``'slow'``: the slow pathway's last stage.

Heat maps are ``ReLU(Σ_c w_c · A_c)`` with ``w_c`` the mean gradient of the class score over
the channel's positions (``method='gradcam'``, Selvaraju et al. 2017), or
``ReLU(Σ_c G_c ⊙ A_c)`` with the gradient taken position by position (``'hirescam'``, Draelos
& Carin 2020, which only lights positions the score depends on). They are upsampled
(trilinear) to the input clip's frames and pixels and scaled to [0, 1] per clip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.errors import InputShapeError, ModelError

__all__ = ["GradCAM", "GradCamResult", "denormalize", "overlay_heatmap", "save_gradcam"]

TARGET_LAYERS = {
    "fast": "backbone.fast_path.layer4",
    "slow": "backbone.slow_path.layer4",
    "fusion": "cls_head.map_fast2",
}


@dataclass(frozen=True)
class GradCamResult:
    """Heat maps (N, T, H, W) in [0, 1] aligned to the input clips, and the logits (N, K)."""

    heatmaps: torch.Tensor
    logits: torch.Tensor


class GradCAM:
    """Gradient-weighted class activation maps of one layer of a recogniser.

    Parameters
    ----------
    model : nn.Module
        A :class:`models.recognizer.Recognizer` (any module mapping clips (N, 3, T, H, W)
        to logits works).
    layer : str or nn.Module
        ``'fast'``, ``'slow'``, ``'fusion'``, a dotted module name, or the module itself.
    method : {'gradcam', 'hirescam'}
        Channel-averaged gradient weights (Grad-CAM) or element-wise ones (HiResCAM).
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module = "fast",
                 method: str = "gradcam") -> None:
        if method not in ("gradcam", "hirescam"):
            raise ValueError(f"method must be 'gradcam' or 'hirescam', got {method!r}")
        self.model = model
        self.method = method
        if isinstance(layer, nn.Module):
            self.layer = layer
        else:
            name = TARGET_LAYERS.get(layer, layer)
            try:
                self.layer = model.get_submodule(name)
            except AttributeError as e:
                raise ModelError(f"Grad-CAM layer {layer!r} ({name}) not found in "
                                 f"{type(model).__name__}") from e

    def __call__(self, clips: torch.Tensor, target: int | torch.Tensor = 1) -> GradCamResult:
        """Heat maps for ``clips`` (N, 3, T, H, W) and class ``target`` (index or (N,) indices).

        The model is run in its current mode with gradients enabled; its parameters'
        gradients are left untouched.
        """
        if clips.dim() != 5:
            raise InputShapeError(f"clips must be (N, 3, T, H, W), got {tuple(clips.shape)}")
        store: dict[str, torch.Tensor] = {}

        def fwd_hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            store["act"] = out

        handle = self.layer.register_forward_hook(fwd_hook)
        try:
            with torch.enable_grad():
                x = clips.detach().requires_grad_(True)
                logits = self.model(x)
                idx = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
                score = logits.gather(1, idx.view(-1, 1)).sum()
                (grad_act,) = torch.autograd.grad(score, store["act"], retain_graph=False)
        finally:
            handle.remove()
        act = store["act"].detach()
        if act.dim() == 4:  # (N, C, h, w) -> (N, C, 1, h, w)
            act, grad_act = act.unsqueeze(2), grad_act.unsqueeze(2)
        if act.dim() != 5:
            raise ModelError(f"Grad-CAM needs a 4-D or 5-D activation, got {tuple(act.shape)}")
        if self.method == "gradcam":
            weights = grad_act.mean(dim=(2, 3, 4), keepdim=True)
        else:
            weights = grad_act
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=tuple(clips.shape[2:]), mode="trilinear",
                            align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return GradCamResult((cam / peak).clamp(0, 1), logits.detach())


def denormalize(clip: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalised clip (3, T, H, W) -> uint8 frames (T, H, W, 3), undoing (x - mean) / std."""
    if clip.dim() != 4 or clip.shape[0] != 3:
        raise InputShapeError(f"clip must be (3, T, H, W), got {tuple(clip.shape)}")
    m = torch.tensor(mean, dtype=clip.dtype).view(3, 1, 1, 1)
    s = torch.tensor(std, dtype=clip.dtype).view(3, 1, 1, 1)
    rgb = (clip.detach().cpu() * s + m).clamp(0, 255).round().to(torch.uint8)
    return rgb.permute(1, 2, 3, 0).numpy()


def _jet(v: np.ndarray) -> np.ndarray:
    """Jet colour map: values in [0, 1] -> uint8 RGB."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def overlay_heatmap(frames: np.ndarray, heat: np.ndarray | torch.Tensor,
                    alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured heat map over frames.

    Parameters
    ----------
    frames : uint8 array (T, H, W, 3)
        RGB frames.
    heat : array (T, H, W)
        Values in [0, 1].
    alpha : float
        Weight of the heat map colour, 0 (frames only) to 1 (heat map only).

    Returns
    -------
    uint8 array (T, H, W, 3)
    """
    h = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or h.shape != f.shape[:3]:
        raise InputShapeError(f"frames (T, H, W, 3) and heat (T, H, W) disagree: "
                              f"{f.shape} vs {h.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mixed = (1 - alpha) * f.astype(np.float32) + alpha * _jet(np.clip(h, 0, 1)).astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def save_gradcam(frames: np.ndarray, heat: np.ndarray | torch.Tensor,
                 out_stem: str | os.PathLike[str], alpha: float = 0.5,
                 frame_ms: int = 100) -> tuple[Path, Path]:
    """Write ``<stem>.gif`` (animated overlay) and ``<stem>.png`` (frames over overlays).

    Parameters
    ----------
    frames : uint8 array (T, H, W, 3)
        RGB frames, e.g. from :func:`denormalize`.
    heat : array (T, H, W)
        Heat map in [0, 1], e.g. ``GradCAM(...)(clip).heatmaps[0]``.
    out_stem : path
        Output path without suffix; its folder is created.
    alpha : float
        Heat map weight in the overlay.
    frame_ms : int
        GIF frame duration in milliseconds.

    Returns
    -------
    (gif_path, png_path)
    """
    from PIL import Image

    over = overlay_heatmap(frames, heat, alpha)
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    gif, png = stem.with_suffix(".gif"), stem.with_suffix(".png")
    images = [Image.fromarray(o) for o in over]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=int(frame_ms), loop=0)
    top = np.concatenate(list(np.asarray(frames)), axis=1)
    bottom = np.concatenate(list(over), axis=1)
    Image.fromarray(np.concatenate([top, bottom], axis=0)).save(png)
    return gif, png
