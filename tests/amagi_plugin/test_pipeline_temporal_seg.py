"""A temporal segmenter (``default_cfg.seg_frames`` > 1) in the analysis pipeline: key-frame
masks and guidance areas see each frame with its neighbours, laid out as a clip lays them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
from amagi_plugin.schedule import ClipSchedule
from tests.amagi_plugin.test_pipeline import ArrayVideo, RednessNet

SIZE = (48, 64)


class FlowNet(RednessNet):
    """Segments where the red channel changes between the first and last stacked frame;
    records every segmentation input it is given."""

    def __init__(self, seg_frames: int = 3) -> None:
        super().__init__()
        self.default_cfg = SimpleNamespace(has_segmentation=True, seg_frames=seg_frames)
        self.inputs: list[torch.Tensor] = []

    def segment(self, frames: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        assert frames.shape[1] == 3 * self.default_cfg.seg_frames
        self.inputs.append(frames.clone())
        change = (frames[:, -3:-2] - frames[:, :1]).abs()
        small = nn.functional.avg_pool2d(change, 4)
        logits = torch.cat([0.05 - small, small - 0.05], dim=1) * 40
        return [logits, logits]


def still_and_flowing(n: int) -> np.ndarray:
    """A red patch that never changes (left) and one whose red level keeps rising (right)."""
    frames = np.full((n, *SIZE, 3), 90, np.uint8)
    frames[:, 10:30, 4:20] = (230, 20, 20)
    level = np.minimum(40 + 2 * np.arange(n), 250).astype(np.uint8)
    frames[:, 10:30, 40:56, 0] = level[:, None, None]
    frames[:, 10:30, 40:56, 1:] = 20
    return frames


def test_window_is_a_clips_layout_clamped_to_the_video() -> None:
    s30 = ClipSchedule(300, 30.0)
    assert s30.window(100, 5) == [94, 97, 100, 103, 106]  # grid 0.1 s = 3 frames at 30 fps
    assert s30.window(1, 5) == [0, 0, 1, 4, 7] and s30.window(299, 3) == [296, 299, 299]
    s25 = ClipSchedule(250, 25.0)
    # points 39-41, as their clip holds them (41 · 0.1 · 25 is 102.50000000000001 in floats)
    assert s25.window(100, 3) == [98, 100, 103] == [s25.grid_frame(g) for g in (39, 40, 41)]
    # grid point 3 shows frame 8 (7.5 rounds to even): its neighbours are those of points 2
    # and 4, as the clip centred there holds them, not 8 ± 2.5 rounded (6 and 10)
    assert s25.window(8, 3) == [5, 8, 10] and s25.window(8, 5) == [2, 5, 8, 10, 12]
    assert s25.window(9, 3) == [6, 9, 12]  # no grid point's frame: 9 ± 2.5, rounded to even
    assert s25.window(2, 3) == [0, 2, 5]  # point 1 (2.5 rounds to 2); centred: 0, 2, 4
    assert s25.window(248, 3) == [245, 248, 249]  # the last point, clamped as its clip is
    assert s25.window(3, 3) == [0, 3, 6] and s25.window(249, 3) == [246, 249, 249]
    assert ClipSchedule(600, 60.0).window(100, 3) == [94, 100, 106]
    assert s30.window(50, 1) == [50]


def test_key_frame_masks_see_the_neighbours_and_mark_only_what_changes() -> None:
    fps = 30.0
    video = ArrayVideo(still_and_flowing(90), fps)
    net = FlowNet(seg_frames=3)
    analyzer = BleedingAnalyzer(net, AnalysisOptions(mask_scale="native"), input_size=32)
    key = {45: video._frames[44]}  # 1-based frame number -> its pixels
    masks = analyzer.segment_frames(key, video)
    assert set(masks) == {45} and masks[45].shape == SIZE
    assert masks[45][12:28, 42:54].all()  # the rising patch
    assert not masks[45][:, :24].any()  # the still one: red, but it does not change
    # The net saw frames 41, 44 and 47 (0-based), each through the analyzer's transform.
    want = torch.cat([torch.as_tensor(analyzer.native_transform(video._frames[i]))
                      for i in (41, 44, 47)]).as_subclass(torch.Tensor)
    assert any(torch.equal(x[:, :h, :w], want[:, dy:dy + h, dx:dx + w])  # sliding windows
               for x in (t[0] for t in net.inputs) for h, w in [x.shape[-2:]]
               for dy in range(SIZE[0] - h + 1) for dx in range(SIZE[1] - w + 1))
    with pytest.raises(ValueError, match="needs the video"):
        analyzer.segment_frames(key)


def test_key_frame_masks_at_the_models_scale() -> None:
    """The default: the whole frame resized as the clips are (short side 32 here), the map
    brought back to the frame's pixels; the same patches marked and left."""
    video = ArrayVideo(still_and_flowing(90), 30.0)
    net = FlowNet(seg_frames=3)
    analyzer = BleedingAnalyzer(net, AnalysisOptions(), input_size=32)
    masks = analyzer.segment_frames({45: video._frames[44]}, video)
    assert set(masks) == {45} and masks[45].shape == SIZE and masks[45].dtype == bool
    assert masks[45][14:26, 44:52].all()  # the rising patch, inside its blurred edge
    assert not masks[45][:, :24].any()  # the still one
    # the net saw the three frames at the model's scale: 32 x 43, in windows of 32
    assert net.inputs and all(x.shape[0] == 9 and x.shape[-2:] == (32, 32)
                              for x in (t[0] for t in net.inputs))
    with pytest.raises(ValueError, match="mask_scale must be one of model, native"):
        AnalysisOptions(mask_scale="full")


def test_guidance_areas_of_a_temporal_segmenter() -> None:
    fps = 30.0
    frames = still_and_flowing(120)
    frames[60:] = frames[59]  # the rise stops: from then on only still red
    video = ArrayVideo(frames, fps)
    analyzer = BleedingAnalyzer(FlowNet(seg_frames=5), AnalysisOptions(), input_size=32)
    indices = [30, 0, 110, 30, 400, 58]
    areas = analyzer.guidance_areas(video, indices, batch_size=2)
    assert areas.shape == (6,)
    assert areas[0] > 0.05 and areas[0] == areas[3]
    assert areas[1] > 0.05  # the window is clamped at the start, as the clips are
    assert areas[2] == 0.0  # still blood only
    assert np.isnan(areas[4])  # past the end
    assert areas[5] > 0.0  # its window reaches into the still part: the first half changes
    # one pass: from the first window's first frame to the last window's last frame
    assert video.decoded == 116 - 0 + 1
    assert video.converted == len({f for i in (0, 30, 58, 110)
                                   for f in ClipSchedule(120, fps).window(i, 5)})


def test_a_frame_whose_neighbour_is_not_delivered_gets_no_guidance() -> None:
    class Gappy(ArrayVideo):
        def frames(self, *args, **kwargs):
            for item in super().frames(*args, **kwargs):
                if item[0] != 33:  # the decoder loses frame 33
                    yield item

    video = Gappy(still_and_flowing(90), 30.0)
    analyzer = BleedingAnalyzer(FlowNet(seg_frames=3), AnalysisOptions(), input_size=32)
    areas = analyzer.guidance_areas(video, [30, 36, 60])
    assert np.isnan(areas[0]) and np.isnan(areas[1]) and areas[2] > 0.05
    assert analyzer.segment_frames({31: video._frames[30]}, video) == {}
