"""The blood's flow texture as a randomised factor (``SceneRanges.flow_textures``,
``amagi synth --flow-textures``): ``advected``, an irregular texture carried with the flow,
beside the presets' sinusoidal ``waves``. Off by default (the presets' scenes unchanged);
one kind per case for every blood in it; the premise holds with it (one frame does not tell
a still look-alike from active blood, time does)."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from amagi_plugin.synth import DOMAINS, Renderer, SceneParams, SynthError, sample_scene
from amagi_plugin.synth.scene import FLOW_TEXTURES, SceneRanges, SynthBleed
from tests.amagi_plugin.test_synth_randomised import SIZE, _twins, check_premise

BOTH = dataclasses.replace(DOMAINS["randomised"], flow_textures=FLOW_TEXTURES)


def _bleeds(scene: SceneParams) -> list[SynthBleed]:
    """Every blood of a scene drawn with the active-blood model."""
    return ([*scene.events, *(x.blood for x in scene.still),
             *(i.stain.blood for i in scene.instruments if i.stain is not None),
             *(g.stain.blood for g in scene.gauze)])


def test_the_presets_draw_no_texture_and_the_option_changes_nothing_else() -> None:
    for seed in range(6):
        plain = sample_scene(seed, duration_s=20.0, ranges="randomised", **SIZE)
        assert {(b.flow_texture, b.texture_seed) for b in _bleeds(plain)} <= {("waves", 0)}
        both = sample_scene(seed, duration_s=20.0, ranges=BOTH, **SIZE)
        undone = [dataclasses.replace(b, flow_texture="waves", texture_seed=0)
                  for b in _bleeds(both)]
        assert undone == _bleeds(plain)
        assert dataclasses.replace(both, events=plain.events, still=plain.still,
                                   instruments=plain.instruments, gauze=plain.gauze,
                                   domain=plain.domain) == plain


def test_one_texture_per_case_for_every_blood_both_across_cases_and_back_from_json() -> None:
    kinds = []
    for seed in range(16):
        scene = sample_scene(seed, duration_s=20.0, ranges=BOTH, **SIZE)
        bleeds = _bleeds(scene)
        assert bleeds and len({b.flow_texture for b in bleeds}) == 1
        assert len({b.texture_seed for b in bleeds}) == len(bleeds)  # each its own
        kinds.append(bleeds[0].flow_texture)
        assert SceneParams.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    assert set(kinds) == set(FLOW_TEXTURES)
    with pytest.raises(SynthError, match="flow_textures must be among waves, advected"):
        SceneRanges(flow_textures=("marbled",))


def _advected(r: Renderer, scene: SceneParams) -> Renderer:
    return Renderer(dataclasses.replace(
        scene, events=tuple(dataclasses.replace(e, flow_texture="advected", texture_seed=11)
                            for e in scene.events),
        still=tuple(dataclasses.replace(x, blood=dataclasses.replace(
            x.blood, flow_texture="advected", texture_seed=12)) for x in scene.still)))


def test_premise_holds_with_the_advected_texture() -> None:
    """As ``test_premise_one_frame_does_not_tell_still_blood_from_active_but_time_does``
    with both bloods advected: one frame shows the same colour statistics, over 0.7 s only
    the active one changes; and the texture is not the waves' (the pixels differ)."""
    pairs = []
    for seed, side in itertools.product(range(3, 7), (1.0, -1.0)):
        waves, k, scene = _twins(seed, side, 0.5)
        r = _advected(waves, scene)
        f, w = r.render(k), waves.render(k)
        assert np.array_equal(f.active, w.active)  # the same blood, retextured
        assert np.abs(f.rgb[f.active].astype(float) - w.rgb[f.active].astype(float)).mean() > 3
        pairs.append((r, k))
    check_premise(pairs)


def test_the_advected_texture_is_carried_outwards_not_repeated() -> None:
    """Along a ray from the source, the texture one step later is the texture a little
    further in, moved out by 0.6 × ripple_speed × dt (the pool's carriage); and it has no
    period: its values along a ray do not repeat at the waves' wavelength."""
    from amagi_plugin.synth.events import _advected

    ev = dataclasses.replace(sample_scene(3, duration_s=20.0, ranges=BOTH, **SIZE).events[0],
                             flow_texture="advected", texture_seed=5, ripple_speed=10.0,
                             ripple_wavelength=6.0)
    rho = np.linspace(0.0, 40.0, 401, dtype=np.float32)  # 0.1 px steps along one ray
    theta = np.full_like(rho, 0.7)
    zero = np.zeros_like(rho)
    off = np.zeros(rho.shape, bool)

    def along_ray(t: float) -> np.ndarray:
        return _advected(ev, rho, theta, zero, zero, off, t, zero)

    shift = round(0.6 * 10.0 * 0.5 / 0.1)  # 3 px in 0.5 s = 30 samples
    now, later = along_ray(1.0), along_ray(1.5)
    np.testing.assert_allclose(later[shift:], now[:-shift], atol=1e-5)
    period = round(6.0 / 0.1)
    assert np.abs(now[period:] - now[:-period]).mean() > 0.1
