"""The committed demo model: it loads, says what it is, and its recorded metrics reproduce."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from amagi_plugin.cli import Context, main
from amagi_plugin.modelspec import DEMO_DIR, demo_manifest
from models import build_model, load_checkpoint
from tests.amagi_plugin.cli_support import assert_first_case_reproduces, synth_in_fresh_process


def _manifest() -> dict:
    return demo_manifest(DEMO_DIR)


def test_demo_model_loads_and_is_labelled_synthetic() -> None:
    m = _manifest()
    text = m["description"].lower()
    assert "synthetic" in text and "not for clinical use" in text
    total = 0
    for entry in (m, m["baseline"]):
        path = DEMO_DIR / entry["checkpoint"]
        total += path.stat().st_size
        model = build_model(entry["arch"], **entry.get("build", {}))
        assert load_checkpoint(model, path).ok
    assert total <= 25 * 2**20
    training = json.loads((DEMO_DIR / m["training"]).read_text())
    metrics = json.loads((DEMO_DIR / m["metrics"]).read_text())
    assert "synthetic" in training["notice"]
    assert training["eval_data"]["seed"] != training["train_data"]["seed"]
    assert training["eval_data"]["domain"] != training["train_data"]["domain"]
    assert metrics["data"]["seed"] == training["eval_data"]["seed"]
    assert len(metrics["cases"]) == training["eval_data"]["cases"]


@pytest.mark.slow
def test_recorded_metrics_reproduce_on_a_recorded_case(tmp_path: Path) -> None:
    """Regenerate case 0 of the shortest recorded evaluation set from its recorded seed and
    scene ranges, evaluate both demo models with 'amagi evaluate', and compare with the
    recorded per-case results."""
    m = _manifest()
    training = json.loads((DEMO_DIR / m["training"]).read_text())
    ev = training["eval_data"]
    sets = [(ev, m["metrics"]), *((o, o["metrics"])
                                  for o in training.get("other_eval_data", {}).values())]
    data, metrics = min(sets, key=lambda s: s[0]["duration_s"])  # the first of equals
    recorded = json.loads((DEMO_DIR / metrics).read_text())
    assert recorded["data"]["seed"] == data["seed"]
    ctx = Context(stdout=io.StringIO(), stderr=io.StringIO(), environ={}, cwd=tmp_path)
    synth_in_fresh_process(tmp_path, "-od", "cases", "--cases", "1", "--seed", str(data["seed"]),
                           "--domain", data["domain"], "--duration-s", str(data["duration_s"]),
                           "--size", f"{ev['size'][0]}x{ev['size'][1]}", "--fps", str(ev["fps"]),
                           "--formats", "dicom")
    code = main(["evaluate", "--data", "cases", "-od", "eval", "--model-dir", str(DEMO_DIR),
                 "--folds", "1", "--prediction-hz",
                 str(recorded["post_processing"]["prediction_hz"]), "--no-progress"], ctx=ctx)
    assert code == 0, ctx.stderr.getvalue()
    assert_first_case_reproduces(json.loads((tmp_path / "eval" / "metrics.json").read_text()),
                                 recorded)


def test_make_demo_model_configuration_is_the_committed_one() -> None:
    """``make demo-model DEVICE=cuda`` (the shipped recipe) rebuilds what is committed: its
    configuration equals the recorded one."""
    from amagi_plugin.demo_model import DemoConfig

    training = json.loads((DEMO_DIR / _manifest()["training"]).read_text())
    assert DemoConfig.recipe("shipped").to_json() == training["config"]
