"""``amagi process`` with the bundled demo model on a generated video with known events.

The case comes from a seed the demo never saw in training (``amagi synth --seed 424242``,
the first training looks, v1-v3's); the seed was fixed before v3 was trained, not picked after.
The outputs (SR, SEG, key images, report, KOS) must be valid and agree with what was found
whatever the model finds; the accuracy bounds hold for the bundled model unless it was
measured to miss them (:data:`MEASURED_MISSES`, by the bundled files' digest).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amagi_plugin.evaluation.metrics import interval_iou
from dicom_io.sr import read_bleeding_report
from dicom_io.validate import run_dciodvfy
from tests.amagi_plugin.cli_support import DEMO_9_3, expect_bounds, synth_in_fresh_process
from tests.amagi_plugin.test_process import KNOWN_SR_WARNINGS, _modality

SEED = 424242
#: Bundled models measured to miss this case's bounds, by digest. 9.1 (session 29; trained on
#: the randomised looks, not these) found the second of the two events and missed the first
#: (12.7-20.8 s), with no false alarm; 9.2 (its networks with a hold threshold, session 32)
#: and 9.3 (the same recipe trained at a GPU's budget, session 42) miss the same bounds.
MEASURED_MISSES = {
    DEMO_9_3: [
        "1 events found, 2 true", "total duration off by more than 25 % + 1 s",
        "true event 1 unmatched (IoU < 0.5)"],
}


def accuracy_failures(found: list[tuple[float, float]], truth: list[tuple[float, float]]
                      ) -> list[str]:
    """Count exact; total duration within 25 % of the truth plus 1 s (the 1 s opening and
    closing move each boundary on a 0.1 s grid); every true event matched at IoU >= 0.5.
    (Tolerances fixed in advance, with the seed.) One line per bound missed."""
    failures = []
    if len(found) != len(truth):
        failures.append(f"{len(found)} events found, {len(truth)} true")
    true_total = sum(e - s for s, e in truth)
    if abs(sum(e - s for s, e in found) - true_total) > 0.25 * true_total + 1.0:
        failures.append("total duration off by more than 25 % + 1 s")
    failures += [f"true event {k} unmatched (IoU < 0.5)" for k, t in enumerate(truth, 1)
                 if max((interval_iou(f, t) for f in found), default=0.0) < 0.5]
    return failures


def test_accuracy_failures_name_each_bound() -> None:
    truth = [(10.0, 20.0), (30.0, 35.0)]
    assert accuracy_failures([(10.2, 19.8), (30.1, 35.0)], truth) == []
    assert accuracy_failures([(31.0, 35.0)], truth) == [
        "1 events found, 2 true", "total duration off by more than 25 % + 1 s",
        "true event 1 unmatched (IoU < 0.5)"]
    assert accuracy_failures([], truth)[-2:] == ["true event 1 unmatched (IoU < 0.5)",
                                                 "true event 2 unmatched (IoU < 0.5)"]


@pytest.mark.integration
@pytest.mark.slow
def test_demo_model_finds_the_events_of_a_generated_video(run_cli, tmp_path: Path) -> None:
    synth_in_fresh_process(tmp_path, "-od", "data", "--cases", "1", "--seed", str(SEED),
                           "--duration-s", "40", "--size", "160x128", "--fps", "30",
                           "--formats", "dicom", "--domain", "train")
    case = tmp_path / "data" / f"s{SEED}_c0000"
    truth = [(e["start_s"], e["end_s"]) for e in
             json.loads((case / "labels.json").read_text())["events"]]
    assert truth, "the generated case has no bleeding event"

    out = tmp_path / "out"
    r = run_cli("process", str(case / "video.dcm"), "-od", str(out), "--no-progress")
    assert r.code == 0, r.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["model"]["weights"] == "demo-synthetic"
    found = [(e["start_s"], e["end_s"]) for e in doc["events"]]

    files = sorted((out / "dicom").glob("*.dcm"))
    modalities = [_modality(f) for f in files]
    # one SR, one SEG (masks on every key frame), a key image per event found, the report, one KOS
    assert sorted(modalities) == sorted(["SR", "SEG", "KO", "DOC"] + ["ES"] * len(found))
    for f in files:
        v = run_dciodvfy(f)
        assert v.errors == [], (f, v.errors)
        unexpected = [w for w in v.warnings if not any(k in w for k in KNOWN_SR_WARNINGS)]
        assert unexpected == [], (f, unexpected)
    report = read_bleeding_report(files[modalities.index("SR")])
    assert report.index.event_count == doc["event_count"]
    assert report.index.total_duration_s == doc["total_bleeding_s"]
    assert [(e.start_s, e.end_s) for e in report.events] == found
    assert report.algorithm.weights.value == "demo-synthetic"
    assert "not for clinical use" in report.algorithm.disclaimer.lower()
    assert doc["event_count"] == len(found)
    expect_bounds(accuracy_failures(found, truth), MEASURED_MISSES, "this case's bounds")


@pytest.mark.integration
@pytest.mark.slow
def test_demo_model_raises_no_alarm_on_still_blood(run_cli, tmp_path: Path) -> None:
    """Issue #14: none in a bleeding-free case full of still blood, through ``amagi process``
    as a user runs it. The case is the second of the gate's still-blood set (``--domain static
    --seed 140002``, fixed with the gate before any model ran on it): v3, which found red,
    raised 5 alarms on it (session 29); 9.1, 9.2 and 9.3 raise none on any of the three."""
    synth_in_fresh_process(tmp_path, "-od", "data", "--cases", "2", "--only", "1",
                           "--seed", "140002", "--domain", "static", "--duration-s", "60",
                           "--size", "160x128", "--fps", "30", "--formats", "dicom")
    case = tmp_path / "data" / "s140002_c0001"
    labels = json.loads((case / "labels.json").read_text())
    assert labels["events"] == [] and labels["tags"]["still_blood"], labels["tags"]
    r = run_cli("process", str(case / "video.dcm"), "-od", str(tmp_path / "out"),
                "--no-progress")
    assert r.code == 0, r.stderr
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["model"]["weights"] == "demo-synthetic"
    assert doc["event_count"] == 0, doc["events"]
