from __future__ import annotations

import numpy as np
import pytest

from amagi_plugin.schedule import ClipSchedule, naive_clip_probabilities, shared_clip_probabilities


def _fake_clip_model(calls: list[int]):
    """Deterministic per-clip probabilities that depend on the clip start only."""

    def probs(starts):
        calls.extend(starts)
        rng = [np.random.default_rng(1000 + s) for s in starts]
        logits = np.stack([r.normal(size=2) for r in rng])
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return probs


@pytest.mark.parametrize(("fps", "frames", "hz"), [(30, 300, 10), (25, 250, 10), (60, 601, 10),
                                                   (30, 95, 5), (50, 40, 2.5)])
def test_shared_equals_naive_and_each_clip_runs_once(fps, frames, hz) -> None:
    sched = ClipSchedule(frames, fps, prediction_hz=hz)
    shared_calls: list[int] = []
    naive_calls: list[int] = []
    shared = shared_clip_probabilities(sched, _fake_clip_model(shared_calls), batch_size=5)
    naive = naive_clip_probabilities(sched, _fake_clip_model(naive_calls))
    np.testing.assert_array_equal(shared, naive)
    assert len(shared_calls) == len(set(shared_calls)), "a clip was computed twice"
    assert len(naive_calls) == 3 * len(sched.prediction_points())
    assert shared_calls == sorted(shared_calls), "clips are requested front to back"
    if hz == 10:  # every grid point predicted: about one clip per prediction, not three
        assert len(shared_calls) <= len(sched.prediction_points()) + 7


def test_grid_is_defined_in_seconds() -> None:
    s30, s25, s60 = ClipSchedule(300, 30), ClipSchedule(250, 25), ClipSchedule(600, 60)
    # The authors' clip: 8 frames 3 apart at 30 fps.
    assert s30.clip_frames(10) == [30, 33, 36, 39, 42, 45, 48, 51]
    assert s60.clip_frames(10) == [60, 66, 72, 78, 84, 90, 96, 102]
    assert s25.clip_frames(0) == [0, 2, 5, 8, 10, 12, 15, 18]  # nearest frames to 0.1 s steps
    assert len(s30.prediction_points()) == len(s25.prediction_points()) == 100
    # Starting, centred (frame T//2 = 4 on the point) and ending clips.
    assert s30.clip_offsets == (0, -4, -7)
    assert s30.clip_frames(20 - 4)[4] == s30.grid_frame(20)
    assert s30.clip_frames(20 - 7)[-1] == s30.grid_frame(20)


def test_edges_repeat_first_and_last_frame() -> None:
    s = ClipSchedule(20, 30)
    assert s.clip_frames(-7) == [0] * 7 + [0]
    assert s.clip_frames(5) == [15, 18, 19, 19, 19, 19, 19, 19]


def test_lower_prediction_rate() -> None:
    s = ClipSchedule(300, 30, prediction_hz=2)
    assert list(s.prediction_points())[:3] == [0, 5, 10]
    assert s.prediction_time(5) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [dict(frame_count=0, fps=30), dict(frame_count=10, fps=0),
                                 dict(frame_count=10, fps=30, prediction_hz=20)])
def test_invalid_schedule(bad) -> None:
    with pytest.raises(ValueError):
        ClipSchedule(**bad)
