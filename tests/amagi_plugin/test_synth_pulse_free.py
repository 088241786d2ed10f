"""Bleeding without a heartbeat as a randomised factor (``SceneRanges.pulse_free_probability``,
``amagi synth --pulse-free P``): venous ooze and a running stream do not pulse, a spurt
does. Off by default (the presets' scenes unchanged); drawn per blood, active and still
alike; a calm pool only grows; the premise holds with it."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from amagi_plugin.synth import DOMAINS, Renderer, SceneParams, SynthError, sample_scene
from amagi_plugin.synth.events import event_state
from amagi_plugin.synth.scene import SceneRanges
from tests.amagi_plugin.test_synth_flow_texture import _bleeds
from tests.amagi_plugin.test_synth_randomised import SIZE, _twins, check_premise

HELDOUT = DOMAINS["heldout"]  # the one preset with spurts


def _calm(p: float) -> SceneRanges:
    return dataclasses.replace(HELDOUT, pulse_free_probability=p)


def test_off_by_default_and_all_calm_touches_only_the_beat_of_bloods_but_spurts() -> None:
    assert HELDOUT.pulse_free_probability == 0.0
    spurts = 0
    for seed in range(6):
        plain = sample_scene(seed, duration_s=30.0, ranges="heldout", **SIZE)
        assert dataclasses.replace(sample_scene(seed, duration_s=30.0, ranges=_calm(0.0),
                                                **SIZE), domain="heldout") == plain
        calm = sample_scene(seed, duration_s=30.0, ranges=_calm(1.0), **SIZE)
        for a, b in zip(_bleeds(plain), _bleeds(calm), strict=True):
            assert a.pulse_depth > 0
            if a.form == "spurt":
                spurts += 1
                assert b == a  # a spurt keeps its beat
            else:
                assert b == dataclasses.replace(a, pulse_depth=0.0)
        assert dataclasses.replace(calm, events=plain.events, still=plain.still,
                                   instruments=plain.instruments,
                                   gauze=plain.gauze, domain=plain.domain) == plain
    assert spurts  # the check above saw both kinds


def test_drawn_per_blood_both_ways_and_back_from_json() -> None:
    depths = []
    for seed in range(8):
        scene = sample_scene(seed, duration_s=30.0, ranges=_calm(0.5), **SIZE)
        depths += [b.pulse_depth for b in _bleeds(scene) if b.form != "spurt"]
        assert SceneParams.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    assert 0 < sum(d == 0.0 for d in depths) < len(depths)
    for bad in (-0.1, 1.5):
        with pytest.raises(SynthError, match="pulse_free_probability must lie in"):
            SceneRanges(pulse_free_probability=bad)


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


def test_premise_holds_without_a_heartbeat() -> None:
    """As the presets' premise test with the active blood and its look-alike both calm: one
    frame shows the same colour statistics, over 0.7 s only the active one changes."""
    pairs = []
    for seed, side in itertools.product(range(3, 7), (1.0, -1.0)):
        _, k, scene = _twins(seed, side, 0.5)
        calm = dataclasses.replace(
            scene, events=tuple(dataclasses.replace(e, pulse_depth=0.0) for e in scene.events),
            still=tuple(dataclasses.replace(x, blood=dataclasses.replace(x.blood,
                                                                         pulse_depth=0.0))
                        for x in scene.still))
        pairs.append((Renderer(calm), k))
    check_premise(pairs)
