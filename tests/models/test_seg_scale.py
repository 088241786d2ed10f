"""``seg_scale``: AMAGI's segmenter sees the clip's centre frames upsampled (``amagi_tiny_tge2``
sees a 128-pixel clip's frames at 256), so that a source of a few pixels covers more of its
receptive field; the head's reduction grows with the maps, and the analysis pipeline's masks
stay pixel-aligned with the frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
from models import ModelConfigError, build_model, model_cfg
from tests.amagi_plugin.test_pipeline import ArrayVideo


def test_the_segmenter_sees_the_frames_upsampled_and_its_maps_grow() -> None:
    torch.manual_seed(0)
    plain, scaled = build_model("amagi_tiny_tge").eval(), build_model("amagi_tiny_tge2").eval()
    scaled.backbone.seg_model.load_state_dict(plain.backbone.seg_model.state_dict())
    cfg = scaled.default_cfg
    assert (cfg.seg_scale, cfg.seg_input_size, cfg.input_size) == (2, 256, 128)
    assert model_cfg("amagi_tiny_tge2") == cfg and plain.default_cfg.seg_input_size == 128
    frames = torch.randn(2, 15, 128, 128)
    with torch.inference_mode():
        got = scaled.segment(frames)
        # the same segmenter, given frames upsampled here
        up = F.interpolate(frames, size=(256, 256), mode="bilinear", align_corners=False)
        want = plain.backbone.seg_model(up)[1]
    assert got.shape == (2, 2, 64, 64)
    torch.testing.assert_close(got, want)
    # the head reduces 64x64 maps to the pathways' 4x4 grid
    assert scaled.cls_head.seg_reduction.kernel_size == (16, 16)
    assert plain.cls_head.seg_reduction.kernel_size == (8, 8)


def test_the_clip_path_uses_the_upsampled_maps() -> None:
    torch.manual_seed(1)
    model = build_model("amagi_tiny_tge2").eval()
    clip = torch.randn(1, 3, 8, 128, 128)
    with torch.inference_mode():
        _, (aux, main) = model.backbone(clip)
        direct = model.segment(model.backbone.segmentation_input(clip))
        assert aux.shape == main.shape == (1, 2, 64, 64)
        torch.testing.assert_close(main, direct)
        assert model(clip).shape == (1, 2)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_a_scale_that_is_not_a_whole_number_of_at_least_one_is_refused(bad: float) -> None:
    with pytest.raises(ModelConfigError, match="seg_scale"):
        build_model("amagi_tiny_tge", seg_scale=bad)


def test_key_frame_masks_stay_pixel_aligned_with_the_frame() -> None:
    """The pipeline's masks go through ``model.segment``: with the 2x segmenter its logits
    are twice as large, and are still brought back to the frame's own pixels."""
    torch.manual_seed(2)
    model = build_model("amagi_tiny_tge2").eval()
    seen: list[tuple[int, ...]] = []
    model.backbone.seg_model.register_forward_hook(
        lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    frames = np.random.default_rng(0).integers(0, 255, (40, 96, 144, 3), dtype=np.uint8)
    video = ArrayVideo(frames, 30.0)
    analyzer = BleedingAnalyzer.for_model(model, AnalysisOptions())
    masks = analyzer.segment_frames({20: frames[19]}, video)
    assert set(masks) == {20} and masks[20].shape == (96, 144) and masks[20].dtype == bool
    # every window the net saw was a 128-pixel window of the frame, upsampled to 256
    assert seen and all(s[-2:] == (256, 256) and s[1] == 15 for s in seen)
