"""amagi_plugin.probing: the neighbourhood probe as a second stage of analysis. Its geometry
against hand-made frames and the clip transform; its one-pass scores against a direct
computation on the whole video in memory; bounded memory; a truncated video; the fusion."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from amagi_plugin.inferers import MaskInferer
from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
from amagi_plugin.probing import (
    MapGeometry,
    NeighbourhoodProbe,
    ProbeUse,
    fuse,
    map_peaks,
    neighbourhoods,
    probe_frames,
)
from amagi_plugin.transforms import clip_frame_transform
from models.patchnet import PatchNet, PatchNetConfig
from tests.amagi_plugin.test_pipeline import ArrayVideo, RednessNet

SIZE = (40, 56)  # frames (H, W); the model's scale is 32: resized to 32 x 45
CFG = PatchNetConfig(frames=4, step_s=0.2, crop=8, width=4, candidates=3, short_side=32)


def video_frames(n: int, seed: int = 0) -> np.ndarray:
    """Textured frames with two red spots, one growing (so the map has several peaks)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(60, 120, (n, *SIZE, 3)).astype(np.uint8)
    frames[:, 8:14, 6:12] = (220, 30, 30)
    for i in range(n):
        r = 2 + i % 6
        frames[i, 25 - r:25 + r, 40 - r:40 + r] = (240, 20, 20)
    return frames


def analyzer(net: PatchNet | None = None, use: ProbeUse | None = None) -> BleedingAnalyzer:
    torch.manual_seed(0)
    return BleedingAnalyzer(RednessNet(), AnalysisOptions(), input_size=32, clip_len=8,
                            probe=net or PatchNet(CFG).eval(), probe_use=use)


def test_frames_are_step_apart_around_the_instant_and_clamped() -> None:
    cfg = PatchNetConfig(frames=8, step_s=0.2)
    assert probe_frames(100, 900, 30.0, cfg) == [76, 82, 88, 94, 100, 106, 112, 118]
    assert probe_frames(2, 10, 10.0, cfg) == [0, 0, 0, 0, 2, 4, 6, 8]
    assert probe_frames(9, 10, 10.0, cfg)[-3:] == [9, 9, 9]
    assert probe_frames(5, 10, 2.0, cfg)[3:6] == [4, 5, 6]  # at least a frame apart


def test_a_neighbourhood_is_the_frame_around_the_point_zero_outside() -> None:
    stack = torch.rand(2, 3, 20, 30)
    n = neighbourhoods(stack, [(10, 15), (0, 0), (100, 100)], 6)
    assert n.shape == (3, 2, 3, 6, 6)
    assert torch.equal(n[0], stack[:, :, 7:13, 12:18])
    assert not n[1, :, :, :3].any() and not n[1, :, :, :, :3].any()
    assert torch.equal(n[1, :, :, 3:, 3:], stack[:, :, :3, :3])
    assert not n[2].any()  # wholly outside: zeros


def test_map_peaks_are_local_maxima_highest_first() -> None:
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")

    def bump(y: int, x: int, height: float) -> torch.Tensor:
        return height * torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)

    # the third bump lies inside the second's 9 x 9 neighbourhood, below it: not a peak
    p = torch.maximum(torch.maximum(bump(5, 5, 0.5), bump(30, 10, 0.9)), bump(33, 12, 0.3))
    found = map_peaks(p, 5)
    assert [(y, x) for y, x, _ in found] == [(30, 10), (5, 5)]
    assert found[0][2] > found[1][2] > 0
    assert map_peaks(p, 1) == found[:1]
    assert map_peaks(torch.zeros(8, 8), 3) == []


def test_the_geometry_is_the_clip_transform_split_in_two() -> None:
    """Resize (uncropped) then crop-and-normalise gives exactly what the clip transform gives,
    and a map pixel goes back to the frame pixel it was cropped from."""
    rgb = video_frames(1)[0]
    mean, std = (100.0, 80.0, 70.0), (50.0, 40.0, 45.0)
    g = MapGeometry(32, mean, std)
    frame = g.frame(rgb)
    assert frame.shape == (3, 32, 45)
    want = clip_frame_transform(32, mean, std)(rgb)
    torch.testing.assert_close(g.map_input(frame), torch.as_tensor(want).as_subclass(torch.Tensor))
    oy, ox = g.offset(frame.shape)
    assert (oy, ox) == (0, 6)
    crop = g.map_input(frame) * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    y, x = g.to_frame(5, 7, frame.shape)
    torch.testing.assert_close(frame[:, y, x], crop[:, 5, 7])


def test_a_finer_probes_geometry_maps_at_the_models_scale_and_reads_at_its_own() -> None:
    """Frames at twice the map's scale (a probe trained with ``--scale 2``): scaled down they
    are what the clip transform gives the map (within a grey level: two resizes, not one),
    and a map pixel goes back to the centre of the frame pixels it was made from."""
    yy, xx = np.meshgrid(np.arange(SIZE[0]), np.arange(SIZE[1]), indexing="ij")
    rgb = np.stack([40 + 3 * yy, 30 + 2 * xx, 200 - 2 * yy], -1).astype(np.uint8)  # a ramp
    mean, std = (100.0, 80.0, 70.0), (50.0, 40.0, 45.0)
    g = MapGeometry(32, mean, std, frame_size=64)
    assert (g.side, g.scale) == (64, 2)
    fine = g.frame(rgb)
    assert fine.shape == (3, 64, 90)
    want = torch.as_tensor(clip_frame_transform(32, mean, std)(rgb)).as_subclass(torch.Tensor)
    got = g.map_input(fine)
    assert got.shape == want.shape == (3, 32, 32)
    inner = (slice(None), slice(2, -2), slice(2, -2))  # the ramp's edges are clamped
    torch.testing.assert_close(got[inner], want[inner], atol=1.0 / 40, rtol=0)
    crop = got * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    for my, mx in ((5, 7), (20, 3), (31, 31)):
        y, x = g.to_frame(my, mx, fine.shape)
        # the 2 x 2 frame pixels around (y, x) average to the map pixel (a linear ramp)
        box = fine[:, y - 1:y + 1, x - 1:x + 1].mean(dim=(1, 2)) if y and x else fine[:, y, x]
        torch.testing.assert_close(box, crop[:, my, mx], atol=1.5, rtol=0)
    assert g.to_frame(5, 7, fine.shape) == (11, 27)  # map (5, 7 + 6 of crop) x 2, centred
    for bad in (48, 16, 0):  # no multiple, coarser than the map, none at all
        with pytest.raises(ValueError, match="whole multiple"):
            MapGeometry(32, mean, std, frame_size=bad)


def test_a_finer_probe_looks_at_small_red_where_the_coarse_map_peaks() -> None:
    """The map at 32 px finds a red spot of 1.5 map pixels; the probe at 64 px reads it there
    as 3 × 3 frame pixels."""
    cfg = PatchNetConfig(frames=4, step_s=0.2, crop=8, width=4, candidates=2, short_side=64)
    probe = NeighbourhoodProbe(RedCropNet(cfg), lambda x: x[:, 0] / 255.0,
                               MapGeometry(32, (0, 0, 0), (1, 1, 1)))
    assert probe.geometry.scale == 2
    frames = np.full((10, 64, 64, 3), 100, np.uint8)
    frames[:, 41:44, 20:23] = (255, 0, 0)
    held = {i: probe.geometry.frame(f) for i, f in enumerate(frames)}
    assert held[0].shape == (3, 64, 64)
    (places,) = probe.places(held, [5], lambda i: [i])
    y, x, _v = places[0]
    assert 40 <= y <= 44 and 19 <= x <= 23  # on the spot, in frame pixels
    assert probe.scores(held, [5], lambda i: [i], 10, 10.0)[0] > 0.99


def _direct_scores(a: BleedingAnalyzer, frames: np.ndarray, fps: float, targets: list[int],
                   nets: list[PatchNet] | None = None) -> np.ndarray:
    """The probe's scores computed the plain way: every frame in memory, the clip transform
    for the map, peaks shifted back by the crop offset by hand, numpy slicing; with
    ``nets``, each place's mean probability over these networks."""
    transform = clip_frame_transform(a.input_size, a.mean, a.std)
    network = a._segmentation_network()
    inferer = MaskInferer(a.input_size)
    net, cfg = a.probe.net, a.probe.cfg
    big = torch.stack([MapGeometry(a.input_size, a.mean, a.std).frame(f) for f in frames])
    h, w = big.shape[-2:]
    oy, ox = h // 2 - a.input_size // 2, w // 2 - a.input_size // 2
    out = []
    for i in targets:
        x = torch.as_tensor(transform(frames[i])).as_subclass(torch.Tensor)[None]
        p = inferer(x, network)[0]
        places = [(y + oy, x_ + ox) for y, x_, _ in map_peaks(p, cfg.candidates)]
        step = round(cfg.step_s * fps)
        idx = [min(len(frames) - 1, max(0, i + step * (t - cfg.frames // 2)))
               for t in range(cfg.frames)]
        padded = torch.zeros(cfg.frames, 3, h + 2 * cfg.crop, w + 2 * cfg.crop)
        padded[:, :, cfg.crop:cfg.crop + h, cfg.crop:cfg.crop + w] = big[idx]
        crops = torch.stack([padded[:, :, y + cfg.crop - cfg.crop // 2:y + cfg.crop // 2 + cfg.crop,
                                    x_ + cfg.crop - cfg.crop // 2:x_ + cfg.crop // 2 + cfg.crop]
                             for y, x_ in places])
        with torch.inference_mode():
            p = torch.stack([torch.sigmoid(m(crops)) for m in nets or [net]]).mean(0) \
                if places else torch.zeros(1)
        out.append(float(p.max()))
    return np.array(out)


def test_one_pass_scores_equal_a_direct_computation_and_memory_stays_bounded() -> None:
    fps, n = 10.0, 60
    frames = video_frames(n)
    a = analyzer()
    targets = list(range(0, n, 3))
    held_most = 0
    original = a.probe.scores

    def spy(held, *args, **kwargs):
        nonlocal held_most
        held_most = max(held_most, len(held))
        return original(held, *args, **kwargs)

    a.probe.scores = spy
    a.probe.batch_size = 4
    got = a.probe.score_video(ArrayVideo(frames, fps), targets, lambda i: [i])
    want = _direct_scores(a, frames, fps, targets)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert (got > 0).all()
    # a batch of 4 instants 3 frames apart and the probe's span (3 steps of 2 frames)
    assert held_most <= 4 * 3 + 3 * 2 + 1 < n


def test_several_probes_score_each_place_by_their_mean_probability() -> None:
    """A model.json probe listing several files: at every place the mean of the members'
    probabilities (computed here member by member), the instant's highest as before."""
    from models.patchnet import ProbeEnsemble

    fps, n = 10.0, 30
    frames = video_frames(n)
    torch.manual_seed(1)
    members = [PatchNet(CFG).eval() for _ in range(2)]
    with torch.no_grad():  # the members disagree: one scores high, the other low
        members[0].fc.bias.add_(2.0)
        members[1].fc.bias.sub_(2.0)
    a = analyzer(ProbeEnsemble(members))
    targets = list(range(0, n, 3))
    got = a.probe.score_video(ArrayVideo(frames, fps), targets, lambda i: [i])
    np.testing.assert_allclose(got, _direct_scores(a, frames, fps, targets, members), atol=1e-6)
    each = [_direct_scores(analyzer(m), frames, fps, targets) for m in members]
    assert (each[1] < got).all() and (got < each[0]).all()


def test_a_truncated_video_leaves_the_missing_instants_to_the_clip_network() -> None:
    class Truncated(ArrayVideo):
        def frames(self, *args, **kwargs):
            for item in super().frames(*args, **kwargs):
                if item[0] >= 40:  # the stream ends early
                    return
                yield item

    fps, n = 10.0, 60
    a = analyzer(use=ProbeUse(weight=0.5, smooth_s=0.0))
    targets = list(range(0, n, 3))
    s = a.probe.score_video(Truncated(video_frames(n), fps), targets, lambda i: [i])
    need_late = [probe_frames(i, n, fps, CFG)[-1] >= 40 for i in targets]
    assert np.isnan(s[need_late]).all() and not np.isnan(s[~np.array(need_late)]).any()
    clip = np.full(len(targets), 0.3)
    fused = fuse(clip, s, 10.0, a.probe_use)
    np.testing.assert_allclose(fused[need_late], 0.3)
    np.testing.assert_allclose(fused[~np.array(need_late)], 0.15 + 0.5 * s[~np.array(need_late)])


def test_fuse_averages_the_probe_over_time_then_weighs_it() -> None:
    clip = np.array([0.2, 0.2, 0.2, 0.2])
    probe = np.array([1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(fuse(clip, probe, 1.0, ProbeUse(1.0, 0.0)), probe)
    np.testing.assert_allclose(fuse(clip, probe, 1.0, ProbeUse(0.0, 0.0)), clip)
    # 2 s at 1 Hz: a centred moving mean of width 2, edges repeated
    np.testing.assert_allclose(fuse(clip, probe, 1.0, ProbeUse(0.5, 2.0)),
                               0.1 + 0.5 * np.array([1.0, 0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="differ"):
        fuse(clip, probe[:3], 1.0, ProbeUse())


def test_fuse_can_read_an_upper_quantile_of_a_flickering_probe() -> None:
    """A probe that scores 0.9 at one instant in three inside a bleeding (its map's peaks
    moving between places) and 0.1 elsewhere: a mean over 3 instants dilutes it to 0.37, its
    highest keeps 0.9; windows centred, edges repeated, as the mean's."""
    clip = np.full(9, 0.2)
    probe = np.array([0.1, 0.1, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1])
    mean = fuse(clip, probe, 1.0, ProbeUse(1.0, 3.0))
    highest = fuse(clip, probe, 1.0, ProbeUse(1.0, 3.0, smooth_q=1.0))
    np.testing.assert_allclose(mean[1:4], (0.1 + 0.1 + 0.9) / 3)
    np.testing.assert_allclose(highest, [0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1])
    # the median of each window of 3 (by hand: sorted middle values)
    np.testing.assert_allclose(fuse(clip, probe, 1.0, ProbeUse(1.0, 3.0, smooth_q=0.5)),
                               np.full(9, 0.1))
    # the 0.75-quantile of (0.1, 0.1, 0.9): linear between the 2nd and 3rd, 0.1 + 0.5 * 0.8
    np.testing.assert_allclose(fuse(clip, probe, 1.0, ProbeUse(1.0, 3.0, smooth_q=0.75))[1], 0.5)
    # where the probe has no score the clip network's probability stands, as with the mean
    gap = probe.copy()
    gap[4] = np.nan
    assert fuse(clip, gap, 1.0, ProbeUse(0.5, 3.0, smooth_q=1.0))[4] == 0.2


def test_probe_use_from_a_model_json_entry() -> None:
    assert ProbeUse.from_json("p.pth") == (("p.pth",), ProbeUse())
    assert ProbeUse.from_json({"file": "p.pth", "weight": 1, "smooth_s": 2}) == (
        ("p.pth",), ProbeUse(1.0, 2.0))
    assert ProbeUse.from_json({"file": "p.pth", "memory_s": 0.5}) == (
        ("p.pth",), ProbeUse(memory_s=0.5))
    assert ProbeUse.from_json({"file": ["a.pth", "b.pth"], "weight": 0.75}) == (
        ("a.pth", "b.pth"), ProbeUse(0.75))
    assert ProbeUse.from_json({"file": "p.pth", "smooth_q": 0.9}) == (
        ("p.pth",), ProbeUse(smooth_q=0.9))
    assert ProbeUse.from_json({"file": "p.pth", "smooth_q": None}) == (("p.pth",), ProbeUse())
    for bad, message in (({"weight": 0.5}, "expected a file name"), (3, "expected a file name"),
                         ({"file": []}, "expected a file name"),
                         ({"file": ["a.pth", 3]}, "expected a file name"),
                         ({"file": ["a.pth", ""]}, "expected a file name"),
                         ({"file": ["a.pth", "a.pth"]}, "listed twice"),
                         ({"file": "p", "wieght": 1}, "unknown keys"),
                         ({"file": "p", "weight": 2}, r"must lie in \[0, 1\]"),
                         ({"file": "p", "weight": "x"}, "could not convert"),
                         ({"file": "p", "smooth_s": -1}, "smooth_s must be"),
                         ({"file": "p", "memory_s": -0.5}, "memory_s must be"),
                         ({"file": "p", "smooth_q": 0}, r"smooth_q must lie in \(0, 1\]"),
                         ({"file": "p", "smooth_q": 1.5}, "smooth_q must lie in"),
                         ({"file": "p", "smooth_q": "high"}, "could not convert")):
        with pytest.raises(ValueError, match=message):
            ProbeUse.from_json(bad)


def test_the_analysis_fuses_the_probe_before_its_post_processing() -> None:
    fps, n = 10.0, 40
    frames = video_frames(n)
    use = ProbeUse(weight=0.75, smooth_s=0.5)
    a = analyzer(use=use)
    seen: list[tuple[int, int]] = []
    result = a.analyze(ArrayVideo(frames, fps), progress=lambda d, t: seen.append((d, t)))
    assert result.probe_scores is not None and result.clip_probabilities is not None
    assert len(result.probe_scores) == len(result.probabilities) == len(result.timeline.frames)
    np.testing.assert_allclose(result.probabilities,
                               fuse(result.clip_probabilities, result.probe_scores,
                                    result.timeline.rate_hz, use))
    plain = BleedingAnalyzer(RednessNet(), AnalysisOptions(), input_size=32).analyze(
        ArrayVideo(frames, fps))
    # the clips made from the probe's frames (crop of the resized frame) are the MONAI clip
    # transform's, bit for bit
    np.testing.assert_array_equal(result.clip_probabilities, plain.probabilities)
    assert "probe" in result.timings
    # one progress count over the clips and then the probe's instants, ending at its total
    totals = {t for _, t in seen}
    assert len(totals) == 1 and seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize("memory_s,short_side", [(0.0, 32), (0.5, 32), (0.5, 64)])
def test_the_probe_reads_the_clips_decoding_and_scores_as_its_own_pass(memory_s: float,
                                                                       short_side: int
                                                                       ) -> None:
    calls: list[tuple[int, int, int]] = []

    class Recording(ArrayVideo):
        def frames(self, start=0, stop=None, step=1, workers=1, wanted=None):
            calls.append((start, stop, workers))
            return super().frames(start, stop, step, workers, wanted)

    torch.manual_seed(0)
    a = BleedingAnalyzer(RednessNet(), AnalysisOptions(decode_workers=2, threshold=2.0),
                         input_size=32, clip_len=8,
                         probe=PatchNet(replace(CFG, short_side=short_side)).eval(),
                         probe_use=ProbeUse(memory_s=memory_s))
    assert a.probe.geometry.scale == short_side // 32  # 64: frames twice the map's scale
    a.probe.batch_size = 3  # several flushes while the clips are computed
    n, fps = 60, 10.0
    video = Recording(video_frames(n), fps)
    result = a.analyze(video)
    assert not result.events  # (threshold 2: no key frames to read)
    assert calls == [(0, n, 2)]  # one pass, with the analysis's decoding threads
    schedule = a.schedule_for(video)
    alone = a.probe.score_video(ArrayVideo(video_frames(n), fps), result.timeline.frames.tolist(),
                                lambda i: schedule.window(i, a.seg_frames), memory_s=memory_s)
    np.testing.assert_array_equal(result.probe_scores, alone)
    assert not np.isnan(alone).any()


def test_a_probe_needs_a_model_with_segmentation_at_its_scale() -> None:
    class NoSeg(RednessNet):
        segment = None  # type: ignore[assignment]

    with pytest.raises(ValueError, match="needs a model with a segmentation net"):
        BleedingAnalyzer(NoSeg(), AnalysisOptions(), input_size=32, probe=PatchNet(CFG))
    with pytest.raises(ValueError, match="short side 32 px, this model's maps are 48"):
        BleedingAnalyzer(RednessNet(), AnalysisOptions(), input_size=48, probe=PatchNet(CFG))


class RedCropNet(PatchNet):
    """A probe that says "bleeding" where a neighbourhood is red (R - G > 100) over its
    frames: p = sigmoid(50 · (red share - 0.02))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, :, 0] - x[:, :, 1] > 100).float().mean(dim=(1, 2, 3))
        return 50 * (red - 0.02)


def red_probe() -> NeighbourhoodProbe:
    """:class:`RedCropNet` at the peaks of a map of the frames' red channel (32 × 32 frames,
    no resize, no normalisation)."""
    return NeighbourhoodProbe(RedCropNet(CFG), lambda x: x[:, 0] / 255.0,
                              MapGeometry(32, (0, 0, 0), (1, 1, 1)))


def blinking_spot(n: int) -> np.ndarray:
    """32 × 32 grey frames with a white patch (bright on the map, not red) and a red spot
    that is gone from every second instant's frame (instants every 3 frames), so the map of
    those instants misses it while the probe's frames around them mostly hold it."""
    frames = np.full((n, 32, 32, 3), 100, np.uint8)
    frames[:, 24:27, 24:27] = 255
    for i in range(n):
        if i % 6 != 3:
            frames[i, 9:12, 9:12] = (255, 0, 0)
    return frames


def test_a_memory_looks_again_where_the_probe_found_bleeding() -> None:
    probe = red_probe()
    fps, n = 10.0, 36
    video = ArrayVideo(blinking_spot(n), fps)
    targets = list(range(0, n, 3))
    lost = np.array([i % 6 == 3 for i in targets])
    plain = probe.score_video(video, targets, lambda i: [i])
    assert (plain[~lost] > 0.99).all() and (plain[lost] < 0.5).all()  # only the white patch
    remembered = probe.score_video(video, targets, lambda i: [i], memory_s=0.5)
    assert (remembered[lost] > 0.95).all()  # the spot in 3 of its 4 frames
    np.testing.assert_array_equal(remembered[~lost], plain[~lost])
    # 0.2 s is shorter than the 0.3 s between instants: nothing to remember
    np.testing.assert_array_equal(probe.score_video(video, targets, lambda i: [i],
                                                    memory_s=0.2), plain)
    for batch in (1, 2, 5):  # carried from earlier batches as from the same one
        probe.batch_size = batch
        np.testing.assert_array_equal(
            probe.score_video(video, targets, lambda i: [i], memory_s=0.5), remembered)


def test_a_memory_carries_only_places_the_probe_called_bleeding() -> None:
    frames = blinking_spot(36)
    frames[:, 9:12, 9:12] = 100  # no red spot at all: only the white patch, never bleeding
    frames[::6, 9:12, 9:12] = 200  # a grey flash the map peaks at now and then
    probe = red_probe()
    looked: list[int] = []
    original = probe.place_scores

    def spy(frames, targets, found, *args):
        looked.append(sum(len(f) for f in found))
        return original(frames, targets, found, *args)

    probe.place_scores = spy
    video = ArrayVideo(frames, 10.0)
    s = probe.score_video(video, list(range(0, 36, 3)), lambda i: [i], memory_s=1.0)
    assert (s < 0.5).all()
    assert looked[1::2] == [0]  # one batch: own places, then no carried place


@pytest.mark.parametrize("fps,scale", [(30.0, 1), (25.0, 1), (30.0, 2)])
def test_the_probe_reads_its_maps_from_the_clip_network(fps: float, scale: int) -> None:
    """On the exact path an instant's map is its centred clip's (the same frames, the same
    segmenter): the probe maps no instant again, also where the 0.1 s grid is not a whole
    number of frames (25 fps: 2.5; the segmenter's window is laid out as the clip's), and
    scores as if it mapped all. A probe at twice the map's scale takes the clip's maps too
    (mapping an instant itself it would scale its finer frames down: nearly the same map)."""
    from models import build_model

    torch.manual_seed(0)
    model = build_model("amagi_tiny_tge").eval()
    size = model.default_cfg.input_size
    cfg = PatchNetConfig(frames=4, step_s=0.2, crop=16, width=4, candidates=4,
                         short_side=size * scale)
    rng = np.random.default_rng(1)
    frames = rng.integers(40, 200, (int(3 * fps), size + 16, size + 40, 3)).astype(np.uint8)

    def run(reuse: bool) -> tuple[np.ndarray, int, dict[int, int]]:
        torch.manual_seed(0)
        a = BleedingAnalyzer(model, AnalysisOptions(threshold=2.0), input_size=size,
                             clip_len=8, probe=PatchNet(cfg).eval())
        given = a.probe_maps_from_clips(a.schedule_for(ArrayVideo(frames, fps)))
        if not reuse:
            a.probe_maps_from_clips = lambda _schedule: {}  # type: ignore[method-assign]
        mapped, segment = [0], a.probe.segment

        def counting(x: torch.Tensor) -> torch.Tensor:
            mapped[0] += len(x)
            return segment(x)

        a.probe.segment = counting
        return a.analyze(ArrayVideo(frames, fps)).probe_scores, mapped[0], given

    scores, mapped, given = run(reuse=True)
    alone, mapped_alone, _ = run(reuse=False)
    assert mapped_alone == len(alone) == 30
    assert mapped == mapped_alone - len(given)
    assert len(given) == 30 and mapped == 0
    assert not np.isnan(scores).any()
    # at 2x the probe's own map is of the finer frames scaled down, not of the clip's frames
    # (two resizes, not one): measured within 1.4e-4 here
    np.testing.assert_allclose(scores, alone, rtol=0, atol=1e-5 if scale == 1 else 1e-3)


def test_workers_sharing_an_analyzer_each_read_their_own_maps() -> None:
    """``amagi serve``'s workers share one analyzer: each analysis takes only the maps its
    own clip batches computed, so two videos analysed at once score as each alone."""
    import threading

    from models import build_model

    torch.manual_seed(0)
    model = build_model("amagi_tiny_tge").eval()
    size = model.default_cfg.input_size
    cfg = PatchNetConfig(frames=4, step_s=0.2, crop=16, width=4, candidates=4, short_side=size)
    a = BleedingAnalyzer(model, AnalysisOptions(threshold=2.0), input_size=size, clip_len=8,
                         probe=PatchNet(cfg).eval())
    videos = [np.random.default_rng(seed).integers(20 + 90 * seed, 110 + 90 * seed,
                                                   (60, size, size + 24, 3)).astype(np.uint8)
              for seed in (0, 1)]
    alone = [a.analyze(ArrayVideo(v, 30.0)).probe_scores for v in videos]
    together: dict[int, np.ndarray] = {}
    start = threading.Barrier(2)

    def work(k: int) -> None:
        start.wait()
        together[k] = a.analyze(ArrayVideo(videos[k], 30.0)).probe_scores

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(together) == [0, 1]
    assert not np.allclose(alone[0], alone[1])  # the two videos' maps differ
    for k in (0, 1):
        np.testing.assert_allclose(together[k], alone[k], rtol=0, atol=1e-5)


def test_an_instant_whose_map_never_comes_is_mapped_by_the_probe_itself() -> None:
    """A target promised a map (``maps_given``) waits for it, holding its frames; if the map
    never comes (its clip batch never ran), finishing maps it here: no instant is lost and
    each scores as in a pass that maps everything."""
    fps, n = 10.0, 40
    frames = video_frames(n)
    a = analyzer()
    probe, geometry = a.probe, a.map_geometry
    targets = list(range(0, n, 4))

    def window(i: int) -> list[int]:
        return [i]

    alone = probe.score_video(ArrayVideo(frames, fps), targets, window)
    stream = probe.stream(targets, window, n, fps, maps_given=targets[::2])
    for i in range(n):
        stream.feed(i, geometry.frame(frames[i]))
    assert np.isnan(stream.out).all()  # the promised maps hold the instants back
    first = targets[0]  # one promised map comes, the others never
    own = probe.segment(geometry.map_input(geometry.frame(frames[first]))[None])[0]
    stream.give_map(first, own)
    np.testing.assert_allclose(stream.finish(), alone, rtol=0, atol=1e-6)
