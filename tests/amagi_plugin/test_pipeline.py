from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer, FramePrefetcher, SideFrames
from amagi_plugin.schedule import naive_clip_probabilities


class ArrayVideo:
    """A decoded video in memory, with the frames() contract of dicom_io.video."""

    def __init__(self, frames: np.ndarray, fps: float) -> None:
        self._frames, self.fps, self.frame_count = frames, fps, len(frames)
        self.decoded = self.converted = 0

    def frames(self, start=0, stop=None, step=1, workers=1, wanted=None):
        for i in range(start, self.frame_count if stop is None else min(stop, self.frame_count), step):
            self.decoded += 1
            if wanted is None or i in wanted:
                self.converted += 1
                yield i, i / self.fps, self._frames[i]


class RednessNet(nn.Module):
    """Bleeding logit grows with the red excess of the clip, weighted over time."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        red = (clips[:, 0] - clips[:, 1]).mean(dim=(-1, -2))  # (N, T)
        z = ((red + 0.5) * self.w).sum(dim=1, keepdim=True)
        return torch.cat([-z, z], dim=1)

    def segment(self, frames: torch.Tensor) -> list[torch.Tensor]:
        red = frames[:, :1] - frames[:, 1:2]
        small = nn.functional.avg_pool2d(red, 4)
        logits = torch.cat([-small, small], dim=1) * 4
        return [logits, logits]


def synthetic_frames(n: int, fps: float, bleed: tuple[float, float], size=(48, 64)) -> np.ndarray:
    t = np.arange(n) / fps
    frames = np.full((n, *size, 3), 90, np.uint8)
    on = (t >= bleed[0]) & (t < bleed[1])
    frames[on, 10:30, 20:40, 0] = 250  # a red patch while bleeding
    frames[on, 10:30, 20:40, 1:] = 20
    return frames


@pytest.mark.parametrize("fps", [30.0, 25.0])
def test_pipeline_equals_naive_three_clip_computation(fps: float) -> None:
    video = ArrayVideo(synthetic_frames(int(6 * fps), fps, (2.0, 4.0)), fps)
    analyzer = BleedingAnalyzer(RednessNet(), AnalysisOptions(batch_size=4, decode_ahead=16),
                                input_size=32)
    result = analyzer.analyze(video)
    sched = result.schedule
    frames = {}
    for i, _, rgb in ArrayVideo(video._frames, fps).frames():
        frames[i] = torch.as_tensor(analyzer.transform(rgb))

    def naive(starts):
        clips = torch.stack([torch.stack([frames[f] for f in sched.clip_frames(s)], dim=1)
                             for s in starts]).as_subclass(torch.Tensor)
        with torch.no_grad():
            return torch.softmax(analyzer.model(clips), dim=1).numpy()

    expected = naive_clip_probabilities(sched, naive)[:, 1]
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=1e-6)
    # The same video through the analyzer's own naive mode (three fresh clips per prediction).
    naive_run = BleedingAnalyzer(RednessNet(), AnalysisOptions(share_clips=False, decode_ahead=16),
                                 input_size=32).analyze(ArrayVideo(video._frames, fps))
    np.testing.assert_allclose(naive_run.probabilities, result.probabilities, rtol=0, atol=1e-6)
    assert naive_run.clips_computed == 3 * len(result.probabilities)
    assert result.clips_computed == len(sched.clip_starts()) < 3 * len(result.probabilities)
    assert video.decoded <= video.frame_count + len(result.key_frames)
    # only the clips' frames (and the key frames) are converted: one in three at 30 fps
    needed = {f for s in sched.clip_starts() for f in sched.clip_frames(s)}
    assert video.converted == len(needed) + len(result.key_frames) < video.decoded


def test_pipeline_finds_the_event_and_its_mask() -> None:
    fps = 30.0
    video = ArrayVideo(synthetic_frames(180, fps, (2.0, 4.0)), fps)
    result = BleedingAnalyzer(RednessNet(), AnalysisOptions(), input_size=32).analyze(video)
    assert result.index.event_count == 1
    (e,) = result.events
    # Clips reach 0.7 s ahead of and behind each prediction: edges within that.
    assert abs(e.start_s - 2.0) <= 0.8 and abs(e.end_s - 4.0) <= 0.8
    assert 60 < e.key_frame <= 121
    mask = result.masks[e.key_frame]
    assert mask.shape == (48, 64)
    assert mask[12:28, 22:38].all() and not mask[:, :16].any()
    assert set(result.timings) >= {"decode", "transforms", "video_network", "post_processing"}


def test_guidance_areas_measure_the_segmentation_map() -> None:
    fps = 30.0
    video = ArrayVideo(synthetic_frames(180, fps, (2.0, 4.0)), fps)
    analyzer = BleedingAnalyzer(RednessNet(), AnalysisOptions(), input_size=32)
    indices = [30, 90, 90, 150, 75, 400]  # any order, repeats, one past the end
    areas = analyzer.guidance_areas(video, indices)
    assert areas.shape == (6,)
    # The 20x20 red patch of a 48x64 frame, seen at 32x32 after resize and centre crop, is
    # about 13x13 pixels (17 % of the input); the quarter-resolution map widens it a little.
    assert areas[1] == areas[2] and 0.12 < areas[1] < 0.3 and 0.12 < areas[4] < 0.3
    assert areas[0] == 0.0 and areas[3] == 0.0
    assert np.isnan(areas[5])
    # one pass from the first wanted frame to the last one inside the video (400 is not)
    assert video.decoded == 150 - 30 + 1
    assert video.converted == 4  # of which only the wanted ones are converted
    assert analyzer.guidance_areas(video, []).shape == (0,)

    class NoSegmentation(nn.Module):
        def forward(self, clips: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(clips), 2)

    plain = BleedingAnalyzer(NoSegmentation(), AnalysisOptions(), input_size=32)
    assert plain.guidance_areas(video, indices) is None


def test_decoder_errors_reach_the_caller() -> None:
    class Broken(ArrayVideo):
        def frames(self, start=0, stop=None, step=1, workers=1, wanted=None):
            yield from super().frames(start, 10, step, wanted=wanted)
            raise OSError("stream damaged at frame 10")

    video = Broken(synthetic_frames(90, 30.0, (0, 0)), 30.0)
    with pytest.raises(OSError, match="damaged at frame 10"):
        BleedingAnalyzer(RednessNet(), AnalysisOptions(), input_size=32).analyze(video)


def test_the_prefetcher_hands_a_side_consumer_its_frames_in_order_once() -> None:
    frames = synthetic_frames(40, 10.0, (0, 0))
    video = ArrayVideo(frames, 10.0)
    side = [1, 2, 7, 20, 33, 39]  # 33 and 39 lie past the last frame the first consumer needs
    p = FramePrefetcher(video, [2, 5, 9, 20], lambda rgb: torch.from_numpy(rgb.copy()),
                        capacity=3, timings={},
                        side=SideFrames(side, lambda rgb: rgb[0, 0, 0] + 0))
    taken = []
    try:
        for f in (2, 5, 9):
            assert torch.equal(p.get(f), torch.from_numpy(frames[f]))
            taken += p.take_side()
        assert [i for i, _ in taken] == [1, 2, 7]  # pulled by get(), no further
        assert torch.equal(p.get(20), torch.from_numpy(frames[20]))
        taken += list(p.drain_side())
    finally:
        p.close()
    assert [i for i, _ in taken] == side and video.converted == 8  # each frame converted once
    assert [v for _, v in taken] == [frames[i][0, 0, 0] for i in side]
    with pytest.raises(RuntimeError, match="frame 33 was never decoded"):
        p.get(33)  # a side frame only: not kept for the first consumer


def test_a_frame_both_consumers_read_is_preprocessed_once_when_derivable() -> None:
    frames = synthetic_frames(12, 10.0, (0, 0))
    calls = {"first": 0, "side": 0}

    def first(rgb):
        calls["first"] += 1
        return torch.from_numpy(rgb.astype(np.float32))

    def side(rgb):
        calls["side"] += 1
        return torch.from_numpy(rgb.astype(np.float32))

    p = FramePrefetcher(ArrayVideo(frames, 10.0), [1, 4, 8], first, capacity=4, timings={},
                        side=SideFrames([4, 8, 10], side, derive=lambda t: t + 0))
    try:
        got = [p.get(f) for f in (1, 4, 8)]
        rest = list(p.drain_side())
    finally:
        p.close()
    for f, t in zip((1, 4, 8), got, strict=True):
        assert torch.equal(t, torch.from_numpy(frames[f].astype(np.float32)))
    assert [i for i, _ in rest] == [4, 8, 10] and calls == {"first": 1, "side": 3}


def test_a_decoder_error_after_the_clips_reaches_the_side_consumer() -> None:
    class Broken(ArrayVideo):
        def frames(self, start=0, stop=None, step=1, workers=1, wanted=None):
            yield from super().frames(start, 12, step, wanted=wanted)
            raise OSError("stream damaged at frame 12")

    p = FramePrefetcher(Broken(synthetic_frames(30, 10.0, (0, 0)), 10.0), [3, 6],
                        torch.from_numpy, capacity=4, timings={},
                        side=SideFrames([4, 11, 25], torch.from_numpy))
    try:
        p.get(6)
        got = []
        with pytest.raises(OSError, match="damaged at frame 12"):
            for index, _ in p.drain_side():
                got.append(index)
        assert got == [4, 11]
    finally:
        p.close()


class CountingVideo(ArrayVideo):
    """An :class:`ArrayVideo` that counts its ``frames()`` calls (each one a seek)."""

    def __init__(self, frames: np.ndarray, fps: float) -> None:
        super().__init__(frames, fps)
        self.seeks = 0

    def frames(self, *args, **kwargs):
        self.seeks += 1
        return super().frames(*args, **kwargs)


def test_read_frames_reads_them_in_one_pass() -> None:
    """One sparse read (the decoder skips what lies between: dicom_io's sparse reads)."""
    from amagi_plugin.pipeline import READ_WORKERS, read_frames

    frames = np.random.default_rng(0).integers(0, 255, (400, 4, 4, 3), dtype=np.uint8)
    video = CountingVideo(frames, 30.0)
    calls: list[dict] = []
    real = video.frames
    video.frames = lambda *a, **kw: calls.append(kw) or real(*a, **kw)  # type: ignore
    numbers = [10, 3, 3, 200, 400, 401]  # 1-based; 401 is past the end
    got = read_frames(video, numbers)
    assert sorted(got) == [3, 10, 200, 400]
    assert all(np.array_equal(got[n], frames[n - 1]) for n in got)
    assert video.seeks == 1 and calls[0]["workers"] == READ_WORKERS >= 2
    assert calls[0]["wanted"] == {2, 9, 199, 399, 400}
    assert video.converted == len(got)  # only the wanted frames are converted
    assert read_frames(video, []) == {} and video.seeks == 1


def test_key_frames_and_their_segmenter_window_are_read_together() -> None:
    """One event: its key frame and a temporal segmenter's neighbours come from one seek."""
    from tests.amagi_plugin.test_pipeline_temporal_seg import FlowNet, still_and_flowing

    video = CountingVideo(still_and_flowing(90), 30.0)
    analyzer = BleedingAnalyzer(FlowNet(seg_frames=3), AnalysisOptions(), input_size=32)
    schedule = analyzer.schedule_for(video)
    assert analyzer.mask_frames(video, [45]) == [42, 45, 48]  # 1-based, the grid 3 frames
    assert analyzer.mask_frames(video, [1]) == sorted({1, *(i + 1 for i in schedule.window(0, 3))})
    result = analyzer.analyze(video)
    assert result.events and set(result.masks) == set(result.key_frames)
    assert video.seeks == 2  # the clips' pass, then the key frame with its neighbours
    video.seeks = 0
    assert analyzer.segment_frames(result.key_frames, video).keys() == result.masks.keys()
    assert video.seeks == 1  # on its own it reads the neighbours (one pass: they are near)
