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

No model built so far passes (measured on these cases, 2-core CPU, sessions 13-29): v3
(``amagi_tiny``, bundled until session 29) separates the visible bleeding with AUROC 0.58 and
raises 9 false alarms on the still blood (it finds 67 % of the events); the ``evidence`` build
(``amagi_tiny_tge``, not shipped) reaches AUROC 0.92 and no false alarm, but at its operating
point finds 3 of 24 events; the same build with a temporal refiner (session 14, not shipped)
reaches 0.89 and finds 14 of 24, but raises 3 false alarms on the still blood. The
``evidence-peaks`` build (session 20, ``amagi_tiny_tge`` with a segmenter trained on its own
false peaks, at the authors' point) reaches 0.96 and 1 false alarm, but finds 6 of 24 events.
The ``evidence-probe`` build 9.1 (session 29: the neighbourhood probe at the map's peaks, its
point chosen by ``amagi calibrate``) reaches 0.94 and no false alarm, and finds 7 of 24
events, one short of the bound. 9.2 (session 32, bundled since: 9.1's networks at the point
``amagi calibrate`` chose on 9.1's validation cases once it also tried hold thresholds,
0.8 held to 0.65, fixed before the gate ran) reaches 0.94, no false alarm, and finds 8 of 24:
the first bundled model to pass. 9.3 (session 42, bundled since: the same recipe at a GPU's
budget, its networks trained on the lent H200, at the point its own build calibrated, 0.8
held to 0.6) reaches 0.96, no false alarm, and finds 14 of 24.

The whole gate takes 9.5 minutes of the suite's 20 (session 18), so a bundled model is
identified by the SHA-256 of its ``model.json`` and checkpoints (:func:`bundled_digest`) and
the gate is not rerun for files already measured:

- a bundled model that ships with its gate record (``gate.json`` beside it: the digest and
  both ``amagi evaluate`` documents, written by ``python -m tests.amagi_plugin.test_demo_gate
  --write-record``) is checked against the bounds from that record, and the record must
  reproduce: the first held-out-look case is generated and evaluated again, and its
  per-case results must equal the recorded ones;
- any other bundled model (a new file, a changed operating point in ``model.json``, a stale
  record) runs the whole gate, and must pass it;
- a bundled model measured to fail (:data:`MEASURED_FAILING`: its digest and the bounds it
  misses) must fail exactly those bounds, and is then an expected failure (shipped because it
  beats the model it replaced on every other figure; models/weights/demo/README.md).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from amagi_plugin.cli import Context, main
from amagi_plugin.modelspec import DEMO_DIR
from tests.amagi_plugin.cli_support import (
    DEMO_9_3,
    assert_first_case_reproduces,
    bundled_digest,
    expect_bounds,
    synth_in_fresh_process,
)

LOOKS = ("heldout", 140001, 6)
STILL = ("static", 140002, 3)
#: Bundled models measured to fail, by digest: the bounds each misses (:func:`gate_failures`).
#: The bundled v3 (commit acdb1b1, measured in session 13, no record) and 9.1 (session 29:
#: "7 of 24 events found (IoU 0.1), fewer than a third") are gone; 9.2 passed (session 32),
#: and 9.3 passes and ships with its record (session 42).
MEASURED_FAILING: dict[str, list[str]] = {}
#: The gate's record of a bundled model, beside it.
RECORD = "gate.json"


def test_the_record_and_the_mark_follow_the_bundled_files(tmp_path: Path) -> None:
    """The gate's record (and an expected-failure mark, where there is one) names the files
    that were measured, and only those."""
    for path in [DEMO_DIR / "model.json", *DEMO_DIR.glob("*.pth"), DEMO_DIR / RECORD]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    assert bundled_digest(tmp_path) == bundled_digest() == DEMO_9_3
    assert recorded_gate(tmp_path) is not None  # 9.3 ships with its record
    manifest = json.loads((tmp_path / "model.json").read_text())
    manifest["operating_point"] = {"threshold": 0.6}  # a new point is a new model
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    assert bundled_digest(tmp_path) not in (DEMO_9_3, *MEASURED_FAILING)
    assert recorded_gate(tmp_path) is None


def _generate(root: Path, domain: str, seed: int, cases: int) -> None:
    """``cases`` cases of one gate set in ``root/domain`` (kept if already complete)."""
    if not (root / domain / "cases.json").is_file():
        synth_in_fresh_process(root, "-od", domain, "--cases", str(cases), "--seed", str(seed),
                               "--domain", domain, "--duration-s", "60", "--size", "160x128",
                               "--fps", "30", "--formats", "dicom", "--overwrite")


def _evaluate(tmp_path: Path, domain: str, seed: int, cases: int,
              model_dir: Path = DEMO_DIR) -> dict:
    """Generate ``cases`` cases of one gate set and run ``amagi evaluate`` on them (the main
    model only: the bounds are on AMAGI, not on its baseline)."""
    _generate(tmp_path, domain, seed, cases)
    ctx = Context(stdout=io.StringIO(), stderr=io.StringIO(), environ={}, cwd=tmp_path)
    code = main(["evaluate", "--data", domain, "-od", f"eval_{domain}", "--model-dir",
                 str(model_dir), "--no-baseline", "--folds", "1", "--no-progress"], ctx=ctx)
    if code != 0:  # not the expected failure: a broken run must not pass as one
        raise AssertionError(f"amagi evaluate failed: {ctx.stderr.getvalue()}")
    return json.loads((tmp_path / f"eval_{domain}" / "metrics.json").read_text())


def gate_failures(looks: dict, still: dict) -> list[str]:
    """The bounds this gate sets, checked on the two ``amagi evaluate`` documents: one line
    per bound missed (empty: the model passes)."""
    amagi = looks["pooled"]["AMAGI"]
    visible = amagi["by_size"][">= 0.5 %"]
    failures = []
    if not visible["instants"]:
        failures.append("the held-out-look cases have no instant of visible bleeding")
    elif visible["auroc"] < 0.80:
        failures.append(f"visible bleeding (>= 0.5 %) AUROC {visible['auroc']} < 0.80")
    found = amagi["events"]["iou_0.1"]
    # counted, not read from the rounded recall (8 of 24 is 0.3333 in the document)
    if 3 * found["tp"] < found["n_true"]:
        failures.append(f"{found['tp']:g} of {found['n_true']:g} events found (IoU 0.1), "
                        "fewer than a third")
    alarms = still["pooled"]["AMAGI"]["false_alarms"]
    if alarms["bleeding_free_cases"] != STILL[2]:
        failures.append(f"{alarms['bleeding_free_cases']} bleeding-free cases, not {STILL[2]}")
    if alarms["bleeding_free_false_alarms"] > 1:
        failures.append(f"{alarms['bleeding_free_false_alarms']} false alarms on the still "
                        "blood, more than 1")
    return failures


def run_gate(tmp_path: Path, model_dir: Path = DEMO_DIR) -> dict:
    """The whole gate on the model in ``model_dir``: its record (see the module docstring).
    Gate sets already complete in ``tmp_path`` are used as they are."""
    return {"bundle": bundled_digest(model_dir),
            "looks": _evaluate(tmp_path, *LOOKS, model_dir=model_dir),
            "still": _evaluate(tmp_path, *STILL, model_dir=model_dir)}


def recorded_gate(folder: Path = DEMO_DIR) -> dict | None:
    """The gate record of the model in ``folder`` if it is this model's (same digest)."""
    path = folder / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("bundle") == bundled_digest(folder) else None


def test_the_bounds_are_read_from_the_evaluation_documents() -> None:
    def doc(auroc, instants, recall, cases, alarms):
        return {"pooled": {"AMAGI": {
            "by_size": {">= 0.5 %": {"auroc": auroc, "instants": instants}},
            "events": {"iou_0.1": {"recall": recall, "tp": recall * 24, "n_true": 24}},
            "false_alarms": {"bleeding_free_cases": cases,
                             "bleeding_free_false_alarms": alarms}}}}

    assert gate_failures(doc(0.80, 10, 1 / 3, 0, 0), doc(None, 0, 0, 3, 1)) == []
    exactly_a_third = doc(0.80, 10, 1 / 3, 0, 0)  # as amagi evaluate writes it: rounded
    exactly_a_third["pooled"]["AMAGI"]["events"]["iou_0.1"].update(recall=0.3333, tp=8.0)
    assert gate_failures(exactly_a_third, doc(None, 0, 0, 3, 0)) == []
    failed = gate_failures(doc(0.79, 10, 0.3, 0, 0), doc(None, 0, 0, 2, 2))
    assert len(failed) == 4 and "AUROC 0.79" in failed[0] and "7.2 of 24" in failed[1]
    assert gate_failures(doc(None, 0, 0.5, 0, 0), doc(None, 0, 0, 3, 0)) == [
        "the held-out-look cases have no instant of visible bleeding"]


def test_a_record_counts_only_for_the_files_it_was_measured_on(tmp_path: Path) -> None:
    for name in ("model.json", "x.pth"):
        (tmp_path / name).write_text(name)
    assert recorded_gate(tmp_path) is None  # none written
    record = {"bundle": bundled_digest(tmp_path), "looks": {}, "still": {}}
    (tmp_path / RECORD).write_text(json.dumps(record))
    assert recorded_gate(tmp_path) == record
    (tmp_path / "x.pth").write_text("retrained")
    assert recorded_gate(tmp_path) is None


@pytest.mark.slow
def test_demo_model_finds_active_bleeding_not_red_on_unseen_looks(tmp_path: Path) -> None:
    record = recorded_gate()
    if record is None:  # not measured: the whole gate
        record = run_gate(tmp_path)
    else:  # measured: the record must be this model's figures on these cases
        domain, seed, _ = LOOKS
        assert_first_case_reproduces(_evaluate(tmp_path, domain, seed, 1), record["looks"])
    expect_bounds(gate_failures(record["looks"], record["still"]), MEASURED_FAILING,
                  "issue #14's gate (figures in the module docstring)", record["bundle"])


def _write_record(argv: list[str]) -> int:
    """``python -m tests.amagi_plugin.test_demo_gate --write-record [--data DIR] [MODEL_DIR]``:
    run the whole gate once on a model folder and write its record there (printing the
    bounds it misses, if any). ``--data`` keeps the generated sets (and reuses complete
    ones); ``--generate-only`` generates them and stops (they do not depend on the model)."""
    import argparse
    import tempfile

    p = argparse.ArgumentParser(prog="python -m tests.amagi_plugin.test_demo_gate")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write-record", action="store_true")
    mode.add_argument("--generate-only", action="store_true")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("model_dir", nargs="?", type=Path, default=DEMO_DIR)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.data or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        if args.generate_only:
            for gate_set in (LOOKS, STILL):
                _generate(root, *gate_set)
            return 0
        record = run_gate(root, args.model_dir.resolve())
    (args.model_dir / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    failures = gate_failures(record["looks"], record["still"])
    print("\n".join(failures) or "passes", "-", args.model_dir / RECORD)
    return 1 if failures else 0


if __name__ == "__main__":
    import sys

    sys.exit(_write_record(sys.argv[1:]))
