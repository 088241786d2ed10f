"""The demo build's bookkeeping: a resumed build reports the time its stages took."""

from __future__ import annotations

import json
import time
from pathlib import Path

from amagi_plugin.demo_model import StageTimes


def test_resumed_build_keeps_the_recorded_stage_times(tmp_path: Path) -> None:
    path = tmp_path / "timings.json"
    first = StageTimes(path)
    first.record("synth", time.perf_counter() - 100.0, ran=True)
    first.record("train_seg", time.perf_counter() - 20.0, ran=True)
    assert json.loads(path.read_text())["synth"] >= 100.0
    # The next run finds both stages done and skips them: their times stay.
    resumed = StageTimes(path)
    resumed.record("synth", time.perf_counter(), ran=False)
    resumed.record("train_seg", time.perf_counter() - 30.0, ran=True)  # ran again
    resumed.record("evaluate", time.perf_counter() - 5.0, ran=True)
    report = resumed.report()
    assert 100.0 <= report["synth"] < 101.0
    assert 30.0 <= report["train_seg"] < 31.0
    assert report["total"] == round(report["synth"] + report["train_seg"] + report["evaluate"], 1)


def test_stage_skipped_but_never_timed_is_reported_as_unknown(tmp_path: Path) -> None:
    times = StageTimes(tmp_path / "timings.json")
    times.record("synth", time.perf_counter(), ran=False)
    times.record("evaluate", time.perf_counter() - 2.0, ran=True)
    report = times.report()
    assert report["synth"] is None and report["evaluate"] >= 2.0 and report["total"] is None
