"""``amagi process`` with the bundled demo model on a generated video with known events.

The case comes from a seed the demo never saw in training (``amagi synth --seed 424242``,
training scene ranges); the seed was fixed before the model was trained, not picked after.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amagi_plugin.evaluation.metrics import interval_iou
from dicom_io.sr import read_bleeding_report
from dicom_io.validate import run_dciodvfy
from tests.amagi_plugin.cli_support import synth_in_fresh_process
from tests.amagi_plugin.test_process import KNOWN_SR_WARNINGS, _modality

SEED = 424242


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

    # Count exact; total duration within 25 % of the truth plus 1 s (the 1 s opening and
    # closing move each boundary on a 0.1 s grid); every true event matched at IoU >= 0.5.
    # (Tolerances fixed in advance, with the seed.)
    assert doc["event_count"] == len(truth), (found, truth)
    true_total = sum(e - s for s, e in truth)
    assert abs(doc["total_bleeding_s"] - true_total) <= 0.25 * true_total + 1.0, (found, truth)
    for t in truth:
        assert max(interval_iou(f, t) for f in found) >= 0.5, (t, found)

    files = sorted((out / "dicom").glob("*.dcm"))
    modalities = [_modality(f) for f in files]
    # one SR, one SEG (masks on every key frame), a key image per event, the report, one KOS
    assert sorted(modalities) == sorted(["SR", "SEG", "KO", "DOC"] + ["ES"] * len(truth))
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
