"""Breathing as a randomised factor (``SceneRanges.wobble``, ``amagi synth --wobble LOW,HIGH``):
the view sways back and forth at 0.15-1.2 Hz, as tissue does with breathing and with the
heartbeat it carries, and still blood with it. Off by default (the presets' scenes
unchanged); drawn per case; seen in the pixels as a sway of the whole view; the premise holds
under it (still blood moves but does not grow)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from amagi_plugin.synth import DOMAINS, Renderer, SceneParams, SynthError, sample_scene
from amagi_plugin.synth.camera import CameraMotion, world_to_screen
from amagi_plugin.synth.scene import SceneRanges
from tests.amagi_plugin.test_synth_randomised import SIZE, _twins, same_colour_statistics

RANDOMISED = DOMAINS["randomised"]
UNSWAYED = {"wobble_amplitude": 0.0, "wobble_hz": 0.3, "wobble_angle": 0.0,
            "wobble_ratio": 0.0, "wobble_phase": 0.0}  # CameraMotion's defaults


def test_off_by_default_and_drawn_per_case_within_its_range() -> None:
    assert all(r.wobble == (0.0, 0.0) for r in DOMAINS.values())
    assert {f.name: f.default for f in dataclasses.fields(CameraMotion)
            if f.name.startswith("wobble")} == UNSWAYED
    sways = []
    for seed in range(8):
        plain = sample_scene(seed, duration_s=20.0, ranges="randomised", **SIZE)
        assert plain.camera.wobble_amplitude == 0.0
        swayed = sample_scene(seed, duration_s=20.0, **SIZE,
                              ranges=dataclasses.replace(RANDOMISED, wobble=(0.01, 0.03)))
        cam = swayed.camera
        assert dataclasses.replace(cam, **UNSWAYED) == plain.camera  # only the sway is new
        side = min(SIZE["width"], SIZE["height"])
        assert 0.01 * side <= cam.wobble_amplitude <= 0.03 * side
        assert 0.15 <= cam.wobble_hz <= 1.2 and 0 <= cam.wobble_ratio <= 0.5
        # the canvas holds every view of the swaying camera
        assert all(a >= b for a, b in zip(swayed.canvas_size, plain.canvas_size, strict=True))
        assert SceneParams.from_dict(json.loads(json.dumps(swayed.to_dict()))) == swayed
        sways.append((cam.wobble_amplitude, cam.wobble_hz, cam.wobble_angle))
    assert all(len(set(x)) == len(sways) for x in zip(*sways, strict=True))  # drawn per case
    assert sample_scene(3, duration_s=20.0, ranges=dataclasses.replace(
        RANDOMISED, wobble=(0.01, 0.03)), **SIZE) == sample_scene(
        3, duration_s=20.0, ranges=dataclasses.replace(RANDOMISED, wobble=(0.01, 0.03)), **SIZE)
    for bad in ((0.03, 0.01), (0.0, 0.2), (-0.01, 0.01)):
        with pytest.raises(SynthError, match="wobble must be a range"):
            SceneRanges(wobble=bad)


def test_the_camera_sways_along_an_ellipse_at_its_frequency() -> None:
    cam = CameraMotion(wobble_amplitude=3.0, wobble_hz=0.5, wobble_angle=0.4,
                       wobble_ratio=0.5, wobble_phase=0.0)
    cx, cy = zip(*(cam.pose(t, (0.0, 0.0))[:2] for t in np.arange(0, 2.0, 0.05)), strict=True)
    d = np.hypot(cx, cy)
    assert d.max() == pytest.approx(3.0, abs=0.02) and d.min() == pytest.approx(1.5, abs=0.02)
    assert cam.pose(2.0, (0.0, 0.0)) == pytest.approx(cam.pose(0.0, (0.0, 0.0)))  # 0.5 Hz
    along = math.cos(0.4) * cam.pose(0.5, (0, 0))[0] + math.sin(0.4) * cam.pose(0.5, (0, 0))[1]
    assert along == pytest.approx(3.0)  # a quarter period in: the far end of its long axis
    hx, _ = cam.max_extent(100, 80)
    assert hx == pytest.approx(CameraMotion().max_extent(100, 80)[0] + 3.0 * math.hypot(1, 0.5))


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_still_blood_sways_with_the_view_but_never_grows() -> None:
    """The premise under breathing: an active ooze and its still look-alike seen through a
    camera that only sways (3 px at 0.8 Hz). About half a period apart the look-alike
    has moved by the camera's own displacement (its mask's centroid, within half a pixel)
    and covers as many pixels (within 3 %); the active blood covers over 5 % more; one
    frame still shows the same colour statistics."""
    frames = []
    for seed, side in itertools.product(range(3, 7), (1.0, -1.0)):
        _, k, scene = _twins(seed, side, 0.5)
        cam = dataclasses.replace(scene.camera, wobble_amplitude=3.0, wobble_hz=0.8,
                                  wobble_angle=0.5 * seed, wobble_ratio=0.3, wobble_phase=1.0)
        scene = dataclasses.replace(scene, camera=cam)
        r = Renderer(scene)
        later_k = k + round(scene.fps / (2 * cam.wobble_hz))
        f, later = r.render(k), r.render(later_k)
        source = scene.still[0].blood.source
        moved = np.subtract(world_to_screen(scene.pose(later_k), *source),
                            world_to_screen(scene.pose(k), *source))
        assert np.hypot(*moved) > 2.0  # it did sway
        assert np.abs(_centroid(later.negative) - _centroid(f.negative) - moved).max() < 0.5
        assert abs(int(later.negative.sum()) - int(f.negative.sum())) < 0.03 * f.negative.sum()
        assert later.active.sum() > 1.05 * f.active.sum()
        frames.append(f)
    same_colour_statistics(frames)
