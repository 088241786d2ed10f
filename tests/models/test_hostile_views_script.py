"""scripts/model/hostile_views.py: each view changes only what its name says."""

from __future__ import annotations

import numpy as np

from tests.models._scripts import load_script

SCRIPT = "scripts/model/hostile_views.py"


def _disc_frame() -> np.ndarray:
    """A red disc of radius 10 on grey tissue, 128 × 160."""
    frame = np.full((128, 160, 3), 120, np.uint8)
    yy, xx = np.mgrid[:128, :160]
    frame[(yy - 64) ** 2 + (xx - 80) ** 2 <= 100] = (200, 20, 20)
    return frame


def _red_area(rgb: np.ndarray) -> int:
    r, g = rgb[..., 0].astype(int), rgb[..., 1].astype(int)
    return int(((r > 160) & (g < 70)).sum())


def test_views_change_only_what_they_name() -> None:
    hv = load_script(SCRIPT)
    frame, rng = _disc_frame(), np.random.default_rng(1)
    still = [hv.view(frame, "still", t, rng) for t in (0.0, 1.0)]
    for v in still:  # the frame itself, but for sensor noise (σ = 2)
        assert np.abs(v.astype(int) - frame).mean() < 2.5 and _red_area(v) == _red_area(frame)
    assert not np.array_equal(*still)  # fresh noise in every frame
    # zoom: in by 35 % at half its 6 s period (area × 1.35²), back at the period's end
    area = _red_area(frame)
    assert 1.7 < _red_area(hv.view(frame, "zoom", 3.0, rng)) / area < 1.95
    assert abs(_red_area(hv.view(frame, "zoom", 6.0, rng)) / area - 1) < 0.05
    # pan: the disc moves, keeping its size within the view's fixed 15 % zoom
    panned = hv.view(frame, "pan", 2.0, rng)
    _ys, xs = np.nonzero((panned[..., 0] > 160) & (panned[..., 1] < 70))
    assert abs(xs.mean() - 80) > 5 and 1.2 < len(xs) / area < 1.45
    # flicker: brighter at a quarter second, darker at three quarters, same geometry
    bright, dark = (hv.view(frame, "flicker", t, rng) for t in (0.25, 0.75))
    assert bright[0, 0].mean() > 145 and dark[0, 0].mean() < 95



def test_arguments_after_the_double_dash_go_to_amagi_process() -> None:
    """As the docstring says to run it: ``-- --model-dir DIR`` is handed on, not refused."""
    hv = load_script(SCRIPT)
    args = hv.parse(["data", "out", "--cases", "4", "--", "--model-dir", "m", "--threads", "1"])
    assert (str(args.data), str(args.out), args.cases) == ("data", "out", 4)
    assert args.extra == ["--model-dir", "m", "--threads", "1"]
    assert hv.parse(["data", "out"]).extra == []
