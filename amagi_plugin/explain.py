"""Grad-CAM views of the clip centred on a moment of a video (the authors' visualisations)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from amagi_plugin.errors import InputError
from amagi_plugin.pipeline import BleedingAnalyzer, VideoLike, read_frames


@dataclass(frozen=True)
class Explanation:
    gif: Path
    png: Path
    frames: list[int]  # 1-based frame numbers of the clip
    probability: float  # bleeding probability of this clip alone


def explain_at(video: VideoLike, analyzer: BleedingAnalyzer, at_s: float, layer: str,
               out_stem: Path) -> Explanation:
    """Grad-CAM of ``layer`` (``fast`` or ``fusion``) for the clip centred at ``at_s`` seconds."""
    from models.gradcam import GradCAM, denormalize, save_gradcam

    schedule = analyzer.schedule_for(video)
    if not 0 <= at_s <= schedule.duration_s:
        raise InputError(f"--at {at_s:g} s is outside the video (0-{schedule.duration_s:.1f} s)")
    g = round(at_s / schedule.grid_s)
    indices = schedule.clip_frames(g + schedule.clip_offsets[1])  # the clip centred on g
    rgb = read_frames(video, [i + 1 for i in indices])
    clip = torch.stack([torch.as_tensor(analyzer.transform(rgb[i + 1])) for i in indices], dim=1)
    clip = clip.as_subclass(torch.Tensor)[None]
    model = analyzer.model
    cfg = model.default_cfg
    if layer == "fusion" and not cfg.has_segmentation:
        raise InputError(f"{cfg.name} has no fusion layer (only AMAGI does): use --layer fast")
    result = GradCAM(model, layer)(clip.to(analyzer.options.device), target=1)
    prob = float(torch.softmax(result.logits.float(), dim=1)[0, 1])
    gif, png = save_gradcam(denormalize(clip[0], cfg.mean, cfg.std), result.heatmaps[0].cpu(),
                            out_stem)
    return Explanation(gif, png, [i + 1 for i in indices], prob)
