"""``amagi train seg|clip`` and ``amagi evaluate`` end to end on tiny synthetic data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from amagi_plugin.cli import Context, main
from amagi_plugin.errors import ExitCode
from amagi_plugin.evaluation import auroc, event_counts, frame_counts, prf
from models import build_model, load_checkpoint, read_checkpoint

SYNTH = ["--seed", "11", "--size", "80x64", "--fps", "30", "--no-progress"]


def _run(tmp: Path, *argv: str) -> tuple[int, str, str]:
    ctx = Context(stdout=io.StringIO(), stderr=io.StringIO(), environ={}, cwd=tmp)
    code = main(list(argv), ctx=ctx)
    return code, ctx.stdout.getvalue(), ctx.stderr.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Train data (2 patients), held-out DICOM cases, a seg net, AMAGI and SlowFast."""
    tmp = tmp_path_factory.mktemp("train")
    torch.set_num_threads(2)
    code, _, err = _run(tmp, "synth", "-od", "train", "--cases", "2", "--duration-s", "4",
                        "--formats", "rawframes", "--clip-stride", "12",
                        "--domain", "randomised", "--events-per-minute", "20,30", *SYNTH)
    assert code == 0, err
    code, _, err = _run(tmp, "synth", "-od", "heldout", "--cases", "2", "--duration-s", "3",
                        "--formats", "dicom", "--domain", "shifted", "--seed", "12",
                        *SYNTH[2:])
    assert code == 0, err
    code, out, err = _run(tmp, "train", "seg", "--data", "train", "-od", "seg", "--arch",
                          "amagi_tiny", "--epochs", "2", "--input-size", "64", "--crop", "32",
                          "--batch-size", "4", "--look-jitter", "1", "--hard-pixels", "0.1",
                          "--peak-negatives", "0.3", "--peak-loss", "0.5", "--no-progress")
    assert code == 0, err
    assert "segmentation net of amagi_tiny trained" in out
    common = ["--annotations", "train/annotations.txt", "--epochs", "1", "--input-size", "64",
              "--batch-size", "4", "--class-weights", "balanced", "--no-progress"]
    code, out, err = _run(tmp, "train", "clip", "--arch", "amagi", "-od", "amagi",
                          "--seg-checkpoint", "seg/latest.pth", *common)
    assert code == 0, err
    assert "amagi_tiny trained on" in out
    code, out, err = _run(tmp, "train", "clip", "--arch", "slowfast", "-od", "slowfast",
                          "--still-negatives", "0.3", "--look-jitter", "0.5",
                          "--min-visible-px", "20", *common)
    assert code == 0, err
    assert "showing no bleeding left out" in out
    return tmp


def test_a_segmenter_that_sees_frames_at_twice_the_scale_trains_at_that_scale(
        trained: Path) -> None:
    """``amagi_tiny_tge2``'s segmenter sees a 128-pixel clip's frames upsampled to 256:
    ``amagi train seg`` trains it on frames of 256 unless told otherwise, and AMAGI takes
    the trained weights as they are."""
    code, _, err = _run(trained, "train", "seg", "--data", "train", "-od", "seg2", "--arch",
                        "amagi_tiny_tge2", "--epochs", "1", "--crop", "32", "--batch-size", "4",
                        "--no-progress")
    assert code == 0, err
    seg = read_checkpoint(trained / "seg2" / "latest.pth")
    assert seg["meta"]["config"]["input_size"] == 256
    model = build_model("amagi_tiny_tge2")
    model.backbone.seg_model.load_state_dict(seg["state_dict"])
    with torch.inference_mode():
        assert model.segment(torch.zeros(1, 15, 128, 128)).shape == (1, 2, 64, 64)


def test_checkpoints_have_the_authors_layout(trained: Path) -> None:
    ck = read_checkpoint(trained / "amagi" / "latest.pth")
    assert set(ck) == {"meta", "state_dict", "optimizer"}
    meta = ck["meta"]
    assert meta["arch"] == "amagi_tiny" and meta["build"] == {"input_size": 64}
    assert meta["epoch"] == 1 and meta["config"]["momentum"] == 0.9
    assert meta["config"]["weight_decay"] == 4e-5 and meta["config"]["grad_clip"] == 40.0
    model = build_model("amagi_tiny", input_size=64)
    assert load_checkpoint(model, trained / "amagi" / "latest.pth").ok
    seg_ck = read_checkpoint(trained / "seg" / "latest.pth")
    assert seg_ck["meta"]["config"]["hard_pixels"] == 0.1  # what the run was asked to do
    assert seg_ck["meta"]["config"]["peak_negatives"] == 0.3
    assert seg_ck["meta"]["config"]["peak_loss"] == 0.5
    assert seg_ck["meta"]["config"]["mine_every"] == 1
    assert seg_ck["meta"]["config"]["input_size"] == 64  # --input-size
    assert "mining_seconds" in seg_ck["meta"]["history"][1]  # mined before epoch 2
    assert len(seg_ck["meta"]["false_peaks"]) > 0
    seg = seg_ck["state_dict"]
    # the frozen segmentation net inside AMAGI is exactly the trained one
    for k, v in seg.items():
        assert torch.equal(model.state_dict()["backbone.seg_model." + k], v), k
    assert (trained / "amagi" / "train.log").read_text().count("clip epoch 1/1") == 1
    assert meta["still_negatives"] == 0.0
    sf_meta = read_checkpoint(trained / "slowfast" / "latest.pth")["meta"]
    assert sf_meta["still_negatives"] == 0.3 and sf_meta["look_jitter"] == 0.5
    assert sf_meta["look_on_device"] is False  # on the CPU the loaders apply it
    assert meta["look_jitter"] == 0.0


def test_evaluate_writes_consistent_tables(trained: Path) -> None:
    code, out, err = _run(trained, "evaluate", "--data", "heldout", "-od", "eval",
                          "--checkpoint", "amagi=amagi/latest.pth",
                          "--checkpoint", "slowfast=slowfast_tiny:slowfast/latest.pth",
                          "--folds", "2", "--no-progress")
    assert code == 0, err
    assert "amagi: frame F1" in out and "slowfast: frame F1" in out
    doc = json.loads((trained / "eval" / "metrics.json").read_text())
    preds = json.loads((trained / "eval" / "predictions.json").read_text())
    assert doc["models"] == ["amagi", "slowfast"] and len(preds) == 4
    assert sorted({c["fold"] for c in doc["cases"]}) == [0, 1]
    assert (trained / "eval" / "fold1.png").stat().st_size > 1000
    assert (trained / "eval" / "fold2.png").is_file()
    truth = {c["case_id"]: c["true_events"] for c in doc["cases"]}
    labels_json = json.loads((trained / "heldout" / "s12_c0000" / "labels.json").read_text())
    assert truth["s12_c0000"] == [[round(e["start_s"], 3), round(e["end_s"], 3)]
                                  for e in labels_json["events"]]
    for model in doc["models"]:
        mine = [p for p in preds if p["model"] == model]
        labels = np.concatenate([p["labels"] for p in mine])
        decisions = np.concatenate([p["decisions"] for p in mine])
        c = frame_counts(labels, decisions)
        assert {k: doc["pooled"][model]["frame"][k] for k in c} == c
        assert doc["pooled"][model]["frame"]["f1"] == pytest.approx(
            prf(c["tp"], c["fp"], c["fn"])["f1"], abs=1e-4)
        tp = sum(event_counts([tuple(e) for e in p["events"]],
                              [tuple(e) for e in truth[p["case_id"]]], 0.5).tp for p in mine)
        assert doc["pooled"][model]["events"]["iou_0.5"]["tp"] == tp
        # labels follow the per-frame ground truth at the prediction frames
        p0 = next(p for p in mine if p["case_id"] == "s12_c0000")
        assert p0["labels"] == [labels_json["frame_labels"][f] for f in p0["frames"]]
    # AMAGI's segmenter is also scored on its own, on every prediction's frame
    guided = [p for p in preds if p["model"] == "amagi"]
    assert all(len(p["guidance"]) == len(p["frames"]) for p in guided)
    assert all(0.0 <= g <= 1.0 for p in guided for g in p["guidance"])
    assert not any("guidance" in p for p in preds if p["model"] == "slowfast")
    g = doc["pooled"]["amagi"]["guidance"]
    assert g["frames"] == sum(len(p["frames"]) for p in guided)
    assert g["auroc"] == pytest.approx(auroc(np.concatenate([p["labels"] for p in guided]),
                                             np.concatenate([p["guidance"] for p in guided])),
                                       abs=1e-4)
    assert "guidance" not in doc["pooled"]["slowfast"]
    md = (trained / "eval" / "metrics.md").read_text()
    assert "event F1@0.5" in md and "## Per fold (2-fold, patient-level)" in md
    assert "## Segmentation guidance" in md and "| amagi |" in md


def test_bleeding_clips_showing_no_bleeding_were_left_out(trained: Path) -> None:
    """Counted here from the synthesised labels: the clip's label frame is 12 frames into
    its folder (8 frames 3 apart, the 5th sampled), its visible bleeding labels.json's."""
    unseen = bleeding = 0
    for line in (trained / "train" / "annotations.txt").read_text().splitlines():
        folder, _, label = line.split()
        if label == "1":
            case = trained / "train" / folder.split("/")[0]
            start = int(folder.rsplit("_f", 1)[1])
            pixels = json.loads((case / "labels.json").read_text())["active_pixels"]
            bleeding += 1
            unseen += pixels[start + 12] < 20
    meta = read_checkpoint(trained / "slowfast" / "latest.pth")["meta"]
    assert bleeding and meta["min_visible_px"] == 20
    assert meta["unseen_bleeding_left_out"] == unseen
    assert meta["positives"] == bleeding - unseen
    assert read_checkpoint(trained / "amagi" / "latest.pth")["meta"]["min_visible_px"] == 0


def test_user_errors_are_one_line(trained: Path) -> None:
    code, _, err = _run(trained, "train", "clip", "--arch", "amagi", "-od", "x",
                        "--annotations", "train/annotations.txt", "--no-progress")
    assert code == ExitCode.BAD_INPUT and "needs --seg-checkpoint" in err
    code, _, err = _run(trained, "train", "clip", "--arch", "nope", "-od", "x",
                        "--annotations", "train/annotations.txt")
    assert code == ExitCode.BAD_INPUT and "unknown --arch 'nope'" in err
    code, _, err = _run(trained, "train", "clip", "--arch", "slowfast", "-od", "x",
                        "--annotations", "train/annotations.txt", "--folds", "3")
    assert code == ExitCode.BAD_INPUT and "cannot make 3 folds" in err
    code, _, err = _run(trained, "evaluate", "--data", "heldout", "-od", "e2",
                        "--checkpoint", "amagi=amagi/latest.pth", "--folds", "3")
    assert code == ExitCode.BAD_INPUT and "cannot make 3 folds" in err
    code, _, err = _run(trained, "train", "seg", "--data", "nowhere", "-od", "x")
    assert code == ExitCode.BAD_INPUT and "not found" in err
    code, _, err = _run(trained, "train", "clip", "--arch", "slowfast", "-od", "x",
                        "--annotations", "train/annotations.txt", "--still-negatives", "1.5")
    assert code == ExitCode.BAD_INPUT and "--still-negatives must lie in [0, 1)" in err
    for cmd in (["clip", "--arch", "slowfast", "--annotations", "train/annotations.txt"],
                ["seg", "--arch", "amagi_tiny", "--data", "train"]):
        code, _, err = _run(trained, "train", *cmd, "-od", "x", "--look-jitter", "2.5")
        assert code == ExitCode.BAD_INPUT and "--look-jitter must lie in [0, 2]" in err
    code, _, err = _run(trained, "train", "seg", "--arch", "amagi_tiny", "--data", "train",
                        "-od", "x", "--moving-negatives", "0.3")
    assert code == ExitCode.BAD_INPUT and "needs a temporal segmenter" in err
    code, _, err = _run(trained, "train", "seg", "--arch", "amagi_tiny_tg", "--data", "train",
                        "-od", "x", "--moving-negatives", "1")
    assert code == ExitCode.BAD_INPUT and "--moving-negatives must lie in [0, 1)" in err
    code, _, err = _run(trained, "train", "seg", "--arch", "amagi_tiny", "--data", "train",
                        "-od", "x", "--hard-pixels", "1")
    assert code == ExitCode.BAD_INPUT and "--hard-pixels must lie in [0, 1)" in err
    for flags, says in ((["--peak-negatives", "1"], "--peak-negatives must lie in [0, 1)"),
                        (["--peak-loss", "-1"], "--peak-loss must be a finite number"),
                        (["--peak-loss", "nan"], "--peak-loss must be a finite number"),
                        (["--peak-loss", "inf"], "--peak-loss must be a finite number"),
                        (["--peak-negatives", "0.3", "--mine-every", "0"],
                         "--mine-every must be at least 1")):
        code, _, err = _run(trained, "train", "seg", "--arch", "amagi_tiny", "--data",
                            "train", "-od", "x", *flags)
        assert code == ExitCode.BAD_INPUT and says in err


def test_bf16_training_only_where_the_device_computes_it(trained: Path, monkeypatch) -> None:
    """``--precision bf16`` trains under autocast and says so in the checkpoint; where the
    device would emulate bf16 it is refused in one line, before anything is read or
    written (whatever this machine's CPU: the check is replaced both ways)."""
    from amagi_plugin import modelspec

    clip = ["train", "clip", "--arch", "slowfast", "--annotations", "train/annotations.txt",
            "--epochs", "1", "--input-size", "64", "--batch-size", "4", "--no-progress",
            "--precision", "bf16"]
    monkeypatch.setattr(modelspec, "bf16_native", lambda device: False)
    for cmd in (clip, ["train", "seg", "--arch", "amagi_tiny", "--data", "train",
                       "--precision", "bf16"]):
        code, _, err = _run(trained, *cmd, "-od", "bf16-refused")
        assert code == ExitCode.BAD_INPUT, err
        assert "--precision bf16: cpu does not compute bfloat16 natively" in err
        assert len(err.strip().splitlines()) == 1
    code, _, err = _run(trained, "train", "probe", "--data", "train", "--arch", "amagi_tiny",
                        "--seg-checkpoint", "seg/latest.pth", "-o", "bf16-refused/probe.pth",
                        "--precision", "bf16", "--no-progress")
    assert code == ExitCode.BAD_INPUT and "--precision bf16: cpu does not compute" in err
    assert not (trained / "bf16-refused").exists()
    code, _, err = _run(trained, *clip[:-1], "fp16", "-od", "bf16-refused")
    assert code == ExitCode.BAD_INPUT and "--precision must be one of fp32, bf16" in err
    monkeypatch.setattr(modelspec, "bf16_native", lambda device: True)
    code, _, err = _run(trained, *clip, "-od", "bf16")
    assert code == 0, err
    assert read_checkpoint(trained / "bf16" / "latest.pth")["meta"]["config"]["precision"] \
        == "bf16"
    assert read_checkpoint(trained / "slowfast" / "latest.pth")["meta"]["config"][
        "precision"] == "fp32"


def test_evaluate_in_worker_processes_gives_the_same_predictions(trained: Path) -> None:
    args = ["evaluate", "--data", "heldout", "--checkpoint", "amagi=amagi/latest.pth",
            "--folds", "1", "--no-progress"]
    assert _run(trained, *args, "-od", "one")[0] == 0
    code, _, err = _run(trained, *args, "-od", "two", "--jobs", "2", "--threads", "2")
    assert code == 0, err
    one = json.loads((trained / "one" / "predictions.json").read_text())
    two = json.loads((trained / "two" / "predictions.json").read_text())
    assert [p["case_id"] for p in one] == [p["case_id"] for p in two]
    for a, b in zip(one, two, strict=True):
        assert a["events"] == b["events"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)


def test_evaluate_reads_each_model_at_its_operating_point(trained: Path) -> None:
    """A model.json's operating point sets how that model's probabilities are read; a knob
    set on the command line wins over it; the baseline without one keeps the authors'."""
    d = trained / "calibrated"
    d.mkdir()
    manifest = {"arch": "amagi_tiny", "checkpoint": "../amagi/latest.pth",
                "operating_point": {"threshold": 0.35, "smoothing": "none", "smoothing_s": 0.0,
                                    "chosen_on": "a test"},
                "baseline": {"arch": "slowfast_tiny", "checkpoint": "../slowfast/latest.pth"}}
    (d / "model.json").write_text(json.dumps(manifest))
    args = ["evaluate", "--data", "heldout", "--model-dir", "calibrated", "--folds", "1",
            "--no-progress"]
    for out, extra, threshold, base in (
            ("op", [], 0.35, 0.5), ("op-set", ["--set", "analysis.threshold=0.9"], 0.9, 0.9)):
        code, _, err = _run(trained, *args, "-od", out, *extra)
        assert code == 0, err
        doc = json.loads((trained / out / "metrics.json").read_text())
        assert doc["post_processing"]["by_model"] == {
            "SlowFast": {"threshold": base, "smoothing": "morphology", "smoothing_s": 1.0},
            "AMAGI": {"threshold": threshold, "smoothing": "none", "smoothing_s": 0.0}}
        preds = json.loads((trained / out / "predictions.json").read_text())
        for p in (p for p in preds if p["model"] == "AMAGI"):  # no filter: the threshold alone
            assert p["decisions"] == [int(x >= threshold) for x in p["probabilities"]]
        md = (trained / out / "metrics.md").read_text()
        assert f"AMAGI: threshold {threshold:g}, none 0 s" in md
    manifest["operating_point"] = {"threshold": 0.35, "smoothing": "gaussian"}
    (d / "model.json").write_text(json.dumps(manifest))
    code, _, err = _run(trained, *args, "-od", "bad")
    assert code == ExitCode.BAD_INPUT and "operating_point: smoothing must be one of" in err
    assert len(err.strip().splitlines()) == 1


def test_evaluate_main_model_only(trained: Path) -> None:
    d = trained / "pair"
    d.mkdir()
    (d / "model.json").write_text(json.dumps(
        {"arch": "amagi_tiny", "checkpoint": "../amagi/latest.pth",
         "baseline": {"arch": "slowfast_tiny", "checkpoint": "../slowfast/latest.pth"}}))
    code, _, err = _run(trained, "evaluate", "--data", "heldout", "--model-dir", "pair",
                        "--folds", "1", "--no-baseline", "-od", "main-only", "--no-progress")
    assert code == 0, err
    doc = json.loads((trained / "main-only" / "metrics.json").read_text())
    assert list(doc["models"]) == ["AMAGI"] and set(doc["pooled"]) == {"AMAGI"}


def test_calibrate_chooses_writes_and_evaluate_agrees(trained: Path) -> None:
    """``amagi calibrate --write`` stores each model's best point in model.json; ``amagi
    evaluate`` then reads each model there, and its pipeline-made events score what the
    calibration's re-reading said."""
    d = trained / "tuned"
    d.mkdir()
    manifest = {"arch": "amagi_tiny", "checkpoint": "../amagi/latest.pth",
                "baseline": {"arch": "slowfast_tiny", "checkpoint": "../slowfast/latest.pth"}}
    (d / "model.json").write_text(json.dumps(manifest))
    code, out, err = _run(trained, "calibrate", "--data", "heldout", "--model-dir", "tuned",
                          "-od", "cal", "--write", "--no-progress")
    assert code == 0, err
    assert "amagi_tiny (../amagi/latest.pth): threshold" in out and "wrote each model" in out
    record = json.loads((trained / "cal" / "calibration.json").read_text())
    assert set(record["models"]) == {"../amagi/latest.pth", "../slowfast/latest.pth"}
    written = json.loads((d / "model.json").read_text())
    assert not list(d.glob(".model.json.*"))  # no temporary file left behind
    for entry in (written, written["baseline"]):
        m = record["models"][entry["checkpoint"]]
        assert entry["operating_point"] == m["chosen"]
        assert m["chosen_score"]["event_f1"] == max(c["event_f1"] for c in m["candidates"])
        assert m["chosen"]["chosen_on"].startswith(
            "amagi synth --seed 12 --domain shifted, 2 cases x 3 s: event F1@0.5 ")
    code, _, err = _run(trained, "evaluate", "--data", "heldout", "--model-dir", "tuned",
                        "--folds", "1", "-od", "tuned-eval", "--no-progress")
    assert code == 0, err
    doc = json.loads((trained / "tuned-eval" / "metrics.json").read_text())
    for label, entry in (("AMAGI", written), ("SlowFast", written["baseline"])):
        chosen = record["models"][entry["checkpoint"]]["chosen_score"]
        assert doc["pooled"][label]["events"]["iou_0.5"]["f1"] == pytest.approx(
            chosen["event_f1"], abs=1e-4)
        assert doc["pooled"][label]["events"]["iou_0.5"]["n_pred"] == chosen["pred_events"]


def test_calibrate_refuses_validation_without_bleeding(trained: Path) -> None:
    import shutil

    quiet = trained / "quiet"
    shutil.copytree(trained / "heldout" / "s12_c0000", quiet / "s12_c0000")
    labels = json.loads((quiet / "s12_c0000" / "labels.json").read_text())
    labels["events"], labels["frame_labels"] = [], [0] * len(labels["frame_labels"])
    (quiet / "s12_c0000" / "labels.json").write_text(json.dumps(labels))
    code, _, err = _run(trained, "calibrate", "--data", "quiet", "--model-dir", "tuned",
                        "-od", "cal2")
    assert code == ExitCode.BAD_INPUT and "has a bleeding event" in err
    code, _, err = _run(trained, "calibrate", "--data", "heldout", "--model-dir", "nowhere",
                        "-od", "cal3")
    assert code == ExitCode.BAD_INPUT and "no model.json" in err
    d = trained / "unwritable"
    d.mkdir()
    manifest = {"arch": "slowfast_tiny", "checkpoint": "../slowfast/latest.pth"}
    (d / "model.json").write_text(json.dumps(manifest))
    # the output folder would have to be made inside a file: one line before any model
    # runs, model.json untouched
    code, _, err = _run(trained, "calibrate", "--data", "heldout", "--model-dir", "unwritable",
                        "-od", "unwritable/model.json/out", "--write", "--no-progress")
    assert code == ExitCode.BAD_INPUT and "cannot write" in err and "Not a directory" in err
    assert len(err.strip().splitlines()) == 1, err
    assert json.loads((d / "model.json").read_text()) == manifest


def _predictions_file(path: Path, videos: int = 6, n: int = 120) -> None:
    """A predictions.json as 'amagi evaluate' writes it: each video's baseline differs, and
    bleeding raises the probability above it."""
    from amagi_plugin.evaluation.cases import CasePrediction

    rng = np.random.default_rng(5)
    entries = []
    for v in range(videos):
        labels = np.zeros(n, np.uint8)
        labels[30:60] = 1
        z = rng.uniform(-1, 1) + labels + rng.normal(0, 0.2, n)
        p = 1 / (1 + np.exp(-z))
        frames = np.arange(n) * 3
        entries.append(CasePrediction(f"v{v}", "AMAGI", frames / 30.0, frames, labels, p,
                                      p >= 0.5, [], 1.0).to_dict())
    path.write_text(json.dumps(entries))


def _with_and_without(trained: Path, name: str, manifest: dict) -> tuple[list, dict]:
    """'amagi evaluate' on the held-out cases through ``name/model.json`` (``manifest``) and
    through the bare clip network: the first's predictions and the second's by case."""
    d = trained / name
    d.mkdir()
    (d / "model.json").write_text(json.dumps(manifest))
    code, _, err = _run(trained, "evaluate", "--data", "heldout", "--model-dir", name,
                        "--folds", "1", "-od", f"{name}-eval", "--no-progress")
    assert code == 0, err
    code, _, err = _run(trained, "evaluate", "--data", "heldout", "--checkpoint",
                        "AMAGI=amagi/latest.pth", "--folds", "1", "-od", f"{name}-raw-eval",
                        "--no-progress")
    assert code == 0, err
    staged = json.loads((trained / f"{name}-eval" / "predictions.json").read_text())
    raw = {e["case_id"]: e for e in
           json.loads((trained / f"{name}-raw-eval" / "predictions.json").read_text())}
    return staged, raw


def test_a_refiner_trained_on_predictions_re_reads_every_analysis(trained: Path) -> None:
    """``amagi train refiner`` fits a refiner to predictions; named in model.json, it
    re-reads the model's probabilities in 'amagi evaluate' (and so in process and serve,
    which build their analyzer the same way): what evaluate reports is the refiner applied
    to what the network gave without it."""
    from models.refiner import load_refiner

    _predictions_file(trained / "preds.json")
    code, out, err = _run(trained, "train", "refiner", "--predictions", "preds.json",
                          "-o", "ref/refiner.pth", "--steps", "20", "--layers", "4")
    assert code == 0, err
    assert "refiner trained on 6 videos of AMAGI (25 % of instants bleeding, 10 " in out
    refiner = load_refiner(trained / "ref" / "refiner.pth")
    assert refiner.cfg.rate_hz == 10.0 and refiner.cfg.layers == 4
    manifest = {"arch": "amagi_tiny", "checkpoint": "../amagi/latest.pth",
                "build": {"input_size": 64}, "refiner": "../ref/refiner.pth"}
    refined, raw = _with_and_without(trained, "refined", manifest)
    d = trained / "refined"
    assert refined
    for entry in refined:
        want = refiner.refine(np.array(raw[entry["case_id"]]["probabilities"]), 10.0)
        np.testing.assert_allclose(entry["probabilities"], want, atol=2e-6)
        assert not np.allclose(entry["probabilities"], raw[entry["case_id"]]["probabilities"],
                               atol=1e-3)
    # a model.json naming a refiner that is not there: one line, before any model runs
    manifest["refiner"] = "../ref/missing.pth"
    (d / "model.json").write_text(json.dumps(manifest))
    code, _, err = _run(trained, "evaluate", "--data", "heldout", "--model-dir", "refined",
                        "--folds", "1", "-od", "x", "--no-progress")
    assert code == ExitCode.BAD_INPUT and "refiner file not found" in err
    assert len(err.strip().splitlines()) == 1


def test_train_refiner_refuses_what_it_cannot_learn_from(trained: Path) -> None:
    code, _, err = _run(trained, "train", "refiner", "--predictions", "nothing.json",
                        "-o", "r.pth")
    assert code == ExitCode.BAD_INPUT and "cannot read" in err
    (trained / "garbage.json").write_text("{")
    code, _, err = _run(trained, "train", "refiner", "--predictions", "garbage.json",
                        "-o", "r.pth")
    assert code == ExitCode.BAD_INPUT and "not an 'amagi evaluate' predictions.json" in err
    _predictions_file(trained / "two.json")
    doc = json.loads((trained / "two.json").read_text())
    doc.append({**doc[0], "model": "SlowFast"})
    (trained / "two.json").write_text(json.dumps(doc))
    code, _, err = _run(trained, "train", "refiner", "--predictions", "two.json", "-o", "r.pth")
    assert code == ExitCode.BAD_INPUT and "choose one with --model" in err
    code, _, err = _run(trained, "train", "refiner", "--predictions", "two.json", "--model",
                        "Other", "-o", "r.pth")
    assert code == ExitCode.BAD_INPUT and "holds no model 'Other'" in err
    quiet = [{**e, "labels": [0] * len(e["labels"])} for e in doc if e["model"] == "AMAGI"]
    (trained / "quiet.json").write_text(json.dumps(quiet))
    code, _, err = _run(trained, "train", "refiner", "--predictions", "quiet.json", "-o",
                        "r.pth")
    assert code == ExitCode.BAD_INPUT and "bleeding and non-bleeding" in err
    assert not (trained / "r.pth").exists()


def test_calibrate_pools_folders_and_bounds_alarms_on_bleeding_free_ones(trained: Path) -> None:
    import shutil

    free = trained / "free"
    shutil.copytree(trained / "heldout" / "s12_c0000", free / "f_c0000")
    labels = json.loads((free / "f_c0000" / "labels.json").read_text())
    labels["events"], labels["frame_labels"] = [], [0] * len(labels["frame_labels"])
    labels["case_id"] = "f_c0000"
    (free / "f_c0000" / "labels.json").write_text(json.dumps(labels))
    d = trained / "pooled"
    d.mkdir()
    (d / "model.json").write_text(json.dumps({"arch": "slowfast_tiny",
                                              "checkpoint": "../slowfast/latest.pth"}))
    code, _, err = _run(trained, "calibrate", "--data", "heldout", "free", "--model-dir",
                          "pooled", "-od", "cal-pooled", "--no-progress")
    assert code == 0, err
    record = json.loads((trained / "cal-pooled" / "calibration.json").read_text())
    assert [s["name"] for s in record["data"]["sets"]] == ["heldout", "free"]
    assert record["data"]["cases"] == 3 and "false alarm an hour" in record["rule"]
    m = record["models"]["../slowfast/latest.pth"]
    assert all(c["bleeding_free_s"] == pytest.approx(3.0, abs=0.05) for c in m["candidates"])
    quiet = [c for c in m["candidates"] if c["bleeding_free_false_alarms"] == 0]
    if quiet:  # the bound admits only points quiet on the bleeding-free case
        assert m["chosen_score"]["bleeding_free_false_alarms"] == 0
        assert m["chosen_score"]["event_f1"] == max(c["event_f1"] for c in quiet)
    else:
        assert m["chosen_score"]["bleeding_free_false_alarms"] == min(
            c["bleeding_free_false_alarms"] for c in m["candidates"])
    code, _, err = _run(trained, "calibrate", "--data", "heldout", "heldout", "--model-dir",
                        "pooled", "-od", "cal-twice")
    assert code == ExitCode.BAD_INPUT and "share case names" in err


def test_a_probe_trained_at_the_map_peaks_is_fused_into_every_analysis(trained: Path) -> None:
    """``amagi train probe`` fits a neighbourhood probe where the segmenter's map peaks (here
    one that aligns each neighbourhood's 6 frames first and max-pools its features); named in
    model.json, 'amagi evaluate' (and so process and serve) reads the clip network's probabilities fused with
    it: the same as fusing, by hand, the evaluation without the probe with the probe's
    scores computed on the decoded video."""
    from amagi_plugin.evaluation.cases import load_cases
    from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
    from amagi_plugin.probing import ProbeUse, fuse
    from dicom_io.video import open_video
    from models.patchnet import load_patchnet

    code, out, err = _run(trained, "train", "probe", "--data", "train", "--arch", "amagi_tiny",
                          "--input-size", "64", "--seg-checkpoint", "seg/latest.pth",
                          "-o", "pr/probe.pth", "--epochs", "1", "--candidates", "4",
                          "--rand-neg", "1", "--reversed-negatives", "0.5",
                          "--sliding-negatives", "0.25", "--view-negatives", "0.75",
                          "--hinged-negatives", "0.4", "--after-end-negatives", "0.5,1",
                          "--lookalike-negatives", "2", "--frames", "6", "--align", "--stabilise", "--pool", "max")
    assert code == 0, err
    assert "probe trained on" in out and "at 4 map peaks of amagi_tiny" in out
    assert "extract train: 2/2 cases" in err and "train: epoch 1/1" in err
    probe = load_patchnet(trained / "pr" / "probe.pth")
    assert (probe.cfg.candidates, probe.cfg.short_side, probe.cfg.align, probe.cfg.stabilise,
            probe.cfg.frames, probe.cfg.pool) == (4, 64, True, True, 6, "max")
    meta = read_checkpoint(trained / "pr" / "probe.pth")["meta"]
    assert meta["extraction"]["cases"] == 2 and 0 < meta["extraction"]["positive"] < \
        meta["extraction"]["neighbourhoods"]
    assert (meta["reversed_negatives"], meta["sliding_negatives"], meta["view_negatives"],
            meta["hinged_negatives"]) == (0.5, 0.25, 0.75, 0.4)
    assert meta["after_end_s"] == meta["extraction"]["sets"][0]["after_end_s"] == [0.5, 1.0]
    assert meta["lookalike_neg"] == meta["extraction"]["sets"][0]["lookalike_neg"] == 2
    assert meta["extraction"]["sets"][0]["lookalike_negatives"] > 0

    manifest = {"arch": "amagi_tiny", "checkpoint": "../amagi/latest.pth",
                "build": {"input_size": 64},
                "probe": {"file": "../pr/probe.pth", "weight": 0.6, "smooth_s": 0.5}}
    probed, plain = _with_and_without(trained, "probed", manifest)
    d = trained / "probed"
    model = build_model("amagi_tiny", input_size=64)
    load_checkpoint(model, trained / "amagi" / "latest.pth")
    stage = BleedingAnalyzer.for_model(model, AnalysisOptions(), probe=probe).probe
    cases = {c.case_id: c for c in load_cases(trained / "heldout")}
    assert probed
    for entry in probed:
        video = open_video(cases[entry["case_id"]].video)
        scores = stage.score_video(video, entry["frames"], lambda i: [i])
        assert np.isfinite(scores).all()
        want = fuse(np.array(plain[entry["case_id"]]["probabilities"]), scores, 10.0,
                    ProbeUse(0.6, 0.5))
        np.testing.assert_allclose(entry["probabilities"], want, atol=2e-6)
    # a model.json naming a probe that is not there, or one that is not a probe file, or a
    # probe trained at another scale: one error line each, before any case is analysed
    for probe_entry, message in (("../pr/missing.pth", "probe file not found"),
                                 ({"file": "../pr/probe.pth", "weight": 3}, "must lie in"),
                                 ("../amagi/latest.pth", "not a PatchNet probe checkpoint")):
        manifest["probe"] = probe_entry
        (d / "model.json").write_text(json.dumps(manifest))
        code, _, err = _run(trained, "evaluate", "--data", "heldout", "--model-dir", "probed",
                            "--folds", "1", "-od", "x", "--no-progress")
        assert code == ExitCode.BAD_INPUT and message in err, err
        assert [line for line in err.splitlines() if "error" in line] == \
            err.strip().splitlines()[-1:]
        assert not (trained / "x" / "metrics.json").exists()
    manifest.update(probe="../pr/probe.pth", build={"input_size": 96})
    (d / "model.json").write_text(json.dumps(manifest))
    code, _, err = _run(trained, "evaluate", "--data", "heldout", "--model-dir", "probed",
                        "--folds", "1", "-od", "x", "--no-progress")
    assert code == ExitCode.BAD_INPUT, err
    assert "trained on frames of short side 64 px, this model's maps are 96" in err


def _mann_whitney_range(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The AUROC of scores whose ties rounding may have made: every tie ranked wrong, every
    tie ranked right (rounding keeps the order of the others, so the unrounded scores'
    AUROC lies in between)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = pos.size * neg.size
    right = float((pos[:, None] > neg[None]).sum())
    return right / pairs, (right + float((pos[:, None] == neg[None]).sum())) / pairs


def _assert_auroc_of_rounded(recorded: float, labels: np.ndarray, scores: np.ndarray) -> None:
    """``recorded`` (metrics.json's, 4 decimals, from unrounded scores) is the AUROC of
    ``scores`` (predictions.json's, rounded) whatever order their ties had."""
    lo, hi = _mann_whitney_range(labels, scores)
    assert lo - 5e-5 <= recorded <= hi + 5e-5, (recorded, lo, hi)


def test_calibrate_chooses_the_probes_fusion_and_evaluate_agrees(trained: Path) -> None:
    """``amagi evaluate`` records what a probed model's probabilities were fused from;
    ``amagi calibrate --probe-fusion --write`` chooses the probe's weight and smoothing with
    the point from those records alone, and stores them in model.json's ``probe`` entry;
    ``amagi evaluate`` then runs the networks again with that fusion and scores what the
    calibration's re-reading said. The baseline (no probe) is calibrated as before; a folder
    whose models have no probe is refused in one line."""
    from amagi_plugin.evaluation.calibrate import (
        PROBE_FUSION_MARGIN,
        PROBE_SMOOTH_S,
        PROBE_WEIGHTS,
    )
    from amagi_plugin.evaluation.cases import CasePrediction
    from amagi_plugin.probing import ProbeUse, fuse

    code, _, err = _run(trained, "train", "probe", "--data", "train", "--arch", "amagi_tiny",
                        "--input-size", "64", "--seg-checkpoint", "seg/latest.pth",
                        "-o", "fusion-probe/probe.pth", "--epochs", "1", "--candidates", "4",
                        "--frames", "4", "--no-progress")
    assert code == 0, err
    d = trained / "fusion"
    d.mkdir()
    manifest = {"arch": "amagi_tiny", "checkpoint": "../amagi/latest.pth",
                "build": {"input_size": 64},
                "probe": {"file": "../fusion-probe/probe.pth", "weight": 0.6, "smooth_s": 0.5},
                "baseline": {"arch": "slowfast_tiny", "checkpoint": "../slowfast/latest.pth"}}
    (d / "model.json").write_text(json.dumps(manifest))
    code, _, err = _run(trained, "evaluate", "--data", "heldout", "--model-dir", "fusion",
                        "--folds", "1", "-od", "fusion-eval", "--no-progress")
    assert code == 0, err
    entries = json.loads((trained / "fusion-eval" / "predictions.json").read_text())
    for entry in entries:
        pred = CasePrediction.from_dict(entry)
        if entry["model"] == "SlowFast":
            assert pred.clip is None and pred.probe is None
            continue
        assert np.isfinite(pred.probe).any()
        np.testing.assert_allclose(fuse(pred.clip, pred.probe, 10.0, ProbeUse(0.6, 0.5)),
                                   pred.probabilities, atol=2e-6)
    # metrics.json ranks each part alone: the Mann-Whitney statistic over the recorded parts
    # (rounded to 6 decimals there: this barely trained network's scores differ by less at
    # some instants, and the ties the metrics did not see may move it by more than 0.005:
    # session 56's CI, the probe's 0.3922 against 0.3972 with ties counted half)
    doc = json.loads((trained / "fusion-eval" / "metrics.json").read_text())
    assert "components" not in doc["pooled"]["SlowFast"]
    parts = doc["pooled"]["AMAGI"]["components"]
    mine_only = [e for e in entries if e["model"] == "AMAGI"]
    labels = np.concatenate([e["labels"] for e in mine_only])
    for key, name in (("clip_auroc", "clip"), ("fused_auroc", "probabilities")):
        values = np.concatenate([e[name] for e in mine_only]).astype(float)
        _assert_auroc_of_rounded(parts[key], labels, values)
    assert parts["fused_auroc"] == doc["pooled"]["AMAGI"]["frame"]["auroc"]
    probe = np.concatenate([[np.nan if v is None else v for v in e["probe"]]
                            for e in mine_only])
    known = ~np.isnan(probe)
    _assert_auroc_of_rounded(parts["probe_auroc"], labels[known], probe[known])
    assert parts["probe_known"] == pytest.approx(known.mean(), abs=1e-4)
    md = (trained / "fusion-eval" / "metrics.md").read_text()
    assert "## The probe and the clip network" in md
    assert f"| AMAGI | {parts['clip_auroc']:.3f} | {parts['probe_auroc']:.3f} | " in md

    code, out, err = _run(trained, "calibrate", "--data", "heldout", "--model-dir", "fusion",
                          "-od", "fusion-cal", "--write", "--probe-fusion", "--no-progress")
    assert code == 0, err
    record = json.loads((trained / "fusion-cal" / "calibration.json").read_text())
    mine, base = record["models"]["../amagi/latest.pth"], record["models"][
        "../slowfast/latest.pth"]
    assert "probe" not in base and "probe_candidates" not in base
    pairs = [(c["weight"], c["smooth_s"]) for c in mine["probe_candidates"]]
    assert pairs == [(0.6, 0.5)] + [(w, s) for w in PROBE_WEIGHTS for s in PROBE_SMOOTH_S]
    chosen = (mine["probe"]["weight"], mine["probe"]["smooth_s"])
    assert chosen in pairs
    top = max(c["event_f1"] for c in mine["probe_candidates"])
    if chosen == (0.6, 0.5):  # kept: no pair beats it by the margin
        assert mine["chosen_score"]["event_f1"] > top - PROBE_FUSION_MARGIN
    else:
        assert mine["chosen_score"]["event_f1"] == top
    assert (f"amagi_tiny: probe weight {chosen[0]:g}, its scores' moving mean {chosen[1]:g} s "
            f"(of {len(pairs)} pairs tried)") in out
    written = json.loads((d / "model.json").read_text())
    assert written["probe"] == {"file": "../fusion-probe/probe.pth", "weight": chosen[0],
                                "smooth_s": chosen[1]}
    assert written["operating_point"] == mine["chosen"]
    assert "probe" not in written["baseline"]
    code, _, err = _run(trained, "evaluate", "--data", "heldout", "--model-dir", "fusion",
                        "--folds", "1", "-od", "fusion-eval2", "--no-progress")
    assert code == 0, err
    doc = json.loads((trained / "fusion-eval2" / "metrics.json").read_text())
    got = doc["pooled"]["AMAGI"]["events"]["iou_0.5"]
    assert got["f1"] == pytest.approx(mine["chosen_score"]["event_f1"], abs=1e-4)
    assert got["n_pred"] == mine["chosen_score"]["pred_events"]
    for entry in json.loads((trained / "fusion-eval2" / "predictions.json").read_text()):
        if entry["model"] == "AMAGI":
            pred = CasePrediction.from_dict(entry)
            np.testing.assert_allclose(fuse(pred.clip, pred.probe, 10.0, ProbeUse(*chosen)),
                                       pred.probabilities, atol=2e-6)

    plain = trained / "fusion-plain"
    plain.mkdir()
    (plain / "model.json").write_text(json.dumps(
        {"arch": "amagi_tiny", "checkpoint": "../amagi/latest.pth"}))
    code, _, err = _run(trained, "calibrate", "--data", "heldout", "--model-dir",
                        "fusion-plain", "-od", "fusion-cal2", "--probe-fusion",
                        "--no-progress")
    assert code == ExitCode.BAD_INPUT and "--probe-fusion: no model of" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (trained / "fusion-cal2" / "calibration.json").exists()


def test_train_probe_refuses_what_it_cannot_learn_from(trained: Path) -> None:
    seg = ["--seg-checkpoint", "seg/latest.pth"]
    for argv, says in (
            (["--data", "heldout", "--arch", "amagi_tiny", "--input-size", "64", *seg],
             "no rawframes/"),
            (["--data", "train", "--arch", "slowfast_tiny", *seg], "has no segmentation net"),
            (["--data", "nowhere", "--arch", "amagi_tiny", *seg], "no such folder"),
            (["--data", "train", "--arch", "amagi_tiny", "--seg-checkpoint", "nothing.pth"],
             "not found"),
            (["--data", "nowhere", "--arch", "amagi_tiny", "--input-size", "64", *seg,
              "--reversed-negatives", "-1"], "made negatives must be >= 0, got {'reversed': -1.0"),
            (["--data", "nowhere", "--arch", "amagi_tiny", "--input-size", "64", *seg,
              "--view-negatives", "nan"], "'view': nan,"),
            (["--data", "nowhere", "--arch", "amagi_tiny", "--input-size", "64", *seg,
              "--hinged-negatives", "-0.5"], "'hinged': -0.5}"),
            (["--data", "nowhere", "--arch", "amagi_tiny", "--seg-checkpoint", "nothing.pth",
              "--lookalike-negatives", "-1"], "look-alike negatives a frame must be a whole "
             "number >= 0, got -1"),
            (["--data", "nowhere", "--arch", "amagi_tiny", "--input-size", "64", *seg,
              "--step-s", "0"], "PatchNet needs step_s > 0"),
            (["--data", "nowhere", "--arch", "amagi_tiny", "--input-size", "64", *seg,
              "--frames", "1"], "PatchNet needs frames >= 2"),
            (["--data", "nowhere", "--arch", "amagi_tiny", "--input-size", "64", *seg,
              "--pool", "sum"], "pool must be one of avg, max, avgmax, got 'sum'"),
            (["--data", "nowhere", "--arch", "amagi_tiny", "--input-size", "64", *seg,
              "--norm", "batch"], "norm must be one of fixed, sample, got 'batch'"),
            (["--data", "nowhere", "--arch", "amagi_tiny", "--seg-checkpoint", "nothing.pth",
              "--after-end-negatives", "1,-2"], "finite and > 0, got [1.0, -2.0]")):
        code, _, err = _run(trained, "train", "probe", *argv, "-o", "p.pth")
        assert code == ExitCode.BAD_INPUT and says in err, err
    code, _, err = _run(trained, "train", "probe", "--data", "train", "--arch", "amagi_tiny",
                        *seg, "--after-end-negatives", "1,x", "-o", "p.pth")
    assert code == ExitCode.USAGE and "expected comma-separated numbers" in err, err
    assert not (trained / "p.pth").exists()
