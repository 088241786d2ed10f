from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from amagi_plugin.analysis import (
    Timeline,
    closing,
    find_events,
    opening,
    runs,
    smooth_decisions,
)
from dicom_io.results import CaseIndex


def b(s: str) -> np.ndarray:
    return np.array([c == "1" for c in s])


def s(x: np.ndarray) -> str:
    return "".join("1" if v else "0" for v in x)


@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_opening_removes_short_runs_and_keeps_long_ones(size: int) -> None:
    x = b("0" * 6 + "1" * (size - 1) + "0" * 6 + "1" * size + "0" * 6 + "1" * (size + 3) + "0" * 3)
    out = opening(x, size)
    kept = [(a, z) for a, z in runs(x) if z - a >= size]
    assert runs(out) == kept
    np.testing.assert_array_equal(opening(out, size), out)  # idempotent


@pytest.mark.parametrize("size", [2, 3, 4])
def test_closing_fills_short_gaps_only(size: int) -> None:
    x = b("1" * 5 + "0" * (size - 1) + "1" * 5 + "0" * size + "1" * 5)
    out = closing(x, size)
    assert runs(out) == [(0, 5 + size - 1 + 5), (5 + size - 1 + 5 + size, len(x))]
    np.testing.assert_array_equal(closing(out, size), out)


def test_runs_touching_the_edges() -> None:
    assert runs(b("110011")) == [(0, 2), (4, 6)]
    assert s(opening(b("111000"), 3)) == "111000"
    assert s(closing(b("101"), 2)) == "111"


def test_smoothing_methods() -> None:
    p = np.array([0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.2, 0.8, 0.9, 0.9, 0.1, 0.1])
    assert s(smooth_decisions(p, rate_hz=3, method="none")) == "101111011100"
    # opening (3) drops the lone first positive; closing (3) bridges the one-sample gap.
    assert s(smooth_decisions(p, rate_hz=3, method="morphology", length_s=1.0)) == "001111111100"
    assert s(smooth_decisions(p, rate_hz=3, method="median", length_s=1.0)) == "111111111100"
    with pytest.raises(ValueError, match="method"):
        smooth_decisions(p, 3, method="gauss")


def test_events_and_index_hand_computed() -> None:
    # 10 Hz predictions on a 30 fps video: prediction k at t = k/10 s, frame 3k.
    p = np.array([0.1, 0.2, 0.7, 0.9, 0.8, 0.3, 0.1, 0.6, 0.95, 0.2])
    decisions = p >= 0.5
    tl = Timeline(times_s=np.arange(10) / 10, frames=np.arange(10) * 3, rate_hz=10.0, duration_s=1.0)
    events = find_events(p, decisions, tl)
    assert len(events) == 2
    e1, e2 = events
    assert (e1.start_s, e1.end_s, e1.duration_s) == (0.2, 0.5, 0.3)
    assert (e1.start_frame, e1.end_frame, e1.key_frame) == (7, 13, 10)  # 1-based frames 6, 12, 9
    assert e1.peak_probability == 0.9 and e1.mean_probability == pytest.approx(0.8)
    assert (e2.start_s, e2.end_s, e2.key_frame) == (0.7, 0.9, 25)
    idx = CaseIndex.from_events(events, 1.0)
    assert idx.event_count == 2 and idx.total_duration_s == pytest.approx(0.5)
    assert idx.max_duration_s == pytest.approx(0.3) and idx.mean_duration_s == pytest.approx(0.25)
    assert idx.first_bleed_s == 0.2 and idx.video_duration_s == 1.0


def test_event_at_video_end_is_clipped_and_empty_case() -> None:
    p = np.array([0.0, 0.0, 1.0, 1.0])
    tl = Timeline(np.arange(4) / 10, np.arange(4) * 3, 10.0, duration_s=0.35)
    (e,) = find_events(p, p > 0.5, tl)
    assert e.end_s == 0.35 and e.duration_s == pytest.approx(0.15)
    idx = CaseIndex.from_events([], 12.0)
    assert idx.event_count == 0 and idx.total_duration_s == 0 and idx.first_bleed_s is None


def test_operating_point_checks_its_knobs_and_reads_model_json_entries() -> None:
    from amagi_plugin.analysis import OperatingPoint

    assert OperatingPoint() == OperatingPoint(0.5, "morphology", 1.0)  # the authors'
    point = OperatingPoint.from_json({"threshold": 0.35, "smoothing_s": 2.0,
                                      "chosen_on": "validation cases"})
    assert point == OperatingPoint(0.35, "morphology", 2.0)
    assert point.to_json() == {"threshold": 0.35, "smoothing": "morphology", "smoothing_s": 2.0}
    for bad, message in (({"threshold": 1.0}, "threshold must lie in"),
                         ({"threshold": "0.4"}, "threshold must lie in"),
                         ({"smoothing": "gauss"}, "smoothing must be one of"),
                         ({"smoothing_s": -1}, "smoothing_s must be 0 or more"),
                         ({"treshold": 0.4}, "unknown operating-point key"),
                         ([0.4], "is a table")):
        with pytest.raises(ValueError, match=message):
            OperatingPoint.from_json(bad)  # type: ignore[arg-type]
    # decide() is the pipeline's own post-processing at the point
    p = np.array([0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.2, 0.8, 0.9, 0.9, 0.1, 0.1])
    assert s(OperatingPoint(0.5, "morphology", 1.0).decide(p, 3)) == "001111111100"
    assert s(OperatingPoint(0.85, "none", 0.0).decide(p, 3)) == "101111001100"


def test_a_configured_knob_wins_over_the_models_operating_point() -> None:
    from amagi_plugin.analysis import OperatingPoint, at_operating_point
    from amagi_plugin.pipeline import AnalysisOptions

    base = AnalysisOptions(threshold=0.5, smoothing="median", smoothing_s=3.0, batch_size=5)
    point = OperatingPoint(0.35, "morphology", 2.0)
    assert at_operating_point(base, None) is base
    got = at_operating_point(base, point)
    assert (got.threshold, got.smoothing, got.smoothing_s, got.batch_size) == (
        0.35, "morphology", 2.0, 5)
    got = at_operating_point(base, point, configured={"threshold", "smoothing_s"})
    assert (got.threshold, got.smoothing, got.smoothing_s) == (0.5, "morphology", 3.0)


def test_a_hold_threshold_lengthens_the_events_it_begins_and_begins_none() -> None:
    from amagi_plugin.analysis import OperatingPoint

    # at 0.8 one event of 2 samples begins; held at 0.5 it lasts while p >= 0.5 around it
    # (samples 2-7); the stretch at 0.6 (samples 10-12) reaches 0.5 but never 0.8: no event
    p = np.array([0.1, 0.4, 0.5, 0.6, 0.9, 0.85, 0.7, 0.55, 0.3, 0.2, 0.6, 0.7, 0.6, 0.1])
    assert s(smooth_decisions(p, 1.0, 0.8, "none", 0.0)) == "00001100000000"
    assert s(smooth_decisions(p, 1.0, 0.8, "none", 0.0, 0.5)) == "00111111000000"
    assert s(smooth_decisions(p, 1.0, 0.8, "none", 0.0, 0.8)) == "00001100000000"  # = none
    # read with the same filter at both levels: a 2-sample opening removes lone samples
    q = np.array([0.9, 0.1, 0.6, 0.6, 0.9, 0.9, 0.6, 0.1, 0.6, 0.1, 0.9, 0.9])
    assert s(smooth_decisions(q, 1.0, 0.8, "morphology", 2.0)) == "000011000011"
    assert s(smooth_decisions(q, 1.0, 0.8, "morphology", 2.0, 0.5)) == "001111100011"
    # holding never begins an event, nor adds one: over random walks, each held event holds
    # an event of the threshold, and the held decisions contain the threshold's
    rng = np.random.default_rng(0)
    for _ in range(200):
        r = np.clip(np.cumsum(rng.normal(0, 0.15, 300)) % 2.0, 0, 1)
        r = np.where(r > 1, 2 - r, r)
        thr, hold = sorted(rng.uniform(0.05, 0.95, 2))[::-1]
        for method, length in (("morphology", 1.0), ("median", 0.5), ("none", 0.0)):
            begin = smooth_decisions(r, 10.0, thr, method, length)
            held = OperatingPoint(thr, method, length, hold).decide(r, 10.0)
            assert not (begin & ~held).any()
            assert all(begin[a:z].any() for a, z in runs(held))
            assert len(runs(held)) <= len(runs(begin))
    with pytest.raises(ValueError, match=r"lies above the threshold 0\.5"):
        smooth_decisions(p, 1.0, 0.5, "none", 0.0, 0.6)


def test_an_operating_point_with_a_hold_reads_and_writes_model_json() -> None:
    from amagi_plugin.analysis import OperatingPoint

    point = OperatingPoint.from_json({"threshold": 0.8, "hold_threshold": 0.45,
                                      "chosen_on": "validation cases"})
    assert point == OperatingPoint(0.8, "morphology", 1.0, 0.45)
    assert point.to_json() == {"threshold": 0.8, "smoothing": "morphology", "smoothing_s": 1.0,
                               "hold_threshold": 0.45}
    assert OperatingPoint.from_json(point.to_json()) == point
    assert "hold_threshold" not in OperatingPoint(0.8).to_json()  # a model.json as before
    assert point.describe() == "threshold 0.8 (held to 0.45), morphology 1 s"
    assert OperatingPoint(0.8).describe() == "threshold 0.8, morphology 1 s"
    for bad, message in (({"threshold": 0.5, "hold_threshold": 0.6}, "lies above the threshold"),
                         ({"hold_threshold": 0.0}, "hold_threshold must lie in"),
                         ({"hold_threshold": True}, "hold_threshold must lie in"),
                         ({"hold_threshold": "0.3"}, "hold_threshold must lie in")):
        with pytest.raises(ValueError, match=message):
            OperatingPoint.from_json(bad)


def test_the_models_hold_belongs_to_its_threshold() -> None:
    from amagi_plugin.analysis import OperatingPoint, at_operating_point
    from amagi_plugin.pipeline import AnalysisOptions

    base = AnalysisOptions(threshold=0.5)
    point = OperatingPoint(0.8, "morphology", 1.0, 0.45)
    assert at_operating_point(base, point).hold_threshold == 0.45
    # a configured threshold drops the model's hold (chosen with the model's threshold) ...
    got = at_operating_point(base, point, configured={"threshold"})
    assert (got.threshold, got.hold_threshold) == (0.5, None)
    # ... unless the hold is configured too; a configured hold applies to the model's threshold
    got = at_operating_point(replace(base, hold_threshold=0.3), point,
                             configured={"threshold", "hold_threshold"})
    assert (got.threshold, got.hold_threshold) == (0.5, 0.3)
    got = at_operating_point(replace(base, hold_threshold=0.6), point,
                             configured={"hold_threshold"})
    assert (got.threshold, got.hold_threshold) == (0.8, 0.6)
