"""Evaluation metrics against hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from amagi_plugin.errors import InputError
from amagi_plugin.evaluation import (
    CasePrediction,
    TruthCase,
    auroc,
    average_precision,
    event_counts,
    false_alarms,
    frame_counts,
    index_errors,
    interval_iou,
    latency_summary,
    load_cases,
    markdown_report,
    onset_latencies,
    prf,
    summarize,
)
from amagi_plugin.evaluation.run import metrics_document


def test_frame_counts_and_prf() -> None:
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    decisions = [1, 1, 0, 1, 0, 0, 0, 0]
    c = frame_counts(labels, decisions)
    assert c == {"tp": 2, "fp": 1, "fn": 2, "tn": 3}
    m = prf(c["tp"], c["fp"], c["fn"])
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert prf(0, 0, 0)["f1"] == 1.0
    assert prf(0, 3, 0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="differ in shape"):
        frame_counts([1, 0], [1])


def test_auroc_by_hand() -> None:
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (pos > neg) = 0.9>0.5, 0.9>0.1, 0.4>0.1 -> 3/4
    assert auroc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: (1 + 0.5) / 2
    assert auroc([1, 1, 0, 0], [0.8, 0.3, 0.3, 0.1]) == pytest.approx(0.875)
    assert auroc([1, 0], [0.2, 0.7]) == 0.0
    assert auroc([1, 1], [0.2, 0.7]) is None


def test_average_precision_by_hand() -> None:
    # ranking 0.9(+) 0.8(-) 0.7(+) 0.1(-): P@1 = 1, recall 0.5; P@3 = 2/3, recall 1
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3)
    # a tie group is one threshold: {0.5, 0.5} holds one positive of two -> P = 1/2 at R = 1
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert average_precision([0, 0], [0.5, 0.1]) is None


def test_interval_iou_and_event_matching() -> None:
    assert interval_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert interval_iou((0, 1), (2, 3)) == 0.0
    true = [(10.0, 20.0), (40.0, 44.0)]
    pred = [(12.0, 20.0), (30.0, 41.0), (50.0, 51.0)]
    # IoU: pred0-true0 = 8/10; pred1-true1 = 1/14 ≈ 0.071
    at01 = event_counts(pred, true, 0.1)
    assert (at01.tp, at01.n_pred, at01.n_true) == (1, 3, 2)
    assert at01.f1 == pytest.approx(2 * 1 / (3 + 2))
    assert event_counts(pred, true, 0.05).tp == 2
    assert event_counts(pred, true, 0.85).tp == 0
    # one prediction cannot match two events
    assert event_counts([(0.0, 10.0)], [(0.0, 5.0), (5.0, 10.0)], 0.1).tp == 1
    assert event_counts([], [], 0.5).f1 == 1.0


def test_index_errors() -> None:
    e = index_errors([(0.0, 3.0), (5.0, 6.0), (8.0, 9.5)], [(0.0, 4.0), (6.0, 8.0)])
    assert (e.pred_count, e.true_count, e.count_error) == (3, 2, 1)
    assert e.count_error_rel == pytest.approx(0.5)
    assert e.pred_duration_s == pytest.approx(5.5) and e.true_duration_s == pytest.approx(6.0)
    assert e.duration_error_rel == pytest.approx(0.5 / 6.0)
    assert index_errors([], []).count_error_rel is None


def _pred(case: str, labels, probs, events) -> CasePrediction:
    probs = np.asarray(probs, float)
    return CasePrediction(case, "m", np.arange(len(probs)) / 10, np.arange(len(probs)),
                          np.asarray(labels), probs, probs >= 0.5, events, 0.0)


def _truth(case: str, events, n_frames: int = 1, tags=None) -> TruthCase:
    return TruthCase(case, case, Path("/nonexistent"), 10.0, np.zeros(n_frames, np.uint8),
                     events, tags or {})


def test_summarize_pools_cases() -> None:
    preds = [_pred("a", [1, 1, 0, 0], [0.9, 0.6, 0.7, 0.1], [(0.0, 0.3)]),
             _pred("b", [0, 1, 1, 0], [0.2, 0.4, 0.8, 0.3], [(0.2, 0.3), (0.5, 0.6)])]
    truth = {"a": _truth("a", [(0.0, 0.2)]), "b": _truth("b", [(0.1, 0.3)])}
    s = summarize(preds, truth)
    # decisions: a = 1 1 1 0, b = 0 0 1 0 -> tp 3, fp 1, fn 1
    assert (s["frame"]["tp"], s["frame"]["fp"], s["frame"]["fn"]) == (3, 1, 1)
    assert s["frame"]["f1"] == pytest.approx(0.75)
    # a: IoU 0.2/0.3 = 0.667; b: (0.2, 0.3) vs (0.1, 0.3) IoU 0.5, (0.5, 0.6) unmatched
    assert s["events"]["iou_0.5"] == pytest.approx(
        {"tp": 2, "n_pred": 3, "n_true": 2, "precision": 0.6667, "recall": 1.0, "f1": 0.8},
        abs=1e-4)
    assert s["events"]["iou_0.25"]["tp"] == 2
    # count errors 0 and 1 over true counts 1 and 1 -> mean 0.5; durations |0.3-0.2|/0.2, |0.2-0.2|/0.2
    assert s["index"]["count_error_rel"] == pytest.approx(0.5)
    assert s["index"]["duration_error_rel"] == pytest.approx((0.5 + 0.0) / 2, abs=1e-4)
    doc = {"ious": [0.1, 0.25, 0.5], "models": ["m"], "notice": "demo", "folds": 1,
           "data": {"description": "two cases"}, "post_processing": {"threshold": 0.5},
           "pooled": {"m": s}, "per_fold": {"0": {"m": s}},
           "cases": [{"case_id": "a", "patient_id": "a", "fold": 0, "true_count": 1,
                      "true_duration_s": 0.2,
                      "models": {"m": {"pred_count": 1, "pred_duration_s": 0.3}}}]}
    md = markdown_report(doc)
    assert "| m | 0.750 | 0.750 | 0.750 |" in md and "50.0 %" in md and "**demo**" in md


def test_guidance_scores_the_segmentation_area_alone() -> None:
    a = _pred("a", [1, 1, 0, 0], [0.9, 0.6, 0.7, 0.1], [])
    b = _pred("b", [0, 1, 1, 0], [0.2, 0.4, 0.8, 0.3], [])
    a.guidance = np.array([0.30, 0.05, 0.10, 0.0])
    b.guidance = np.array([0.20, np.nan, 0.02, 0.0])  # a frame the decoder did not deliver
    truth = {"a": _truth("a", []), "b": _truth("b", [])}
    g = summarize([a, b], truth)["guidance"]
    # 7 frames: positives 0.30, 0.05, 0.02; negatives 0.10, 0.0, 0.20, 0.0.
    # Pairs won by the positive: 0.30 beats all 4, 0.05 beats 2, 0.02 beats 2 -> 8 / 12.
    assert g["auroc"] == pytest.approx(8 / 12, abs=1e-4)
    assert g["frames"] == 7
    assert g["area_bleeding"] == pytest.approx((0.30 + 0.05 + 0.02) / 3, abs=1e-4)
    assert g["area_normal"] == pytest.approx(0.30 / 4, abs=1e-4)
    # ranking 0.30+, 0.20-, 0.10-, 0.05+, 0.02+, 0-, 0-: AP = (1/3)(1 + 2/4 + 3/5)
    assert g["ap"] == pytest.approx((1 + 2 / 4 + 3 / 5) / 3, abs=1e-4)
    assert a.to_dict()["guidance"] == [0.3, 0.05, 0.1, 0.0]
    assert b.to_dict()["guidance"][1] is None
    b.guidance = None  # a model without segmentation gets no guidance entry
    assert "guidance" not in summarize([a, b], truth)


def test_false_alarms_by_hand() -> None:
    pred = [(0.0, 2.0), (5.0, 7.0), (10.0, 11.0), (20.0, 21.0)]
    true = [(4.0, 6.0), (11.0, 15.0)]
    # (5, 7) overlaps (4, 6); (10, 11) only touches (11, 15): 3 false alarms.
    # Non-bleeding time 30 - 2 - 4 = 24 s -> 3 per 24 s = 450 per hour.
    fa = false_alarms(pred, true, 30.0)
    assert (fa.count, fa.non_bleeding_s) == (3, pytest.approx(24.0))
    assert fa.per_hour() == pytest.approx(450.0)
    # overlapping true events count once, and the part past the end of the case not at all
    assert false_alarms([], [(0.0, 10.0), (5.0, 12.0)], 11.0).non_bleeding_s == 0.0
    assert false_alarms([], [(0.0, 10.0), (5.0, 12.0)], 11.0).per_hour() is None
    # bleeding-free: every predicted event is a false alarm, the whole case is non-bleeding
    free = false_alarms([(1.0, 2.0), (3.0, 4.0)], [], 60.0)
    assert (free.count, free.non_bleeding_s) == (2, 60.0)
    with pytest.raises(ValueError, match="duration_s"):
        false_alarms([], [], -1.0)


def test_onset_latencies_by_hand() -> None:
    times = np.arange(20) * 0.5  # 0.0, 0.5, ..., 9.5 s
    decisions = np.zeros(20, bool)
    decisions[[4, 5, 6]] = True  # 2.0-3.0 s -> event (2.0, 3.5)
    decisions[[13, 14]] = True  # 6.5-7.0 s -> event (6.5, 7.5)
    pred = [(2.0, 3.5), (6.5, 7.5)]
    true = [(1.2, 4.0),  # first positive inside at 2.0 s -> 0.8
            (3.2, 5.0),  # no positive decision inside, but (2.0, 3.5) is on at 3.2 -> 0
            (8.0, 9.0),  # nothing -> missed
            (6.5, 8.0),  # positive at its very start -> 0
            (1.0, 2.0)]  # 2.0 s is the excluded end, (2.0, 3.5) does not start before -> missed
    got = onset_latencies(true, times, decisions, pred)
    assert got[0] == pytest.approx(0.8)
    assert got[1:] == [0.0, None, 0.0, None]
    with pytest.raises(ValueError, match="differ in shape"):
        onset_latencies(true, times[:3], decisions, pred)


def test_latency_summary_by_hand() -> None:
    # detected 0, 0.2, 0.5, 1.0, 2.0: median 0.5; p90 at rank 0.9 * 4 = 3.6 -> 1.0 + 0.6 * 1.0
    s = latency_summary([0.0, 0.2, None, 0.5, 1.0, 2.0])
    assert (s["events"], s["detected"], s["missed"]) == (6, 5, 1)
    assert s["median_s"] == pytest.approx(0.5) and s["p90_s"] == pytest.approx(1.6)
    assert latency_summary([None, None]) == {"events": 2, "detected": 0, "missed": 2,
                                             "median_s": None, "p90_s": None}


def _timed(case: str, duration_s: int, true, positive) -> CasePrediction:
    """One prediction per second; ``positive`` lists the positive seconds."""
    times = np.arange(duration_s, dtype=float)
    decisions = np.isin(np.arange(duration_s), positive)
    labels = np.array([any(a <= t < b for a, b in true) for t in times], np.uint8)
    events = []  # the runs of decisions, each to one second after its last positive
    for i in np.flatnonzero(decisions):
        if events and events[-1][1] == i:
            events[-1] = (events[-1][0], float(i + 1))
        else:
            events.append((float(i), float(i + 1)))
    return CasePrediction(case, "m", times, np.arange(duration_s), labels,
                          np.where(decisions, 0.9, 0.1), decisions, events, 0.0)


def _three_cases(tags=None):
    tags = tags or {}
    true = {"a": [(10.0, 20.0)], "b": [], "c": [(5.0, 10.0), (20.0, 25.0)]}
    preds = [_timed("a", 60, true["a"], [*range(12, 22), 40, 41]),  # (12, 22), (40, 42)
             _timed("b", 120, true["b"], [30, 31, 32, 80]),  # (30, 33), (80, 81)
             _timed("c", 30, true["c"], [3, 4, 5, 6, 7, 26, 27])]  # (3, 8), (26, 28)
    duration = {"a": 60, "b": 120, "c": 30}
    truth = {k: _truth(k, v, n_frames=10 * duration[k], tags=tags.get(k))
             for k, v in true.items()}
    return preds, truth


def test_bleeding_free_cases_leave_the_index_and_count_as_false_alarms() -> None:
    preds, truth = _three_cases()
    assert [p.events for p in preds] == [[(12.0, 22.0), (40.0, 42.0)],
                                         [(30.0, 33.0), (80.0, 81.0)],
                                         [(3.0, 8.0), (26.0, 28.0)]]
    assert truth["b"].duration_s == 120.0 and truth["b"].bleeding_free
    s = summarize(preds, truth)
    # index over a and c only: count errors 1 (of 1) and 0 (of 2); durations |12-10| of 10
    # and |7-10| of 10. Were b counted, the pooled count error would be (1+2+0)/3 = 1.
    assert s["index"] == pytest.approx(
        {"cases": 3, "cases_indexed": 2, "cases_bleeding_free": 1,
         "count_error_mean": 0.5, "duration_error_s_mean": 2.5,
         "count_error_rel": 0.5, "duration_error_rel": 0.25,
         "count_error_pooled_rel": 0.3333, "duration_error_pooled_rel": 0.25}, abs=1e-4)
    # bleeding-free: 2 alarms in 120 s = 60/h. Non-bleeding time 50 + 120 + 20 = 190 s with
    # alarms (40, 42) in a, both in b, (26, 28) in c -> 4 * 3600 / 190.
    assert s["false_alarms"] == pytest.approx(
        {"bleeding_free_cases": 1, "bleeding_free_hours": 0.033333,
         "bleeding_free_false_alarms": 2, "per_hour_bleeding_free": 60.0,
         "non_bleeding_hours": 0.052778, "non_bleeding_false_alarms": 4,
         "per_hour_non_bleeding": 75.7895}, abs=1e-4)
    # latencies: a 12 - 10 = 2; c (3, 8) already on at 5 -> 0; c (20, 25) missed.
    # median of {0, 2} = 1; p90 = 0 + 0.9 * 2
    assert s["onset"] == pytest.approx({"events": 3, "detected": 2, "missed": 1,
                                        "median_s": 1.0, "p90_s": 1.8})
    # a group of bleeding-free cases alone: no index, no latency, still false alarms
    only_b = summarize([preds[1]], truth)
    assert only_b["index"]["cases_indexed"] == 0
    assert all(only_b["index"][k] is None for k in (
        "count_error_mean", "duration_error_s_mean", "count_error_rel", "duration_error_rel",
        "count_error_pooled_rel", "duration_error_pooled_rel"))
    assert only_b["onset"]["events"] == 0 and only_b["onset"]["median_s"] is None
    assert only_b["false_alarms"]["per_hour_bleeding_free"] == pytest.approx(60.0)
    # no bleeding-free case: that rate is undefined, not 0
    assert summarize([preds[0]], truth)["false_alarms"]["per_hour_bleeding_free"] is None


def test_metrics_document_pools_per_tag_and_shows_bleeding_free_cases() -> None:
    preds, truth = _three_cases({"a": {"look": "x"}, "b": {"look": "y"},
                                 "c": {"look": "x", "form": "ooze"}})
    cases = [truth[k] for k in ("a", "b", "c")]
    doc = metrics_document(["m"], cases, preds, [0, 1, 0], folds=2, fold_seed=3)
    assert (doc["folds"], doc["fold_seed"]) == (2, 3)
    assert sorted(doc["per_tag"]) == ["form", "look"]
    assert sorted(doc["per_tag"]["look"]) == ["x", "y"] and list(doc["per_tag"]["form"]) == ["ooze"]
    x = doc["per_tag"]["look"]["x"]["m"]  # cases a and c
    assert x["index"]["cases"] == 2 and x["false_alarms"]["bleeding_free_cases"] == 0
    assert x["events"]["iou_0.5"]["n_true"] == 3
    y = doc["per_tag"]["look"]["y"]["m"]  # case b alone
    assert y["false_alarms"]["per_hour_bleeding_free"] == pytest.approx(60.0)
    assert doc["per_fold"]["1"]["m"]["index"]["cases_bleeding_free"] == 1
    rows = {c["case_id"]: c for c in doc["cases"]}
    assert rows["b"]["bleeding_free"] and not rows["a"]["bleeding_free"]
    assert rows["b"]["duration_s"] == 120.0 and rows["c"]["tags"] == {"look": "x", "form": "ooze"}
    b, c = rows["b"]["models"]["m"], rows["c"]["models"]["m"]
    assert (b["pred_count"], b["false_alarms"], b["onset_latencies_s"]) == (2, 2, [])
    assert b["count_error_rel"] is None and b["duration_error_rel"] is None
    assert (c["false_alarms"], c["onset_latencies_s"]) == (1, [0.0, None])
    assert c["duration_error_rel"] == pytest.approx(0.3)
    assert rows["a"]["models"]["m"]["onset_latencies_s"] == [2.0]
    md = markdown_report({**doc, "data": {"description": "three cases"},
                          "post_processing": {"threshold": 0.5}})
    assert "| b | b | 2 | 0 (bleeding-free) | 0.0 | 2 | 4.0 | 2 | – |" in md
    assert "| c | c | 1 | 2 | 10.0 | 2 | 7.0 | 1 | 0.00 (1 missed) |" in md
    # pooled alarm row: 1 bleeding-free case, 0.033 h, 60/h, 75.79/h, 3 events, 1 missed
    assert "| m | 1 | 0.033 | 60.000 | 75.790 | 3 | 1 | 1.000 | 1.800 |" in md
    assert "## Per look" in md and "| y | m | 1 | 0.033 | 60.000 |" in md
    untagged = metrics_document(["m"], [_truth(k, truth[k].events, len(truth[k].frame_labels))
                                        for k in ("a", "b", "c")], preds, [0, 0, 0])
    assert untagged["per_tag"] == {} and "## Per " not in markdown_report(
        {**untagged, "data": {"description": "x"}, "post_processing": {}}).replace(
            "## Per fold", "").replace("## Per case", "")


def test_load_cases_reads_tags_and_rejects_bad_ones(tmp_path) -> None:
    import json

    def write(name: str, **extra) -> None:
        d = tmp_path / name
        d.mkdir()
        (d / "video.mp4").write_bytes(b"")
        (d / "labels.json").write_text(json.dumps(
            {"fps": 25, "frame_labels": [0] * 100, "events": [], **extra}))

    write("c0", tags={"look": "held-out palette"})
    write("c1")
    cases = load_cases(tmp_path)
    assert [c.tags for c in cases] == [{"look": "held-out palette"}, {}]
    assert cases[0].duration_s == 4.0 and cases[0].bleeding_free
    write("c2", tags={"look": 3})
    with pytest.raises(InputError, match=r"c2/labels\.json.*tags"):
        load_cases(tmp_path)


@pytest.mark.parametrize(("arch", "frames", "says"), [
    ("amagi_tiny_tg", 5, "A temporal segmenter sees the clip frames around it"),
    ("amagi_tiny", 1, "draws on one frame, the clip's centre"),
    ("someone_elses_net", 1, "draws on one frame, the clip's centre"),
])
def test_guidance_table_says_how_many_frames_the_segmenter_sees(arch, frames, says) -> None:
    from amagi_plugin.evaluation.report import _guidance_lines

    g = {"auroc": 0.7, "ap": 0.4, "area_bleeding": 0.01, "area_normal": 0.002, "frames": 9}
    doc = {"models": ["AMAGI", "SlowFast"], "pooled": {"AMAGI": {"guidance": g}, "SlowFast": {}},
           "model_info": {"AMAGI": {"arch": arch}, "SlowFast": {"arch": "slowfast_tiny"}}}
    text = "\n".join(_guidance_lines(doc))
    assert says in text and f"| AMAGI | {frames} | 0.700 |" in text and "SlowFast" not in text


def test_frames_are_scored_by_the_size_of_the_visible_bleeding() -> None:
    from amagi_plugin.evaluation.report import SIZE_BINS

    # 8 instants of one case of 10,000-pixel frames, 3 of them not bleeding. Visible active
    # pixels of the 5 bleeding ones: 0 (hidden), 3 (0.03 %), 12 (0.12 %), 60 and 900 (0.6 %
    # and 9 %: the largest bin); none between 0.15 and 0.5 %.
    labels = [0, 0, 0, 1, 1, 1, 1, 1]
    probs = [0.1, 0.6, 0.3, 0.2, 0.7, 0.4, 0.9, 0.8]
    pixels = [0, 0, 0, 0, 3, 12, 60, 900]
    p = _pred("a", labels, probs, [])
    p.guidance = np.array([0.0, 0.2, 0.1, 0.3, 0.0, 0.05, 0.4, 0.5])
    truth = TruthCase("a", "a", Path("/nonexistent"), 10.0, np.asarray(labels, np.uint8), [],
                      {}, np.asarray(pixels) / 10_000)
    b = summarize([p], {"a": truth})["by_size"]
    assert list(b) == [name for name, _ in SIZE_BINS]
    hidden, tiny, small, mid, large = (b[name] for name, _ in SIZE_BINS)
    # negatives 0.1, 0.6, 0.3: the hidden instant (0.2) beats one, 0.7 all three,
    # 0.4 two; the last bin holds 0.9 and 0.8, both above every negative
    assert [r["instants"] for r in (hidden, tiny, small, mid, large)] == [1, 1, 1, 0, 2]
    assert (hidden["auroc"], tiny["auroc"], small["auroc"]) == pytest.approx((1 / 3, 1.0, 2 / 3),
                                                                             abs=1e-4)
    assert mid["auroc"] is None and mid["recall"] is None and large["auroc"] == 1.0
    # decisions p >= 0.5: the hidden and 0.12 % instants are missed, the others found
    assert [r["recall"] for r in (hidden, tiny, small, large)] == [0.0, 1.0, 0.0, 1.0]
    # the map alone: negatives 0.0, 0.2, 0.1; hidden 0.3 beats all, tiny 0.0 ties one (1/6)
    assert (hidden["guidance_auroc"], tiny["guidance_auroc"]) == pytest.approx((1.0, 1 / 6),
                                                                               abs=1e-4)
    doc = {"ious": [0.1, 0.25, 0.5], "models": ["m"], "folds": 1,
           "data": {"description": "one case"}, "post_processing": {"threshold": 0.5},
           "pooled": {"m": summarize([p], {"a": truth})}, "per_fold": {}, "cases": []}
    md = markdown_report(doc)
    assert "## By visible bleeding size" in md and "none visible (1 instants)" in md
    assert "| m | AUROC 0.333, recall 0 % | AUROC 1.000, recall 100 % |" in md
    assert "| m: map alone | AUROC 1.000 | AUROC 0.167 |" in md
    # ground truth without visible sizes: no such table
    plain = summarize([p], {"a": _truth("a", [], 8)})
    assert "by_size" not in plain


def test_load_cases_reads_the_visible_bleeding_and_rejects_impossible_counts(tmp_path) -> None:
    import json

    def write(name: str, **extra) -> None:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        (d / "video.mp4").write_bytes(b"")
        (d / "labels.json").write_text(json.dumps(
            {"fps": 25, "frame_labels": [0, 1, 1], "events": [], "width": 20, "height": 10,
             **extra}))

    write("c0", active_pixels=[0, 20, 200])
    write("c1")
    c0, c1 = load_cases(tmp_path)
    np.testing.assert_allclose(c0.active_fraction, [0.0, 0.1, 1.0])
    assert c1.active_fraction is None
    for bad, says in (([0, 1], "2 values for 3 frame labels"), ([0, 201, 0], "lie in"),
                      ([0, -1, 0], "lie in")):
        write("c0", active_pixels=bad)
        with pytest.raises(InputError, match=rf"c0/labels\.json.*{says}"):
            load_cases(tmp_path)
