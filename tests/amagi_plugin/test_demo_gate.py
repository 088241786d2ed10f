"""The bundled demo model finds active bleeding, not red, on looks it never saw.

Issue #14's test, pooled over several cases so that one case's luck does not decide it.
The seeds and the bounds were written down (this file, committed) before any model ran on
these cases:

- held-out looks (``amagi synth --domain heldout --seed 140001``, 6 cases x 60 s) and
  bleeding-free video full of still blood (``--domain static --seed 140002``, 3 x 60 s);
- the instants whose visible active bleeding covers at least 0.5 % of the frame are told
  apart from every non-bleeding instant with frame AUROC >= 0.80 (a model that finds red
  fires on the still look-alikes as well and stays near 0.5);
- at most 1 false alarm in the 3 minutes of still-blood video;
- at least a third of the true events found (event recall at IoU 0.1).

The model is read at its own operating point (``model.json``), as ``amagi process`` reads it.

No model built so far passes (measured on these cases, 2-core CPU, session 13): the bundled
v3 (``amagi_tiny``) separates the visible bleeding with AUROC 0.58 and raises 9 false alarms
on the still blood (it finds 67 % of the events); the ``evidence`` build (``amagi_tiny_tge``,
not shipped) reaches AUROC 0.92 and no false alarm, but at its operating point finds 3 of
24 events; the same build with a temporal refiner (session 14, not shipped) reaches 0.89 and
finds 14 of 24, but raises 3 false alarms on the still blood. So the test is expected to
fail, strictly: a model that passes turns it into an
error, and whoever ships that model removes the mark (models/weights/demo/heldout-looks/).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from amagi_plugin.cli import Context, main
from amagi_plugin.modelspec import DEMO_DIR
from tests.amagi_plugin.cli_support import synth_in_fresh_process

LOOKS = ("heldout", 140001, 6)
STILL = ("static", 140002, 3)


def _evaluate(tmp_path: Path, domain: str, seed: int, cases: int) -> dict:
    synth_in_fresh_process(tmp_path, "-od", domain, "--cases", str(cases), "--seed", str(seed),
                           "--domain", domain, "--duration-s", "60", "--size", "160x128",
                           "--fps", "30", "--formats", "dicom")
    ctx = Context(stdout=io.StringIO(), stderr=io.StringIO(), environ={}, cwd=tmp_path)
    code = main(["evaluate", "--data", domain, "-od", f"eval_{domain}", "--model-dir",
                 str(DEMO_DIR), "--folds", "1", "--no-progress"], ctx=ctx)
    if code != 0:  # not the expected failure: a broken run must not pass as one
        pytest.fail(f"amagi evaluate failed: {ctx.stderr.getvalue()}")
    return json.loads((tmp_path / f"eval_{domain}" / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="no demo model yet finds active bleeding on unseen looks within "
                   "these bounds (issue #14; measured in the module docstring)")
def test_demo_model_finds_active_bleeding_not_red_on_unseen_looks(tmp_path: Path) -> None:
    main_model = json.loads((DEMO_DIR / "model.json").read_text())
    looks = _evaluate(tmp_path, *LOOKS)["pooled"]["AMAGI"]
    visible = looks["by_size"][">= 0.5 %"]
    if not visible["instants"]:
        pytest.fail("the held-out-look cases have no instant of visible bleeding")
    assert visible["auroc"] >= 0.80, (main_model["arch"], looks["by_size"])
    assert looks["events"]["iou_0.1"]["recall"] >= 1 / 3, looks["events"]
    still = _evaluate(tmp_path, *STILL)["pooled"]["AMAGI"]["false_alarms"]
    assert still["bleeding_free_cases"] == STILL[2]
    assert still["bleeding_free_false_alarms"] <= 1, still
