"""What several tests of the CLI and the bundled demo model share: ``amagi synth`` in a fresh
process, the bundled files' digest, the check that a recorded evaluation reproduces, and how a
bundled model measured to miss a test's bounds is held to exactly that miss."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from amagi_plugin.modelspec import DEMO_DIR


def synth_in_fresh_process(cwd: Path, *argv: str) -> None:
    """``amagi synth`` in its own process, as the demo build runs it (through its CLI)."""
    r = subprocess.run([sys.executable, "-m", "amagi_plugin.cli", "synth", *argv,
                        "--no-progress"], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr


def assert_first_case_reproduces(again: dict, recorded: dict) -> None:
    """The first case of an ``amagi evaluate`` document, run again, gives the recorded
    results: the same post-processing and truth, the same number of events at the same places
    (within one 0.1 s step of the prediction grid), and the same mean probability."""
    assert again["post_processing"] == recorded["post_processing"]
    mine, theirs = again["cases"][0], recorded["cases"][0]
    assert mine["case_id"] == theirs["case_id"]
    assert mine["true_events"] == theirs["true_events"]
    for model in recorded["models"]:
        a, b = mine["models"][model], theirs["models"][model]
        assert a["pred_count"] == b["pred_count"], model
        assert len(a["events"]) == len(b["events"]), model
        for ea, eb in zip(a["events"], b["events"], strict=True):
            assert ea == pytest.approx(eb, abs=0.11), model
        # Run-to-run variation of 2.2e-3 was seen on this mean over 300 predictions while the
        # encoded video still varied between runs (see test_same_seed_writes_identical_videos).
        assert a["mean_probability"] == pytest.approx(b["mean_probability"], abs=1e-2), model


def bundled_digest(folder: Path = DEMO_DIR) -> str:
    """SHA-256 of a bundled model: its ``model.json`` and every checkpoint beside it."""
    h = hashlib.sha256()
    for path in [folder / "model.json", *sorted(folder.glob("*.pth"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


#: The bundled demo model 9.3 (session 42: the networks trained on the lent H200 in session 41,
#: the probe on the CPU, at the point its own build calibrated): :func:`bundled_digest` of its
#: files. 9.2 (session 32, bundled until session 42) was
#: e824b2c3da73006eff0b979a240c2dbe9fe54f0c28e55acd6be4863d4110868b.
DEMO_9_3 = "c65328285f15d4f5444565f69dc75142aeba596d85d1404147fbcdf769d6cfae"


def expect_bounds(failures: list[str], measured: Mapping[str, list[str]], what: str,
                  digest: str | None = None) -> None:
    """The bundled model (``digest``, default :func:`bundled_digest`) meets a test's bounds
    (``failures`` empty), or, where ``measured`` records what it was measured to miss, misses
    exactly that (no worse and no better) and the test is an expected failure."""
    known = measured.get(digest or bundled_digest())
    if known is not None:
        assert failures == known
        pytest.xfail(f"the bundled model was measured to miss {what}: " + "; ".join(known))
    assert failures == []
