"""Running ``amagi`` commands in a fresh process, for tests that need one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def synth_in_fresh_process(cwd: Path, *argv: str) -> None:
    """``amagi synth`` in its own process, as the demo build runs it (through its CLI)."""
    r = subprocess.run([sys.executable, "-m", "amagi_plugin.cli", "synth", *argv,
                        "--no-progress"], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr


def assert_case_reproduces(mine: dict, theirs: dict, models) -> None:
    """One case of an ``amagi evaluate`` document, run again, gives the recorded results:
    the same truth, the same number of events at the same places (within one 0.1 s step of
    the prediction grid), and the same mean probability."""
    import pytest

    assert mine["case_id"] == theirs["case_id"]
    assert mine["true_events"] == theirs["true_events"]
    for model in models:
        a, b = mine["models"][model], theirs["models"][model]
        assert a["pred_count"] == b["pred_count"], model
        assert len(a["events"]) == len(b["events"]), model
        for ea, eb in zip(a["events"], b["events"], strict=True):
            assert ea == pytest.approx(eb, abs=0.11), model
        # Run-to-run variation of 2.2e-3 was seen on this mean over 300 predictions while the
        # encoded video still varied between runs (see test_same_seed_writes_identical_videos).
        assert a["mean_probability"] == pytest.approx(b["mean_probability"], abs=1e-2), model
