"""``amagi process`` end to end on real encoded video with a small AMAGI (deterministic weights)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from dicom_io.encode import encode_video, write_video_dicom
from dicom_io.sr import read_bleeding_report
from dicom_io.validate import run_dciodvfy

SUMMARY_KEYS = {"sop_instance_uid", "study_instance_uid", "model", "fps", "duration_s",
                "prediction_hz", "events", "event_count", "total_bleeding_s"}
EVENT_KEYS = {"start_s", "end_s", "duration_s", "peak_probability", "key_frame"}
# dciodvfy's known false warnings on our SR (TCOORD attributes, private coding scheme) and on
# every object (Device UID in the Contributing Equipment item, newer than dicom3tools 2022).
KNOWN_SR_WARNINGS = ("Temporal Range Type", "Referenced Time Offsets", "Standard Extended SOP Class",
                     "<99AMAGI>", "Coding Scheme UID", "(0x0018,0x1002) UI Device UID")


def _frames(n: int = 60, size=(144, 176)) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [np.clip(rng.normal(120, 30, (*size, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "video.dcm"
    write_video_dicom(_frames(), path, fps=30)
    return path


def _model_args(ckpt: Path) -> list[str]:
    return ["--model", "amagi_tiny", "--checkpoint", str(ckpt), "--no-progress"]


@pytest.mark.integration
def test_process_dicom_video_writes_everything(run_cli, tmp_path, video, tiny_checkpoint) -> None:
    out = tmp_path / "out"
    # A threshold near 0 makes the whole video one event, so every object kind is written.
    r = run_cli("process", str(video), "-od", str(out), *_model_args(tiny_checkpoint),
                "--set", "analysis.threshold=1e-6")
    assert r.code == 0, r.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert set(doc) == SUMMARY_KEYS
    assert doc["model"] == {"name": "amagi_tiny", "version": "amagi_tiny_test", "weights": "user"}
    assert doc["fps"] == 30.0 and doc["duration_s"] == 2.0 and doc["prediction_hz"] == 10.0
    assert doc["event_count"] == len(doc["events"]) == 1
    assert set(doc["events"][0]) == EVENT_KEYS
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and all(row["bleeding"] == "1" for row in rows)
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"

    files = sorted((out / "dicom").glob("*.dcm"))
    assert len(files) == 5  # SR, SEG, key image, report PDF, KOS
    modalities = set()
    for f in files:
        v = run_dciodvfy(f)
        assert v.errors == [], (f, v.errors)
        modalities.add(_modality(f))
        unexpected = [w for w in v.warnings if not any(k in w for k in KNOWN_SR_WARNINGS)]
        assert unexpected == [], (f, unexpected)
    assert modalities == {"SR", "SEG", "ES", "KO", "DOC"}
    report = read_bleeding_report(next(f for f in files if _modality(f) == "SR"))
    assert report.index.event_count == doc["event_count"]
    assert report.index.total_duration_s == doc["total_bleeding_s"]
    assert [(e.start_s, e.end_s, e.key_frame, e.peak_probability) for e in report.events] == [
        (e["start_s"], e["end_s"], e["key_frame"], e["peak_probability"]) for e in doc["events"]]
    assert report.source.sop_instance_uid == doc["sop_instance_uid"]


def _modality(path: Path) -> str:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True).Modality


def test_process_plain_video_file(run_cli, tmp_path, tiny_checkpoint) -> None:
    mp4 = tmp_path / "clip.mp4"
    encode_video(_frames(45), mp4, fps=25)
    r = run_cli("process", str(mp4), "-od", str(tmp_path / "o"), *_model_args(tiny_checkpoint))
    assert r.code == 0, r.stderr
    doc = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert doc["sop_instance_uid"] is None and doc["fps"] == 25.0 and doc["duration_s"] == 1.8
    assert not (tmp_path / "o" / "dicom").exists()
    assert (tmp_path / "o" / "report.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated", "empty-dir"])
def test_process_bad_input_is_one_clear_line(run_cli, tmp_path, video, tiny_checkpoint, case) -> None:
    target = tmp_path / case
    if case == "garbage":
        target.write_bytes(b"not a dicom file at all" * 10)
    elif case == "truncated":
        data = video.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif case == "empty-dir":
        target.mkdir()
    r = run_cli("process", str(target), "-od", str(tmp_path / "o"), *_model_args(tiny_checkpoint))
    assert r.code == 3, (r.code, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("amagi:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o" / "summary.json").exists()


def test_process_without_weights_says_what_to_do(run_cli, tmp_path, video) -> None:
    r = run_cli("process", str(video), "--model", "amagi_sf50", "--no-progress")
    assert r.code == 3
    assert "no model.checkpoint is configured" in r.stderr and "never downloaded" in r.stderr


def _model_folder(root: Path, ckpt: Path, description: str) -> Path:
    """A model folder as a demo build writes one: model.json naming the checkpoint beside
    it and the operating point it was calibrated for (a threshold near 0: all bleeding)."""
    d = root / "model"
    d.mkdir()
    (d / "weights.pth").symlink_to(ckpt)
    (d / "model.json").write_text(json.dumps({
        "arch": "amagi_tiny", "checkpoint": "weights.pth", "version": "1.2",
        "description": description,
        "operating_point": {"threshold": 1e-6, "smoothing": "none", "smoothing_s": 0.0,
                            "chosen_on": "test"}}))
    return d


@pytest.mark.parametrize("description, model", [
    ("trained on synthetic data only", {"name": "amagi-demo-amagi_tiny", "version": "1.2",
                                        "weights": "demo-synthetic"}),
    ("our own", {"name": "amagi_tiny", "version": "weights", "weights": "user"})])
def test_process_runs_a_model_folder(run_cli, tmp_path, video, tiny_checkpoint, description,
                                     model) -> None:
    """``--model-dir`` (``model.folder``) runs a model.json folder instead of the bundled demo:
    its checkpoint and its operating point; labelled a demo model when it says synthetic."""
    d = _model_folder(tmp_path, tiny_checkpoint, description)
    out = tmp_path / "out"
    r = run_cli("process", str(video), "-od", str(out), "--model-dir", str(d), "--no-progress")
    assert r.code == 0, r.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["model"] == model
    with (out / "predictions.csv").open() as fh:  # the folder's threshold, not 0.5
        assert all(row["bleeding"] == "1" for row in csv.DictReader(fh))


def test_a_model_folder_that_cannot_be_run_is_one_clear_line(run_cli, tmp_path, video,
                                                             tiny_checkpoint) -> None:
    d = _model_folder(tmp_path, tiny_checkpoint, "synthetic")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text('{"arch": "amagi_tiny", ')
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "model.json").write_text('{"arch": "amagi_tiny", "checkpoint": "nothing.pth"}')
    for extra, says in (
            (["--model-dir", str(d), "--checkpoint", str(tiny_checkpoint)],
             "model.folder and model.checkpoint are both set"),
            (["--model-dir", str(tmp_path / "nowhere")], "model folder not found"),
            (["--model-dir", str(tmp_path)], f"no model.json in {tmp_path}"),
            (["--model-dir", str(broken)], "model.json: not a model description (JSONDecodeError"),
            (["--model-dir", str(gone)], "checkpoint not found"),
            (["--model-dir", str(d), "--model", "amagi_sf50"], "leave model.name unset")):
        r = run_cli("process", str(video), "-od", str(tmp_path / "o"), "--no-progress", *extra)
        assert r.code == 3 and says in r.stderr, (extra, r.stderr)
        assert len([ln for ln in r.stderr.splitlines() if ln.startswith("amagi:")]) == 1
        assert not (tmp_path / "o").exists()
