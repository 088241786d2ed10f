"""Cue dropout as randomised factors: bleeding without a heartbeat
(``SceneRanges.pulse_free_probability``, ``amagi synth --pulse-free P``; venous ooze and a
running stream do not pulse, a spurt does), a texture that does not travel
(``still_texture_probability``, ``--still-texture P``) and a fainter texture
(``texture_depth``, ``--texture-depth LOW,HIGH``). Off by default (the presets' scenes
unchanged); drawn per blood, active and still alike; what they take away is gone from the
pixels; the premise holds with all of them (growth alone tells active blood)."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from amagi_plugin.synth import DOMAINS, Renderer, SceneParams, SynthError, sample_scene
from amagi_plugin.synth.events import event_state
from amagi_plugin.synth.scene import SceneRanges
from tests.amagi_plugin.test_synth_flow_texture import _bleeds
from tests.amagi_plugin.test_synth_randomised import SIZE, _twins, same_colour_statistics

HELDOUT = DOMAINS["heldout"]  # the one preset with spurts


def _dropout(p: float, still: float = 0.0, depth: tuple[float, float] = (1.0, 1.0)
             ) -> SceneRanges:
    return dataclasses.replace(HELDOUT, pulse_free_probability=p,
                               still_texture_probability=still, texture_depth=depth)


def _retouch(scene: SceneParams, **changes) -> SceneParams:
    """``scene`` with ``changes`` made to its events and still look-alikes alike."""
    return dataclasses.replace(
        scene, events=tuple(dataclasses.replace(e, **changes) for e in scene.events),
        still=tuple(dataclasses.replace(x, blood=dataclasses.replace(x.blood, **changes))
                    for x in scene.still))


def test_off_by_default_and_full_dropout_touches_only_the_cues() -> None:
    assert (HELDOUT.pulse_free_probability, HELDOUT.still_texture_probability,
            HELDOUT.texture_depth) == (0.0, 0.0, (1.0, 1.0))
    spurts = 0
    for seed in range(6):
        plain = sample_scene(seed, duration_s=30.0, ranges="heldout", **SIZE)
        assert dataclasses.replace(sample_scene(seed, duration_s=30.0, ranges=_dropout(0.0),
                                                **SIZE), domain="heldout") == plain
        bare = sample_scene(seed, duration_s=30.0, ranges=_dropout(1.0, 1.0, (0.3, 0.3)), **SIZE)
        for a, b in zip(_bleeds(plain), _bleeds(bare), strict=True):
            assert a.pulse_depth > 0 and a.ripple_speed > 0 and a.texture_depth == 1.0
            spurts += a.form == "spurt"
            beat = a.pulse_depth if a.form == "spurt" else 0.0  # a spurt keeps its beat
            assert b == dataclasses.replace(a, pulse_depth=beat, ripple_speed=0.0,
                                            texture_depth=0.3)
        assert dataclasses.replace(bare, events=plain.events, still=plain.still,
                                   instruments=plain.instruments, gauze=plain.gauze,
                                   domain=plain.domain) == plain
    assert spurts  # the check above saw both kinds


def test_drawn_per_blood_both_ways_and_back_from_json() -> None:
    draws = []
    for seed in range(8):
        scene = sample_scene(seed, duration_s=30.0, ranges=_dropout(0.5, 0.5, (0.2, 0.9)),
                             **SIZE)
        draws += [(b.pulse_depth == 0.0, b.ripple_speed == 0.0, b.texture_depth)
                  for b in _bleeds(scene) if b.form != "spurt"]
        assert SceneParams.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    calm, still, depth = zip(*draws, strict=True)
    assert 0 < sum(calm) < len(draws) and 0 < sum(still) < len(draws)
    assert calm != still  # drawn apart
    assert all(0.2 <= d <= 0.9 for d in depth) and len(set(depth)) == len(depth)
    for bad, match in (({"pulse_free_probability": 1.5}, "pulse_free_probability must lie"),
                       ({"still_texture_probability": -0.1}, "still_texture_probability must"),
                       ({"texture_depth": (0.5, 0.2)}, "texture_depth must be a range")):
        with pytest.raises(SynthError, match=match):
            SceneRanges(**bad)


def test_a_calm_pool_only_grows_where_a_beating_one_swells_with_the_pulse() -> None:
    """The pool's radius frame by frame over the active period: with a beat it swells and
    falls back about its growth (the two radii's ratio moves by several per cent); without
    one it never shrinks and still grows."""
    ev = next(e for e in sample_scene(3, duration_s=30.0, ranges="randomised", **SIZE).events
              if e.form in ("ooze", "occluded"))
    fps = 30.0
    frames = range(ev.start_frame, ev.end_frame)

    def radii(e):
        return [event_state(e, k, fps).radius for k in frames]

    beating, calm = radii(ev), radii(dataclasses.replace(ev, pulse_depth=0.0))
    swell = [b / c for b, c in zip(beating, calm, strict=True)]
    assert max(swell) - min(swell) > 0.03
    assert all(b >= a for a, b in itertools.pairwise(calm))
    assert calm[-1] > 1.5 * calm[0]


def _interior_change(scene: SceneParams, k: int) -> float:
    """Mean change over 0.1 s of the active blood's pixels away from its rim (its texture,
    not its growth)."""
    r = Renderer(scene)
    f, later = r.render(k), r.render(k + 3)
    core = f.active & later.active
    for axis in (0, 1):  # two pixels in from the rim
        for step in (1, 2, -1, -2):
            core &= np.roll(f.active, step, axis)
    assert core.sum() > 30
    return float(np.abs(later.rgb[core].astype(float) - f.rgb[core].astype(float)).mean())


def test_a_still_texture_stays_put_and_a_faint_one_is_faint() -> None:
    """In the blood's interior, away from its growing rim: a travelling texture changes the
    pixels within 0.1 s, a still one hardly at all (sensor noise); a texture of depth 0.25
    spreads the blood's pixels in one frame less than half as much as the presets'."""
    _, k, scene = _twins(4, 1.0, 0.5)
    calm = _retouch(scene, pulse_depth=0.0)
    assert _interior_change(_retouch(calm, ripple_speed=0.0), k) < 0.4 * _interior_change(
        calm, k)

    def spread(s: SceneParams) -> float:
        f = Renderer(s).render(k)
        return float(f.rgb[f.active].astype(float).std(0).mean())

    assert spread(_retouch(calm, texture_depth=0.25)) < 0.5 * spread(calm)


def test_premise_holds_with_every_cue_dropped_but_growth() -> None:
    """The premise with the active blood and its look-alike both calm, with still and faint
    texture: one frame shows the same colour statistics (as the presets' premise test);
    over 0.7 s the active blood covers over 5 % more pixels and the look-alike exactly
    the same ones."""
    frames = []
    for seed, side in itertools.product(range(3, 7), (1.0, -1.0)):
        _, k, scene = _twins(seed, side, 0.5)
        r = Renderer(_retouch(scene, pulse_depth=0.0, ripple_speed=0.0, texture_depth=0.25))
        f, later = r.render(k), r.render(k + 7)
        assert later.active.sum() > 1.05 * f.active.sum()
        assert np.array_equal(later.negative, f.negative)
        frames.append(f)
    same_colour_statistics(frames)
