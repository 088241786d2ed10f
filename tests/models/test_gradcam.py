"""Grad-CAM: heat maps follow the region a logit depends on; overlays are written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from models import GradCAM, build_model, denormalize, overlay_heatmap, save_gradcam
from models.errors import ModelError


class RegionPool(nn.Module):
    """Average over one rectangle of the last two dims only: the logit ignores the rest."""

    def __init__(self, rows: slice, cols: slice) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[..., self.rows, self.cols]
        dims = tuple(range(2, x.dim()))
        return r.mean(dim=dims, keepdim=True)


def _region_model(name: str, rows: slice, cols: slice) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name).eval()
    head = model.cls_head
    if name.startswith("amagi"):
        head.gap = RegionPool(rows, cols)  # after the fusion layer
    else:
        head.avg_pool = RegionPool(rows, cols)
    return model


def _quadrant_means(heat: torch.Tensor) -> torch.Tensor:
    """Mean heat of the 4 quadrants (top-left, top-right, bottom-left, bottom-right)."""
    h, w = heat.shape[-2:]
    q = [heat[..., : h // 2, : w // 2], heat[..., : h // 2, w // 2 :],
         heat[..., h // 2 :, : w // 2], heat[..., h // 2 :, w // 2 :]]
    return torch.stack([t.mean() for t in q])


@pytest.mark.parametrize(("name", "layer"), [("slowfast_tiny", "fast"), ("amagi_tiny", "fusion")])
@pytest.mark.parametrize("quadrant", [0, 3])
def test_heatmap_peaks_where_the_logit_looks(name, layer, quadrant):
    # 128x128 input -> 4x4 features; the logit depends on one 2x2 quadrant of them.
    rows = slice(0, 2) if quadrant < 2 else slice(2, 4)
    cols = slice(0, 2) if quadrant % 2 == 0 else slice(2, 4)
    model = _region_model(name, rows, cols)
    clips = torch.randn(2, *model.default_cfg.clip_shape, generator=torch.Generator().manual_seed(1))
    target = int(torch.argmax(model(clips)[0]))
    res = GradCAM(model, layer, method="hirescam")(clips, target=target)
    assert res.heatmaps.shape == (2, 8, 128, 128)
    assert float(res.heatmaps.min()) >= 0.0 and float(res.heatmaps.max()) <= 1.0
    for n in range(2):
        means = _quadrant_means(res.heatmaps[n])
        assert int(torch.argmax(means)) == quadrant, means
        # far corner of the opposite quadrant (beyond trilinear smoothing) is cold
        far = res.heatmaps[n, :, 112:, 112:] if quadrant == 0 else res.heatmaps[n, :, :16, :16]
        assert float(far.max()) == 0.0


def test_gradcam_on_input_confined_to_a_region():
    # The clip is blank except the top-left quadrant and the logit reads the top-left
    # features only: plain Grad-CAM's heat map must be strongest there.
    model = _region_model("slowfast_tiny", slice(0, 2), slice(0, 2))
    clips = torch.zeros(1, *model.default_cfg.clip_shape)
    clips[..., :64, :64] = 2.0 * torch.randn(1, 3, 8, 64, 64,
                                             generator=torch.Generator().manual_seed(2))
    logits = model(clips)
    target = int(torch.argmax(logits[0]))
    res = GradCAM(model, "fast")(clips, target=target)
    means = _quadrant_means(res.heatmaps[0])
    assert int(torch.argmax(means)) == 0, means


def test_gradcam_leaves_parameter_grads_and_mode_alone():
    model = build_model("slowfast_tiny").eval()
    clips = torch.randn(1, *model.default_cfg.clip_shape)
    res = GradCAM(model, "fast")(clips, target=0)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert torch.allclose(res.logits, model(clips))


def test_unknown_layer_and_method_are_rejected():
    model = build_model("slowfast_tiny")
    with pytest.raises(ModelError, match="fusion"):
        GradCAM(model, "fusion")  # a plain SlowFast has no fusion layer
    with pytest.raises(ValueError, match="method"):
        GradCAM(model, "fast", method="cam++")


def test_overlay_gif_and_png_strip(tmp_path):
    mean, std = (117.1, 75.3, 67.4), (60.2, 51.3, 49.2)
    clip = torch.randn(3, 4, 32, 48)
    frames = denormalize(clip, mean, std)
    assert frames.shape == (4, 32, 48, 3) and frames.dtype == np.uint8
    expected = ((clip * torch.tensor(std).view(3, 1, 1, 1) + torch.tensor(mean).view(3, 1, 1, 1))
                .clamp(0, 255).round().permute(1, 2, 3, 0).numpy())
    assert np.array_equal(frames, expected.astype(np.uint8))
    heat = torch.zeros(4, 32, 48)
    heat[:, :16, :24] = 1.0
    over = overlay_heatmap(frames, heat, alpha=1.0)
    assert (over[:, :16, :24] == [128, 0, 0]).all()  # jet(1) = dark red
    assert (over[:, 16:, 24:] == [0, 0, 128]).all()  # jet(0) = dark blue
    assert np.array_equal(overlay_heatmap(frames, heat, alpha=0.0), frames)
    gif, png = save_gradcam(frames, heat, tmp_path / "out" / "cam", frame_ms=80)
    with Image.open(gif) as im:
        assert im.n_frames == 4 and im.size == (48, 32)
        assert im.info["duration"] == 80
    with Image.open(png) as im:
        assert im.size == (4 * 48, 2 * 32)
        strip = np.asarray(im.convert("RGB"))
    assert np.array_equal(strip[:32, :48], frames[0])
    with pytest.raises(ValueError, match="disagree"):
        overlay_heatmap(frames, heat[:2])
