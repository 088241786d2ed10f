"""Domain-randomised synthesis: looks, bleeding forms, still look-alikes of active blood.

The premise of the randomised generator is that a single frame cannot tell active bleeding
from its still look-alikes; only time can. These tests check that premise on rendered pixels,
and that every randomised factor is reproducible, recorded and held out where it should be.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from amagi_plugin.synth import DOMAINS, Renderer, SceneParams, SynthError, sample_scene
from amagi_plugin.synth.camera import CameraMotion
from amagi_plugin.synth.events import event_state, still_state
from amagi_plugin.synth.look import SCOPE_MASKS, Look, LookRanges, gaussian_blur, scope_alpha
from amagi_plugin.synth.scene import BLEEDING_FORMS, StillBlood

SIZE = dict(width=128, height=96, fps=10.0)


def _scene(seed: int, domain: str = "randomised", duration_s: float = 20.0) -> SceneParams:
    return sample_scene(seed, duration_s=duration_s, ranges=domain, **SIZE)


def test_randomised_scene_is_a_function_of_the_seed_and_survives_json() -> None:
    a, b = _scene(5), _scene(5)
    assert a == b and a.look is not None and a.still
    assert _scene(6) != a
    back = SceneParams.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back == a
    r1, r2 = Renderer(a), Renderer(back)
    for k in (0, 77, 150):
        assert np.array_equal(r1.render(k).rgb, r2.render(k).rgb)


def test_every_factor_varies_continuously_across_cases() -> None:
    scenes = [_scene(s, duration_s=12.0) for s in range(24)]
    gains = np.array([sc.look.gains for sc in scenes])
    lights = np.array([sc.palette.tissue_light for sc in scenes])
    assert len({tuple(g) for g in gains}) == 24 and gains.std(axis=0).min() > 0.03
    assert len({tuple(x) for x in lights}) == 24
    assert {sc.look.scope_mask for sc in scenes} == set(DOMAINS["randomised"].look.scope_masks)
    assert len({sc.look.crf for sc in scenes}) > 4 and len({sc.look.jpeg_quality
                                                            for sc in scenes}) > 10
    forms = {ev.form for sc in scenes for ev in sc.events}
    assert forms == set(DOMAINS["randomised"].forms)
    assert {x.kind for sc in scenes for x in sc.still} == {"fresh_still", "suction"}


def test_held_out_families_never_occur_in_training() -> None:
    train, held = DOMAINS["randomised"], DOMAINS["heldout"]
    assert not set(train.palettes) & set(held.palettes)
    assert set(held.look.scope_masks) - set(train.look.scope_masks) == {"rounded_rect"}
    assert set(held.forms) - set(train.forms) == {"spurt"}
    seen = [_scene(s, duration_s=12.0) for s in range(16)]
    assert all(sc.look.scope_mask != "rounded_rect" for sc in seen)
    assert all(ev.form != "spurt" for sc in seen for ev in sc.events)
    assert all(sc.palette.name in train.palettes for sc in seen)


def test_held_out_cases_hold_at_least_four_events_and_static_cases_none() -> None:
    for seed in range(4):
        sc = sample_scene(seed, duration_s=180.0, ranges="heldout", width=64, height=48,
                          fps=10.0)
        assert len(sc.events) >= 4
        assert {sc.tags()["palette"]} <= {"pale", "dark"}
        st = sample_scene(seed, duration_s=60.0, ranges="static", width=64, height=48, fps=10.0)
        assert not st.events and len(st.still) >= 2 and not st.frame_labels().any()
        # the same in the training looks: bleeding-free validation and refiner video
        rs = sample_scene(seed, duration_s=60.0, ranges="randomised-static", width=64,
                          height=48, fps=10.0)
        assert not rs.events and len(rs.still) >= 2 and not rs.frame_labels().any()
        assert rs.tags()["palette"] in ("pink", "red", "yellow")
        assert rs.look.scope_mask != "rounded_rect"


def _still_camera(scene: SceneParams) -> SceneParams:
    """``scene`` seen through a motionless camera, without instruments, smoke, camera chain or
    distractors (pixels then follow only the blood)."""
    return dataclasses.replace(scene, camera=CameraMotion(zoom_base=scene.camera.zoom_base),
                               smoke=(), instruments=(), look=None, gauze=(), irrigation=(),
                               lens_blood=())


def _twins(seed: int, side: float, at: float) -> tuple[Renderer, int, SceneParams]:
    """One active ooze and its still look-alike, drawn from the event's own parameters and
    frozen at the state the active one has at fraction ``at`` of its active period, seen
    through a still camera side by side (``side`` = +1 or -1 swaps their places; they sit
    symmetrically, so the vignette treats them alike). Returns the renderer and that frame."""
    base = _scene(seed, duration_s=30.0)
    ev = next(e for e in base.events if e.form in ("ooze", "occluded"))
    cx, cy = base.canvas_centre
    ev = dataclasses.replace(ev, form="ooze", max_radius=14.0, initial_radius=4.0,
                             source=(cx - side * 22.0, cy))
    k = ev.start_frame + round(at * (ev.end_frame - ev.start_frame - 1))
    twin = StillBlood("fresh_still", dataclasses.replace(
        ev, start_frame=0, end_frame=base.n_frames, source=(cx + side * 22.0, cy)),
        frozen_s=(k - ev.start_frame) / base.fps)
    scene = _still_camera(dataclasses.replace(base, events=(ev,), still=(twin,), pools=(),
                                              red_patches=()))
    return Renderer(scene), k, scene


def _clip_change(r: Renderer, k: int) -> tuple[float, float]:
    """Mean change over 0.7 s (a clip) of the active blood's and the look-alike's pixels."""
    f, later = r.render(k), r.render(k + 7)
    region = f.active | later.active
    d_active = np.abs(later.rgb[region].astype(float) - f.rgb[region].astype(float)).mean()
    d_still = np.abs(later.rgb[f.negative].astype(float) - f.rgb[f.negative].astype(float))
    return float(d_active), float(d_still.mean())


def test_premise_one_frame_does_not_tell_still_blood_from_active_but_time_does() -> None:
    """A still look-alike drawn from an active event's own parameters has that event's colour
    statistics in a single frame (pooled over both places of each pair: what differs is the
    place, glints and rims falling on different tissue, not whether the blood is active);
    over 0.7 s (the clip) only the active one changes."""
    check_premise((r, k) for r, k, _ in (_twins(seed, side, 0.5) for seed, side in
                                         itertools.product(range(3, 7), (1.0, -1.0))))


def check_premise(pairs) -> None:
    """The premise on ``(renderer, frame)`` pairs of :func:`_twins`: at that frame the active
    blood and its look-alike show the same colour statistics pooled over the pairs (means
    within 6 of 255, spreads within 15 %), and over 0.7 s only the active one changes."""
    pairs = list(pairs)
    same_colour_statistics([r.render(k) for r, k in pairs])
    for r, k in pairs:
        d_active, d_still = _clip_change(r, k)
        assert d_active > 3 * d_still and d_active > 5.0


def same_colour_statistics(frames) -> None:
    """Active blood and its look-alikes pooled over rendered ``frames``: means within 6 of
    255, spreads within 15 %."""
    for f in frames:
        assert f.active.sum() > 100 and f.negative.sum() > 100
    a_rgb = np.concatenate([f.rgb[f.active].astype(float) for f in frames])
    s_rgb = np.concatenate([f.rgb[f.negative].astype(float) for f in frames])
    assert np.abs(a_rgb.mean(0) - s_rgb.mean(0)).max() < 6.0
    assert (np.abs(a_rgb.std(0) - s_rgb.std(0)) < 0.15 * a_rgb.std(0)).all()


@pytest.mark.parametrize("at", [0.8, 0.97])
def test_sustained_bleeding_still_changes_late_in_its_active_period(at: float) -> None:
    """Randomised active bleeding keeps welling and flowing until it ends (the first presets'
    saturates early): late in the event a clip still sees it change several times more
    than its still look-alike, and the pool is still growing."""
    r, k, scene = _twins(3, 1.0, at)
    ev = scene.events[0]
    assert ev.dynamics == "sustained"
    d_active, d_still = _clip_change(r, k)
    assert d_active > 3 * d_still and d_active > 5.0
    assert event_state(ev, k + 3, scene.fps).radius > event_state(ev, k - 3, scene.fps).radius \
        or k + 3 >= ev.end_frame


def test_suction_blood_only_shrinks_and_is_never_active() -> None:
    sc = _scene(8, duration_s=30.0)
    ev = sc.events[0] if sc.events else _scene(9).events[0]
    suck = StillBlood("suction", dataclasses.replace(ev, start_frame=0, end_frame=sc.n_frames),
                      frozen_s=3.0, vanish_frame=50, vanish_s=2.0)
    radii = [still_state(suck, k, sc.fps).radius for k in range(0, 60)]
    assert radii[:51] == [radii[0]] * 51
    assert all(b <= a for a, b in itertools.pairwise(radii))
    assert radii[-1] < radii[0]
    assert still_state(suck, 75, sc.fps) is None  # gone once sucked away


def test_every_bleeding_form_is_active_and_masked() -> None:
    for form in BLEEDING_FORMS:
        for seed in range(40):
            sc = _scene(seed, duration_s=30.0)
            hits = [e for e in sc.events if e.form == form]
            if hits:
                break
        else:
            assert form == "spurt"  # held out of training: drawn in the held-out domain
            sc = next(s for s in (sample_scene(k, duration_s=60.0, ranges="heldout", **SIZE)
                                  for k in range(40)) if any(e.form == form for e in s.events))
            hits = [e for e in sc.events if e.form == form]
        ev = hits[0]
        r = Renderer(dataclasses.replace(sc, instruments=(), smoke=()))
        k = ev.end_frame - 1
        assert r.render(k).active.sum() > 0, form


def test_field_stop_blacks_out_and_unmasks_the_surround() -> None:
    sc = _scene(2)
    for mask in SCOPE_MASKS:
        look = dataclasses.replace(sc.look, scope_mask=mask, scope_size=0.9, scope_offset=(0, 0))
        alpha = scope_alpha(look, 96, 128)
        if mask == "none":
            assert alpha.min() == 1.0
            continue
        assert alpha[48, 64] == 1.0 and alpha[0, 0] == 0.0
        frame = Renderer(dataclasses.replace(sc, look=look)).render(10)
        outside = alpha < 0.5
        assert frame.rgb[alpha == 0].max() == 0
        assert not (frame.active | frame.negative)[outside].any()
    with pytest.raises(SynthError, match="scope_mask"):
        Look((1, 1, 1), 1.0, 0.0, "hexagon", 1.0, (0, 0), 90, 23)
    with pytest.raises(SynthError, match="scope_masks"):
        LookRanges(scope_masks=("oval",))


def test_blur_keeps_the_mean_and_softens_an_edge() -> None:
    img = np.zeros((20, 20, 3), np.float32)
    img[:, 10:] = 1.0
    out = gaussian_blur(img, 1.0)
    assert out.mean() == pytest.approx(img.mean(), abs=1e-5)
    assert 0.0 < out[5, 9, 0] < 0.5 < out[5, 10, 0] < 1.0
    assert np.array_equal(gaussian_blur(img, 0.1), img)


def test_labels_record_the_families_of_each_case(tmp_path) -> None:
    from amagi_plugin.synth import OutputOptions, plan_cases, write_case

    spec = plan_cases(1, 31, duration_s=4.0, ranges="randomised", width=64, height=48,
                      fps=10.0)[0]
    record = write_case(spec, tmp_path, OutputOptions(formats=("rawframes",), clip_stride=10))
    doc = json.loads((tmp_path / spec.case_id / "labels.json").read_text())
    assert doc["tags"] == spec.scene.tags() == record["tags"]
    assert doc["tags"]["scope_mask"] == spec.scene.look.scope_mask
    assert [e["form"] for e in doc["events"]] == [e.form for e in spec.scene.events]
