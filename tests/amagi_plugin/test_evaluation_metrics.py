"""Evaluation metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from amagi_plugin.evaluation import (
    CasePrediction,
    TruthCase,
    auroc,
    average_precision,
    event_counts,
    frame_counts,
    index_errors,
    interval_iou,
    markdown_report,
    prf,
    summarize,
)


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


def _truth(case: str, events) -> TruthCase:
    from pathlib import Path

    return TruthCase(case, case, Path("/nonexistent"), 10.0, np.zeros(1, np.uint8), events)


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
