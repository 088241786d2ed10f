"""Lens distortion, per-case video format and the distractors that are not active bleeding.

Soaked gauze and stained instrument jaws look like active blood in one frame (the same colour
model) but never grow or flow; irrigation fluid flows but is not blood; blood on the lens
stays fixed in screen space. None of them may ever be in the active-bleeding mask, and each
factor is reproducible, varies continuously across cases and is held out where it should be.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from amagi_plugin.synth import DOMAINS, Renderer, SceneParams, SynthError, sample_scene
from amagi_plugin.synth.camera import CameraMotion
from amagi_plugin.synth.look import Look, LookRanges, distortion_map
from amagi_plugin.synth.scene import (
    DISTRACTOR_KINDS,
    Gauze,
    Instrument,
    Irrigation,
    LensBlood,
    StillBlood,
    VideoFormatRanges,
)

SIZE = dict(width=128, height=96, fps=10.0)
#: The randomised domain with every distractor kind, several per case.
ALL = dataclasses.replace(DOMAINS["randomised"], distractors=(4, 6),
                          distractor_kinds=DISTRACTOR_KINDS)


def _scene(seed: int, ranges="randomised", duration_s: float = 12.0, **size) -> SceneParams:
    return sample_scene(seed, duration_s=duration_s, ranges=ranges, **{**SIZE, **size})


def _kinds(scene: SceneParams) -> set[str]:
    tag = scene.tags()["distractors"]
    return set() if tag == "none" else set(tag.split("+"))


def _plain(scene: SceneParams) -> SceneParams:
    """``scene`` through a motionless camera, with a neutral camera chain and no noise, smoke,
    instruments, pools or red patches: pixels then follow only what a test puts in."""
    look = Look((1.0, 1.0, 1.0), 1.0, 0.0, "none", 1.0, (0.0, 0.0), 90, 23)
    return dataclasses.replace(
        scene, camera=CameraMotion(zoom_base=1.0), smoke=(), instruments=(), look=look,
        gauze=(), irrigation=(), lens_blood=(), pools=(), red_patches=(), still=(),
        noise_std=0.0, light_flicker=0.0, vignette=0.0)


def test_distractors_and_distortion_are_a_function_of_the_seed_and_survive_json() -> None:
    a, b = _scene(4, ALL), _scene(4, ALL)
    assert a == b and _kinds(a) and a.look.distortion != 0.0
    assert _scene(5, ALL) != a
    back = SceneParams.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back == a
    r1, r2 = Renderer(a), Renderer(back)
    for k in (0, 60, 119):
        f1, f2 = r1.render(k), r2.render(k)
        assert np.array_equal(f1.rgb, f2.rgb) and np.array_equal(f1.active, f2.active)


def test_first_presets_draw_none_of_the_new_factors() -> None:
    for domain in ("train", "shifted"):
        for seed in range(6):
            sc = _scene(seed, domain)
            assert sc.look is None and not _kinds(sc)
            assert (sc.width, sc.height, sc.fps) == (128, 96, 10.0)


def test_distortion_and_distractors_vary_continuously_across_cases() -> None:
    scenes = [_scene(s) for s in range(24)]
    k = np.array([sc.look.distortion for sc in scenes])
    lo, hi = DOMAINS["randomised"].look.distortion
    assert len(set(k)) == 24 and k.std() > 0.06 and (k >= lo).all() and (k <= hi).all()
    assert (k < 0).any() and (k > 0).any()  # pincushion and barrel
    assert set().union(*map(_kinds, scenes)) == set(DOMAINS["randomised"].distractor_kinds)
    gauze = [g for sc in scenes for g in sc.gauze]
    assert len({g.half_size for g in gauze}) == len(gauze) > 5
    assert len({round(g.stain.frozen_s, 6) for g in gauze}) == len(gauze)
    irrigation = [x.opacity for sc in scenes for x in sc.irrigation]
    assert len(set(irrigation)) == len(irrigation) > 5 and max(irrigation) < 0.5
    tips = [i.stain.blood.max_radius for sc in scenes for i in sc.instruments if i.stain]
    assert len(set(tips)) == len(tips) > 3


def test_held_out_distractor_kind_and_distortions_never_occur_in_training() -> None:
    train, held = DOMAINS["randomised"], DOMAINS["heldout"]
    assert set(held.distractor_kinds) - set(train.distractor_kinds) == {"lens_blood"}
    seen = [_scene(s) for s in range(20)]
    assert all(not sc.lens_blood for sc in seen)
    lo, hi = train.look.distortion
    out = [sc.look.distortion for sc in (_scene(s, "heldout") for s in range(20))]
    assert any(not lo <= v <= hi for v in out)  # held-out lenses are beyond training's
    assert any(sc.lens_blood for sc in (_scene(s, "heldout") for s in range(20)))


def test_distractors_are_never_in_the_active_mask() -> None:
    """The same scene with and without every distractor kind: the active mask only loses
    pixels (where lens blood or an instrument hides the blood), never gains any."""
    checked = 0
    for seed in range(12):
        sc = _scene(seed, ALL, duration_s=20.0)
        if not sc.events or len(_kinds(sc)) < 3:
            continue
        bare = dataclasses.replace(sc, gauze=(), irrigation=(), lens_blood=(),
                                   instruments=tuple(dataclasses.replace(i, stain=None)
                                                     for i in sc.instruments))
        with_d, without = Renderer(sc), Renderer(bare)
        frames = sorted({f for ev in sc.events for f in (ev.start_frame + 3, ev.end_frame - 1)}
                        | {x.start_frame + 5 for x in sc.irrigation if x.start_frame + 5
                           < sc.n_frames})
        for k in frames:
            a, b = with_d.render(k), without.render(k)
            assert not (a.active & ~b.active).any(), (seed, k)
            checked += int(b.active.any())
        # No distractor makes a bleeding-free scene bleed.
        calm = Renderer(dataclasses.replace(sc, events=()))
        assert not any(calm.render(k).active.any() for k in range(0, sc.n_frames, 7))
    assert checked >= 4


def _twin_setup(size: int = 128):
    """An ooze active at frame ``mid`` left of the centre, and its frozen twin's parameters."""
    base = _scene(3, duration_s=30.0, width=size, height=size)
    ev = next(e for e in base.events if e.form in ("ooze", "occluded"))
    cx, cy = base.canvas_centre
    ev = dataclasses.replace(ev, form="ooze", max_radius=14.0, initial_radius=4.0,
                             growth_tau_s=2.0, source=(cx - 24.0, cy), streak_length=0.0,
                             flow_speed=0.0)
    mid = (ev.start_frame + ev.end_frame) // 2
    twin = StillBlood("fresh_still", dataclasses.replace(ev, start_frame=0,
                                                         end_frame=base.n_frames),
                      frozen_s=(mid - ev.start_frame) / base.fps)
    return base, ev, twin, mid, (cx, cy)


def _erode(mask: np.ndarray, n: int = 2) -> np.ndarray:
    out = mask.copy()
    for _ in range(n):
        out[1:] &= out[:-1].copy()
        out[:-1] &= out[1:].copy()
        out[:, 1:] &= out[:, :-1].copy()
        out[:, :-1] &= out[:, 1:].copy()
    return out


def test_premise_soaked_gauze_looks_like_active_blood_in_one_frame_but_never_changes() -> None:
    base, ev, twin, mid, (cx, cy) = _twin_setup()
    stain = dataclasses.replace(twin, blood=dataclasses.replace(twin.blood,
                                                                source=(cx + 24.0, cy)))
    gauze = Gauze(centre=(cx + 24.0, cy), half_size=(21.0, 19.0), angle=0.3, weave_px=3.0,
                  tone=(0.92, 0.9, 0.86), stain=stain)
    scene = dataclasses.replace(_plain(base), events=(ev,), gauze=(gauze,))
    # One frame: the stain, frozen where the active blood is at that frame, has active blood's
    # colour statistics (the weave shows a little), pooled over five moments of the event
    # (the flow texture and its glints fall differently on the two at any one moment).
    a_px, s_px = [], []
    for dk in (-6, -3, 0, 3, 6):
        held = dataclasses.replace(stain, frozen_s=(mid + dk - ev.start_frame) / base.fps)
        f = Renderer(dataclasses.replace(scene, gauze=(dataclasses.replace(
            gauze, stain=held),))).render(mid + dk)
        active, still = _erode(f.active), _erode(f.negative)
        assert active.sum() > 100 and still.sum() > 100
        assert not (f.active & f.negative).any()
        a_px.append(f.rgb[active].astype(float))
        s_px.append(f.rgb[still].astype(float))
    a_rgb, s_rgb = np.concatenate(a_px), np.concatenate(s_px)
    assert np.abs(a_rgb.mean(0) - s_rgb.mean(0)).max() < 10.0
    assert (np.abs(a_rgb.std(0) - s_rgb.std(0)) < 0.3 * a_rgb.std(0) + 2.0).all()
    r = Renderer(scene)
    f = r.render(mid)
    # Over the clip only the active blood changes; the gauze and its stain stay put.
    later = r.render(mid + 7)
    region = f.active | later.active
    diff_active = np.abs(later.rgb[region].astype(float) - f.rgb[region].astype(float)).mean()
    swab = np.zeros_like(f.active)
    swab[:, 64 + 4:] = True
    diff_gauze = np.abs(later.rgb[swab].astype(float) - f.rgb[swab].astype(float)).mean()
    assert diff_active > 5.0 and diff_gauze < 0.5
    assert np.array_equal(later.negative, f.negative)


def _stained_instrument(twin: StillBlood, moving: bool) -> Instrument:
    blood = dataclasses.replace(twin.blood, source=(14.0, 0.0), max_radius=12.0,
                                initial_radius=3.0)
    return Instrument(entry_angle=0.0, tip_home=(0.45, 0.5),
                      tip_amplitude=(0.15, 0.1) if moving else (0.0, 0.0), tip_hz=(0.3, 0.2),
                      tip_phases=(0.0, 1.0), width_frac=0.25, tone=0.7, dark_shaft=False,
                      jaw_length_frac=0.25, jaw_hz=0.0, wobble=0.0,
                      stain=dataclasses.replace(twin, blood=blood))


def test_premise_stained_jaws_look_like_blood_and_change_only_with_the_instrument() -> None:
    base, ev, twin, mid, _ = _twin_setup()
    still_inst = _stained_instrument(twin, moving=False)
    clean = dataclasses.replace(still_inst, stain=None)
    scene = dataclasses.replace(_plain(base), events=(ev,), instruments=(still_inst,))
    r = Renderer(scene)
    f = r.render(mid)
    plain = Renderer(dataclasses.replace(scene, instruments=(clean,))).render(mid)
    # The stain's core (opacity ≳ 0.7 over the grey metal).
    stained = _erode(np.abs(f.rgb.astype(int) - plain.rgb.astype(int)).sum(-1) > 250, 1)
    assert stained.sum() > 30
    assert not (f.active & stained).any() and not (f.negative & stained).any()
    # ... but in the look-alike mask, which reaches no further than the stain's drawing
    assert f.lookalike[stained].all() and not (f.lookalike & f.active).any()
    drawn = np.abs(f.rgb.astype(int) - plain.rgb.astype(int)).sum(-1) > 0
    assert not (f.lookalike & ~drawn & ~f.negative).any()
    # a second, clean instrument drawn over the stained jaws takes the stain off the mask
    cover = dataclasses.replace(clean, width_frac=0.6, jaw_length_frac=0.5)
    covered = Renderer(dataclasses.replace(scene, instruments=(still_inst, cover))).render(mid)
    assert not covered.lookalike[stained].any()
    active = _erode(f.active)
    a_mean, s_mean = f.rgb[active].mean(0), f.rgb[stained].mean(0)
    assert np.abs(a_mean - s_mean).max() < 15.0, (a_mean, s_mean)
    # A motionless instrument: its stain never changes; the active blood does.
    later = r.render(mid + 7)
    assert np.abs(later.rgb[stained].astype(float) - f.rgb[stained].astype(float)).max() <= 1
    # A moving instrument carries its stain along: the red core follows the tip.
    moving = dataclasses.replace(scene, instruments=(_stained_instrument(twin, True),))
    rm = Renderer(moving)
    centroids = []
    for k in (mid, mid + 15):
        g = rm.render(k)
        ref = Renderer(dataclasses.replace(moving, instruments=(
            dataclasses.replace(moving.instruments[0], stain=None),))).render(k)
        red = (np.abs(g.rgb.astype(int) - ref.rgb.astype(int)).sum(-1) > 60)
        # (an edge pixel of active blood may take the stain's colour where the jaws cover
        # less than half of it: hence the active region's core)
        assert red.sum() > 20 and not (_erode(g.active, 1) & red).any()
        ys, xs = np.nonzero(red)
        centroids.append(np.array([xs.mean(), ys.mean()]))
        inst = moving.instruments[0]
        t = k / moving.fps
        tip = np.array([(inst.tip_home[0] + inst.tip_amplitude[0] * np.sin(
            inst.tip_hz[0] * 2 * np.pi * t + inst.tip_phases[0])) * moving.width,
            (inst.tip_home[1] + inst.tip_amplitude[1] * np.sin(
                inst.tip_hz[1] * 2 * np.pi * t + inst.tip_phases[1])) * moving.height])
        assert np.linalg.norm(centroids[-1] - tip) < 20.0  # on the jaws, just ahead of the tip
    assert np.linalg.norm(centroids[1] - centroids[0]) > 5.0


def test_irrigation_flows_but_is_never_masked() -> None:
    base = _scene(3, duration_s=20.0)
    cx, cy = base.canvas_centre
    ir = Irrigation(start_frame=20, end_frame=80, source=(cx, cy - 35.0), flow_angle=np.pi / 2,
                    width=6.0, length=70.0, speed=40.0, tint=(0.97, 0.9, 0.9), opacity=0.3,
                    ripple_wavelength=5.0, ripple_speed=20.0)
    scene = dataclasses.replace(_plain(base), events=(), irrigation=(ir,))
    r = Renderer(scene)
    dry = Renderer(dataclasses.replace(scene, irrigation=()))
    before = r.render(19)
    assert np.array_equal(before.rgb, dry.render(19).rgb)  # nothing before it starts
    a, b = r.render(40), r.render(43)
    wet = np.abs(a.rgb.astype(int) - dry.render(40).rgb.astype(int)).sum(-1) > 6
    assert wet.sum() > 100
    assert np.abs(b.rgb[wet].astype(float) - a.rgb[wet].astype(float)).mean() > 3.0  # it flows
    assert not a.active.any() and not a.negative.any() and not b.active.any()
    # It drains once the flow stops and leaves the tissue as it was.
    assert np.array_equal(r.render(199).rgb, dry.render(199).rgb)


def test_lens_blood_is_fixed_in_screen_space_and_hides_active_blood() -> None:
    base, ev, _twin, mid, _ = _twin_setup()
    smear = LensBlood(centre=(0.3, 0.5), radii=(18.0, 12.0), angle=0.2,
                      colour=(0.6, 0.05, 0.06), opacity=0.9, blur_px=2.0, irregularity=0.2)
    moving = _scene(3, duration_s=30.0, width=128, height=128).camera
    scene = dataclasses.replace(_plain(base), events=(ev,), camera=moving,
                                canvas_size=base.canvas_size)
    lensed = dataclasses.replace(scene, lens_blood=(smear,))
    r, bare = Renderer(lensed), Renderer(scene)
    alpha = r._lens[0]
    # With a neutral camera chain a frame is (1 - a) · the scene + the smear: the smear's own
    # contribution is the same at every frame while the camera moves the tissue under it.
    smears = []
    for k in (mid, mid + 30):
        seen, scene_only = r.render(k).rgb.astype(float), bare.render(k).rgb.astype(float)
        smears.append(seen - (1.0 - alpha[..., None]) * scene_only)
    moved = np.abs(bare.render(mid + 30).rgb.astype(float) - bare.render(mid).rgb).mean()
    assert moved > 5.0 and np.abs(smears[1] - smears[0]).max() <= 2.0  # two roundings
    red = smears[0][alpha > 0.5]
    assert len(red) > 200 and red[:, 0].min() > 40.0 and (red[:, 0] > 3 * red[:, 1]).all()
    for k in range(ev.start_frame, ev.end_frame, 3):
        a, b = r.render(k), bare.render(k)
        assert not (a.active & (alpha >= 0.5)).any() and not (a.negative & (alpha >= 0.5)).any()
        assert np.array_equal(a.lookalike, a.negative | (alpha >= 0.5))  # the smear is blood
        assert np.array_equal(a.active, b.active & (alpha < 0.5))


def test_distortion_map_is_identity_at_zero_and_keeps_sources_in_the_frame() -> None:
    x, y = distortion_map(0.0, 40, 60)
    gy, gx = np.mgrid[0:40, 0:60]
    assert np.allclose(x, gx) and np.allclose(y, gy)
    for k in (-0.3, -0.1, 0.2, 0.5):
        x, y = distortion_map(k, 40, 60)
        assert x.min() >= 0 and x.max() <= 59 and y.min() >= 0 and y.max() <= 39
        row = x[20, 30:]  # radius grows monotonically along a half row
        assert (np.diff(row) > 0).all()
    xb, _ = distortion_map(0.4, 40, 60)  # barrel: the centre is magnified, edges compressed
    assert abs(xb[20, 40] - 29.5) < 10.5 and xb[20, 59] < 59.0
    with pytest.raises(SynthError, match="distortion"):
        LookRanges(distortion=(-0.5, 0.1))
    with pytest.raises(SynthError, match="distortion"):
        Look((1, 1, 1), 1.0, 0.0, "none", 1.0, (0, 0), 90, 23, distortion=0.8)


def test_distortion_warps_frames_and_masks_alike() -> None:
    base, ev, _twin, mid, (cx, cy) = _twin_setup()
    ev = dataclasses.replace(ev, source=(cx - 34.0, cy - 30.0))  # off-centre: it moves
    flat = dataclasses.replace(_plain(base), events=(ev,))
    bent = dataclasses.replace(flat, look=dataclasses.replace(flat.look, distortion=0.45))
    f0, f1 = Renderer(flat).render(mid), Renderer(bent).render(mid)
    sx, sy = distortion_map(0.45, flat.height, flat.width)
    nearest = f0.active[np.rint(sy).astype(int), np.rint(sx).astype(int)]
    iou = (nearest & f1.active).sum() / (nearest | f1.active).sum()
    iou_plain = (f0.active & f1.active).sum() / (f0.active | f1.active).sum()
    assert iou > 0.85 and iou_plain < iou - 0.2
    warped = f0.rgb[np.rint(sy).astype(int), np.rint(sx).astype(int)].astype(float)
    inside = _erode(f1.active, 1)
    assert np.abs(warped[inside] - f1.rgb[inside]).mean() < 8.0


def test_video_format_is_opt_in_per_case_and_continuous() -> None:
    fmt = VideoFormatRanges()
    ranges = dataclasses.replace(DOMAINS["randomised"], video_format=fmt)
    scenes = [sample_scene(s, duration_s=3.0, ranges=ranges, width=96, height=80, fps=10.0)
              for s in range(24)]
    assert {sc.fps for sc in scenes} == {25.0, 30.0, 50.0, 60.0}
    assert all(sc.domain == "randomised" for sc in scenes)
    assert all(sc.n_frames == round(3.0 * sc.fps) for sc in scenes)
    assert all(sc.width % 2 == 0 and sc.height % 2 == 0 for sc in scenes)
    aspects = np.array([sc.width / sc.height for sc in scenes])
    areas = np.array([sc.width * sc.height for sc in scenes]) / (96 * 80)
    assert len({(sc.width, sc.height) for sc in scenes}) > 15
    assert aspects.min() > 0.97 and aspects.max() < 16 / 9 + 0.03 and aspects.std() > 0.1
    assert areas.min() > 0.75 ** 2 * 0.95 and areas.max() < 1.5 ** 2 * 1.05
    again = sample_scene(7, duration_s=3.0, ranges=ranges, width=96, height=80, fps=10.0)
    assert again == scenes[7]
    # Opting in changes only the format, not the rest of the case's draw.
    plain = sample_scene(7, duration_s=3.0, ranges="randomised", width=scenes[7].width,
                         height=scenes[7].height, fps=scenes[7].fps)
    assert dataclasses.replace(plain, domain="x") == dataclasses.replace(scenes[7], domain="x")
    with pytest.raises(SynthError, match="frame_rates"):
        VideoFormatRanges(frame_rates=())
    with pytest.raises(SynthError, match="aspect"):
        VideoFormatRanges(aspect=(2.0, 1.0))


def test_labels_follow_each_cases_own_rate_and_size(tmp_path) -> None:
    from PIL import Image

    from amagi_plugin.synth import OutputOptions, generate_dataset

    ranges = dataclasses.replace(DOMAINS["randomised"], video_format=VideoFormatRanges(
        frame_rates=(25.0, 50.0), scale=(0.8, 1.2), aspect=(1.0, 1.6)))
    index = generate_dataset(tmp_path, 3, 2, width=64, height=48, fps=10.0, duration_s=2.0,
                             ranges=ranges, options=OutputOptions(formats=("rawframes",),
                                                                  clip_stride=12))
    doc = json.loads(index.read_text())
    assert "per_case_format" in doc["settings"]
    for rec in doc["cases"]:
        labels = json.loads((tmp_path / rec["dir"] / "labels.json").read_text())
        scene = SceneParams.from_dict(labels["scene"])
        assert labels["fps"] == rec["fps"] == scene.fps in (25.0, 50.0)
        assert (labels["width"], labels["height"]) == (rec["width"], rec["height"]) == (
            scene.width, scene.height)
        assert labels["n_frames"] == len(labels["frame_labels"]) == round(2.0 * scene.fps)
        for e in labels["events"]:
            assert 0 <= e["start_frame"] < e["end_frame"] <= labels["n_frames"]
            assert e["start_s"] == pytest.approx(e["start_frame"] / scene.fps)
        step = round(scene.fps)  # one mask a second of this case's own time
        assert set(range(0, labels["n_frames"], step)) <= {m["frame"] for m in labels["masks"]}
        frames = sorted((tmp_path / rec["dir"] / "rawframes").iterdir())
        assert len(frames) == labels["n_frames"]
        assert Image.open(frames[0]).size == (scene.width, scene.height)
