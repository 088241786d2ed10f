"""The probe's view stabilisation (``PatchNetConfig.stabilise``, ``amagi train probe
--stabilise``; :func:`amagi_plugin.probing.probe_neighbourhoods`): each frame's
neighbourhood taken where the view's translation (:func:`amagi_plugin.probing.view_shifts`)
carried the place. Checked against views cut from a known scene at known offsets, with an
instrument moving on its own, and against ``amagi synth``'s own swaying still blood and
active ooze (the training neighbourhoods: ``test_probe_training.py``)."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from amagi_plugin.probing import (
    VIEW_SHIFT_TILES,
    lit_box,
    neighbourhoods,
    probe_frames,
    probe_neighbourhoods,
    tiles_consensus,
    view_shifts,
)
from amagi_plugin.synth import Renderer
from amagi_plugin.synth.camera import world_to_screen
from amagi_plugin.transforms import FrameToTensor
from models.patchnet import PatchNet, PatchNetConfig, load_patchnet, save_patchnet
from tests.amagi_plugin.test_synth_randomised import _twins

CFG = PatchNetConfig(frames=8, step_s=0.1, crop=32, stabilise=True)
PLAIN = replace(CFG, stabilise=False)


def _scene(seed: int = 0) -> torch.Tensor:
    """A smooth random texture (3, 200, 240) on the 0-255 scale."""
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(1, 3, 200, 240, generator=g) * 255, 7, 1, 3)[0]


def test_a_view_that_moves_stands_still_once_stabilised() -> None:
    """Frames cut from one scene at known offsets (up to 10 px: a pan and a sway): the
    view's shifts are those offsets (within 0.15 px) and each frame's stabilised
    neighbourhood is the instant's own (within 1 % of the scale); unstabilised they differ by
    the texture's whole contrast."""
    scene = _scene()
    offsets = [(3 * t - 9, -2 * t + 6) if t % 2 else (2 * t - 6, t - 3) for t in range(10)]
    frames = {t: scene[:, 40 + dy:168 + dy, 40 + dx:200 + dx] for t, (dy, dx) in
              enumerate(offsets)}
    places = [(40, 50), (64, 80), (90, 120)]
    mid = CFG.frames // 2
    for t in (3, 4, 5):
        which = probe_frames(t, 10, 10.0, CFG)
        stack = torch.stack([frames[f] for f in which])
        want = torch.tensor([[offsets[t][0] - offsets[f][0], offsets[t][1] - offsets[f][1]]
                             for f in which], dtype=torch.float32)
        torch.testing.assert_close(view_shifts(stack, mid, 16.0), want, atol=0.15, rtol=0)
        st = probe_neighbourhoods(frames, t, 10, 10.0, CFG, places)
        plain = probe_neighbourhoods(frames, t, 10, 10.0, PLAIN, places)
        assert torch.equal(plain, neighbourhoods(stack, places, CFG.crop))
        assert torch.equal(st[:, mid], plain[:, mid])  # the instant's own frame untouched
        err = (st - st[:, mid:mid + 1]).abs().mean(dim=(0, 2, 3, 4))
        before = (plain - plain[:, mid:mid + 1]).abs().mean(dim=(0, 2, 3, 4))
        moved = [k for k, f in enumerate(which) if offsets[f] != offsets[t]]
        assert moved and err.max() < 0.01 * 255
        assert (before[moved] > 8 * err[moved].clamp(min=0.1)).all()


def test_an_instrument_crossing_the_view_does_not_carry_the_estimate() -> None:
    """The view moves by known offsets while a bright shaft (an instrument, a tenth of the
    frame's width, high contrast) moves across it on its own, 2 px a frame, within one
    column of the tiles: the view's shifts are still the view's (within 0.3 px)."""
    scene = _scene(2)
    offsets = [(t - 4, 2 * (t - 4)) for t in range(8)]
    stack = []
    for t, (dy, dx) in enumerate(offsets):
        frame = scene[:, 40 + dy:168 + dy, 40 + dx:200 + dx].clone()
        frame[:, :, 60 + 2 * t:76 + 2 * t] = 230.0  # the shaft, its own motion
        stack.append(frame)
    stack = torch.stack(stack)
    want = torch.tensor([[offsets[4][0] - dy, offsets[4][1] - dx] for dy, dx in offsets],
                        dtype=torch.float32)
    torch.testing.assert_close(view_shifts(stack, 4, 16.0), want, atol=0.3, rtol=0)


@pytest.mark.parametrize("view", ["still", "slow"])
def test_two_instruments_across_half_the_view_do_not_carry_the_estimate(view: str) -> None:
    """Two shafts from the bottom edge (a bright one and a dark one, 16 px wide, 3 px a
    frame in opposite directions) over a view that stands still or moves slowly: the view's
    shifts are the view's (within 0.1 px). The median of 2 × 3 tiles, half of them crossed
    by a shaft, was about 2 px off here; on `amagi synth`'s still-blood video whose camera
    hardly moves it put 2-4 px of false motion into the stabilised probe's squares (session
    57), the most tiles' agreement (:func:`tiles_consensus`) 0.3 px."""
    scene = _scene(4)
    offsets = [(0, 0)] * 8 if view == "still" else [((t - 4) // 2, t - 4) for t in range(8)]
    stack = []
    for t, (dy, dx) in enumerate(offsets):
        frame = scene[:, 40 + dy:168 + dy, 40 + dx:200 + dx].clone()
        frame[:, 50:, 30 + 3 * t:46 + 3 * t] = 220.0
        frame[:, 60:, 120 - 3 * t:136 - 3 * t] = 30.0
        stack.append(frame)
    want = torch.tensor([[offsets[4][0] - dy, offsets[4][1] - dx] for dy, dx in offsets],
                        dtype=torch.float32)
    torch.testing.assert_close(view_shifts(torch.stack(stack), 4, 16.0), want, atol=0.1,
                               rtol=0)


def test_the_tiles_consensus_is_the_largest_agreeing_group() -> None:
    """Five tiles: three agree near (1, 0), two on instruments elsewhere; a tie of two
    groups of equal size goes to the smaller motion."""
    each = torch.tensor([[[1.0, 0.0]], [[1.2, 0.1]], [[0.9, -0.1]], [[4.0, 3.0]],
                         [[-3.0, 2.0]]])
    torch.testing.assert_close(tiles_consensus(each, 0.75), torch.tensor([[1.0, 0.0]]))
    tie = torch.tensor([[[2.0, 2.0]], [[2.1, 2.0]], [[0.1, 0.0]], [[0.0, 0.1]]])
    assert tiles_consensus(tie, 0.75).abs().max() <= 0.1


@pytest.mark.parametrize("stop", ["round", "octagon"])
def test_a_field_stop_that_stands_still_does_not_hold_the_estimate(stop: str) -> None:
    """An endoscope's field stop: the view moves behind a black round (or octagonal) stop
    that stands still, its edge the frame's strongest feature. The view's shifts are still
    the view's (within 0.3 px); read on the whole frame, the stop held them to about a third
    (session 56, on another renderer's video). :func:`lit_box` is the box inside the stop."""
    scene = _scene(3)
    yy, xx = torch.meshgrid(torch.arange(128.0) - 63.5, torch.arange(160.0) - 79.5,
                            indexing="ij")
    inside = ((yy ** 2 + xx ** 2 <= 64 ** 2) if stop == "round"
              else (yy.abs() <= 64) & (xx.abs() <= 64) & (yy.abs() + xx.abs() <= 88))
    offsets = [(t - 4, 2 * (t - 4)) for t in range(8)]
    stack = torch.stack([scene[:, 40 + dy:168 + dy, 40 + dx:200 + dx] * inside
                         for dy, dx in offsets])
    want = torch.tensor([[offsets[4][0] - dy, offsets[4][1] - dx] for dy, dx in offsets],
                        dtype=torch.float32)
    torch.testing.assert_close(view_shifts(stack, 4, 16.0), want, atol=0.3, rtol=0)
    y0, y1, x0, x1 = lit_box(stack.mean(1))
    assert inside[y0:y1, x0:x1].all() and (y1 - y0) * (x1 - x0) > 0.3 * 128 * 160
    assert lit_box(stack.mean(1) * 0) == (0, 128, 0, 160)  # nothing lit: the whole frame
    assert lit_box(scene[None, :, :128, :160].mean(1)) == (0, 128, 0, 160)  # no stop


def test_frames_clamped_at_the_videos_start_are_the_instants_own() -> None:
    """At the first frame, the probe's earlier frames are that frame repeated
    (:func:`probe_frames` clamps them): their shift is none and their neighbourhoods exactly
    the plain ones; a whole shift takes exactly the pixels it names."""
    scene = _scene(1)
    frames = {t: scene[:, 40:168, 40 + t:200 + t] for t in range(10)}
    stack = torch.stack([frames[f] for f in probe_frames(0, 10, 10.0, CFG)])
    d = view_shifts(stack, CFG.frames // 2, 16.0)
    assert not d[:CFG.frames // 2 + 1].any()
    places = [(30, 40), (100, 150)]
    st = probe_neighbourhoods(frames, 0, 10, 10.0, CFG, places)
    plain = probe_neighbourhoods(frames, 0, 10, 10.0, PLAIN, places)
    assert torch.equal(st[:, :CFG.frames // 2 + 1], plain[:, :CFG.frames // 2 + 1])
    whole = torch.tensor([[0.0, 0.0], [2.0, -3.0]])
    got = neighbourhoods(stack[:2], places, 8, whole)
    assert torch.equal(got[:, 1], neighbourhoods(stack[1:2], [(32, 37), (102, 147)], 8)[:, 0])


def test_off_by_default_and_recorded_in_the_probes_file(tmp_path) -> None:
    assert PatchNetConfig().stabilise is False
    save_patchnet(PatchNet(replace(CFG, width=4)), tmp_path / "p.pth")
    assert load_patchnet(tmp_path / "p.pth").cfg.stabilise is True
    # a file written before the option existed reads as unstabilised
    obj = torch.load(tmp_path / "p.pth", weights_only=False)
    del obj["meta"]["patchnet"]["stabilise"]
    torch.save(obj, tmp_path / "old.pth")
    assert load_patchnet(tmp_path / "old.pth").cfg.stabilise is False


def _swaying_twins(seed: int, side: float) -> tuple[dict[int, torch.Tensor], int, int, float,
                                                   list[tuple[int, int]]]:
    """``amagi synth``'s active ooze and its still look-alike (:func:`_twins`) seen through a
    view that sways 4 px at 0.7 Hz: the probe's frames (0.2 s apart) around the middle of the
    ooze's active period, that instant, the video's frame count and rate, and where each
    blood's source is on screen at that instant (active first; ``(y, x)``)."""
    _, k, scene = _twins(seed, side, 0.5)
    cam = dataclasses.replace(scene.camera, wobble_amplitude=4.0, wobble_hz=0.7,
                              wobble_angle=0.7 * seed, wobble_ratio=0.3, wobble_phase=0.5)
    scene = dataclasses.replace(scene, camera=cam)
    r = Renderer(scene)
    frames = {f: FrameToTensor()(r.render(f).rgb)
              for f in probe_frames(k, scene.n_frames, scene.fps, SWAY_CFG)}
    h, w = frames[k].shape[-2:]
    places = []
    for source in (scene.events[0].source, scene.still[0].blood.source):
        x, y = world_to_screen(scene.pose(k), *source)  # from the view's centre
        places.append((round(h / 2 + y), round(w / 2 + x)))
    return frames, k, scene.n_frames, scene.fps, places


SWAY_CFG = replace(CFG, step_s=0.2)


@pytest.mark.parametrize("seed,side", list(itertools.product((3, 4), (1.0, -1.0))))
def test_swaying_still_blood_stands_still_and_active_blood_still_grows(seed: int,
                                                                       side: float) -> None:
    """The premise restored under sway: in the probe's neighbourhood of ``amagi synth``'s
    swaying still blood, stabilising takes away about two thirds or more of what changes over
    the probe's 1.4 s (unstabilised, it changes about as much as the active ooze: the sway
    hides the premise); at the active ooze beside it, what changes once stabilised is still
    over 1.5 times what changes at the still blood."""
    frames, k, n, fps, (active, still) = _swaying_twins(seed, side)
    mid = SWAY_CFG.frames // 2

    def change(cfg: PatchNetConfig, place: tuple[int, int]) -> float:
        c = probe_neighbourhoods(frames, k, n, fps, cfg, [place])[0]
        return float((c - c[mid]).abs().mean())

    plain = replace(SWAY_CFG, stabilise=False)
    still_plain, still_st = change(plain, still), change(SWAY_CFG, still)
    active_st = change(SWAY_CFG, active)
    assert still_st < 0.35 * still_plain
    assert active_st > 1.5 * still_st


def _counting(monkeypatch) -> list[int]:
    """Patches the translation :func:`view_shifts` uses to count the tiles it aligns."""
    from amagi_plugin import probing

    counts: list[int] = []
    original = probing.translation

    def counted(ref, mov, max_shift, *args, **kwargs):
        counts.append(ref.shape[0])
        return original(ref, mov, max_shift, *args, **kwargs)

    monkeypatch.setattr(probing, "translation", counted)
    return counts


def test_each_pair_of_frames_is_found_once_however_many_instants_read_it(monkeypatch) -> None:
    """Instants whose frames overlap share the view's shift between each pair of consecutive
    frames (``known``): 12 pairs for 6 instants of 8 frames instead of 42, and the same
    shifts and neighbourhoods as each instant found alone."""
    scene = _scene()
    offsets = [(round(3 * torch.sin(torch.tensor(t / 2.0)).item()), t - 6) for t in range(14)]
    frames = {t: scene[:, 40 + dy:168 + dy, 40 + dx:200 + dx] for t, (dy, dx) in
              enumerate(offsets)}
    places = [(40, 50), (64, 80), (90, 120)]
    tiles = VIEW_SHIFT_TILES[0] * VIEW_SHIFT_TILES[1]
    counts = _counting(monkeypatch)
    alone = [probe_neighbourhoods(frames, t, 14, 10.0, CFG, places) for t in range(4, 10)]
    assert sum(counts) == 6 * 7 * tiles
    counts.clear()
    known: dict = {}
    shared = [probe_neighbourhoods(frames, t, 14, 10.0, CFG, places, known=known)
              for t in range(4, 10)]
    assert sum(counts) == 12 * tiles and len(known) == 12  # frames 0..12: 12 pairs
    for a, b in zip(alone, shared, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    for t in range(4, 10):  # the chained shifts are the views' offsets (whole pixels here)
        which = probe_frames(t, 14, 10.0, CFG)
        stack = torch.stack([frames[f] for f in which])
        want = torch.tensor([[offsets[t][0] - offsets[f][0], offsets[t][1] - offsets[f][1]]
                             for f in which], dtype=torch.float32)
        torch.testing.assert_close(view_shifts(stack, CFG.frames // 2, 16.0, which, known),
                                   want, atol=0.15, rtol=0)
    assert sum(counts) == 12 * tiles  # read, not found again


def test_a_probes_pass_over_a_video_finds_each_pair_once_and_scores_as_alone(
        monkeypatch) -> None:
    """A stabilising probe's pass over a panning video (:class:`ProbeStream`, batches of
    instants) scores each instant as the probe does with every frame in memory and nothing
    kept between instants, finds each pair of frames' shift once, and keeps only the pairs
    of frames it still holds."""
    import numpy as np

    from amagi_plugin.probing import MapGeometry, NeighbourhoodProbe
    from tests.amagi_plugin.test_probing import CFG as RED_CFG
    from tests.amagi_plugin.test_probing import RedCropNet

    probe = NeighbourhoodProbe(RedCropNet(replace(RED_CFG, stabilise=True, step_s=0.1)),
                               lambda x: x[:, 0] / 255.0, MapGeometry(32, (0, 0, 0), (1, 1, 1)))
    scene = _scene(3)[:, :80, :100].clone()
    scene[:, 30:36, 34:40] = torch.tensor([250.0, 10.0, 10.0])[:, None, None]  # a red spot
    n, fps = 40, 10.0
    video = np.stack([scene[:, 20 + (t % 7):52 + (t % 7), 10 + t:42 + t].permute(1, 2, 0)
                      .round().byte().numpy() for t in range(n)])
    targets = list(range(2, n - 2))  # every frame: each pair read by 3 instants
    counts = _counting(monkeypatch)
    held = {i: probe.geometry.frame(f) for i, f in enumerate(video)}
    alone = np.concatenate([probe.scores(held, [i], lambda i: [i], n, fps) for i in targets])
    tiles = VIEW_SHIFT_TILES[0] * VIEW_SHIFT_TILES[1]
    assert sum(counts) == len(targets) * 3 * tiles  # 4 frames: 3 pairs of tiles an instant
    counts.clear()
    probe.batch_size = 2
    stream = probe.stream(targets, lambda i: [i], n, fps)
    for i, f in enumerate(video):
        stream.feed(i, probe.geometry.frame(f))
        assert all(a in stream._held and b in stream._held for a, b in stream._pairs)
    passed = stream.finish()
    np.testing.assert_allclose(passed, alone, atol=1e-5)
    assert (alone > 0.5).any()  # the spot is read
    pairs = {(a, b) for i in targets
             for a, b in itertools.pairwise(probe_frames(i, n, fps, probe.cfg)) if a != b}
    assert sum(counts) <= len(pairs) * tiles < len(targets) * 3 * tiles  # each once
