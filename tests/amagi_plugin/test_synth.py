"""The synthetic generator: determinism, labels vs masks vs pixels, active vs static blood."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from amagi_plugin.synth import (
    DOMAINS,
    Renderer,
    SceneParams,
    SceneRanges,
    SynthError,
    plan_cases,
    sample_scene,
)
from amagi_plugin.synth.camera import CameraMotion

SIZE = dict(width=96, height=96, fps=10.0)


def _scene(seed: int, duration_s: float = 4.0, **ranges) -> SceneParams:
    return sample_scene(seed, duration_s=duration_s, ranges=SceneRanges(**ranges), **SIZE)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(mask, (dy, dx), axis=(0, 1))
    return out


def test_scene_is_a_function_of_the_seed_and_survives_json():
    a, b, c = _scene(11), _scene(11), _scene(12)
    assert a == b
    assert a != c
    back = SceneParams.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back == a
    assert len(a.events) >= 1


def test_bad_parameters_raise_typed_errors():
    with pytest.raises(SynthError, match="palettes"):
        SceneRanges(palettes=("purple",))
    with pytest.raises(SynthError, match="frame size"):
        sample_scene(1, width=8, height=96)
    with pytest.raises(SynthError, match="unknown domain"):
        sample_scene(1, ranges="nope")
    with pytest.raises(SynthError, match="at least 8"):
        sample_scene(1, duration_s=0.2, fps=10)


def test_rendering_is_deterministic_per_seed():
    scene = _scene(21)
    r1, r2 = Renderer(scene), Renderer(scene)
    for k in (0, scene.events[0].start_frame + 3, scene.n_frames - 1):
        f1, f2 = r1.render(k), r2.render(k)
        assert np.array_equal(f1.rgb, f2.rgb)
        assert np.array_equal(f1.active, f2.active)
        assert np.array_equal(f1.negative, f2.negative)
    other = Renderer(_scene(22)).render(0)
    assert np.abs(other.rgb.astype(int) - r1.render(0).rgb.astype(int)).mean() > 5


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_labels_masks_and_pixels_agree(seed):
    scene = _scene(seed, duration_s=6.0, instruments=(0, 1))
    labels = scene.frame_labels()
    expected = np.zeros(scene.n_frames, np.uint8)
    for ev in scene.events:
        expected[ev.start_frame:ev.end_frame] = 1
    assert np.array_equal(labels, expected)
    assert labels.sum() > 0 and labels.sum() < scene.n_frames

    renderer = Renderer(scene)
    with_blood, red, total = 0, 0, 0
    for fr in renderer.frames():
        if labels[fr.index] == 0:
            assert not fr.active.any(), f"active pixels outside events at frame {fr.index}"
            continue
        assert not (fr.active & fr.negative).any()
        # all blood that is not bleeding: the still pools and more, never the bleeding
        assert not (fr.active & fr.lookalike).any() and fr.lookalike[fr.negative].all()
        if fr.active.sum() == 0:
            continue
        with_blood += 1
        px = fr.rgb[fr.active].astype(int)
        red_dominant = (px[:, 0] - px[:, 1] > 50) & (px[:, 0] > 1.8 * px[:, 1])
        assert red_dominant.mean() > 0.5, f"frame {fr.index}: mask pixels not blood-coloured"
        red, total = red + red_dominant.sum(), total + len(px)
    assert with_blood >= 0.8 * labels.sum()
    assert red / total > 0.9  # the rest: moving glints on the blood surface


@pytest.mark.parametrize("seed", [3, 4])
def test_hidden_is_where_an_instrument_covers_the_scene(seed):
    """``RenderedFrame.hidden`` (what an all-blood map learns to leave out when it reads
    growth): the grey instrument's pixels, moving with it, and never under a blood mask."""
    bare = Renderer(_scene(seed, instruments=(0, 0)))
    assert not any(bare.render(k).hidden.any() for k in (0, 20, 39))
    renderer = Renderer(_scene(seed, instruments=(1, 1)))
    frames = [renderer.render(k) for k in (0, 20, 39)]
    for fr in frames:
        assert fr.hidden.mean() > 0.02
        assert not (fr.hidden & (fr.active | fr.negative)).any()
        grey = fr.rgb.astype(int).std(axis=-1)  # the instrument's metal: channels alike
        assert grey[fr.hidden].mean() < 0.3 * grey[~fr.hidden].mean()
    assert not np.array_equal(frames[0].hidden, frames[-1].hidden)


def test_active_bleeding_changes_while_pools_and_residuals_stay_still():
    """Static camera, no instruments, smoke, flicker or noise: only active blood may change."""
    base = _scene(8, duration_s=12.0, pools=(2, 2), event_duration_s=(3.0, 4.0),
                  events_per_minute=(1.0, 1.0), instruments=(0, 0))
    ev = dataclasses.replace(base.events[0], darken_s=0.5)
    scene = dataclasses.replace(base, camera=CameraMotion(), instruments=(), smoke=(),
                                light_flicker=0.0, noise_std=0.0, events=(ev,))
    renderer = Renderer(scene)
    # During the event: the active region changes a lot between frames 3 apart.
    changed = []
    for k in range(ev.start_frame, ev.end_frame - 3):
        a, b = renderer.render(k), renderer.render(k + 3)
        diff = np.abs(a.rgb.astype(int) - b.rgb.astype(int)).max(axis=2)
        region = a.active | b.active
        changed.append(diff[region].mean())
        # Nothing outside the (slightly dilated) active region changes: pools are static.
        assert not (diff > 0)[~_dilate(region, 4)].any()
    assert np.mean(changed) > 12

    # The static pools are there and identical in every frame.
    f0 = renderer.render(0)
    assert f0.negative.sum() > 20
    last = renderer.render(scene.n_frames - 1)
    pool_px = f0.negative & last.negative
    assert np.array_equal(f0.rgb[pool_px], last.rgb[pool_px])

    # After the event and its darkening: the residual stays, is not active, does not change.
    settle = ev.end_frame + 8
    assert settle + 3 < scene.n_frames
    r1, r2 = renderer.render(settle), renderer.render(scene.n_frames - 1)
    assert not r1.active.any()
    residual = r1.negative & ~f0.negative
    assert residual.sum() > 5
    assert np.array_equal(r1.rgb, r2.rgb)


def test_domains_differ_and_plan_is_reproducible():
    train = {sample_scene(s, duration_s=4, ranges="train", **SIZE).palette.name
             for s in range(12)}
    shifted = {sample_scene(s, duration_s=4, ranges="shifted", **SIZE).palette.name
               for s in range(12)}
    assert train <= set(DOMAINS["train"].palettes)
    assert shifted <= set(DOMAINS["shifted"].palettes)
    assert not train & shifted
    p1 = plan_cases(3, 7, duration_s=4, cases_per_patient=2, **SIZE)
    p2 = plan_cases(3, 7, duration_s=4, cases_per_patient=2, **SIZE)
    assert p1 == p2
    assert [c.patient_id for c in p1] == ["SYN7-0000", "SYN7-0000", "SYN7-0001"]
    assert len({c.scene.seed for c in p1}) == 3
