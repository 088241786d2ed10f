"""``amagi synth`` end to end: files, DICOM, MP4, masks, rawframes and annotation lists."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from PIL import Image

from amagi_plugin.cli import Context, main
from amagi_plugin.errors import ExitCode
from amagi_plugin.synth import Renderer, SceneParams
from dicom_io.sopclasses import VIDEO_ENDOSCOPIC

ARGS = ["--cases", "2", "--seed", "3", "--duration-s", "4", "--size", "96x80", "--fps", "10",
        "--mask-every", "7", "--no-progress"]


def _run(tmp: Path, *argv: str) -> tuple[int, str, str]:
    ctx = Context(stdout=io.StringIO(), stderr=io.StringIO(), environ={}, cwd=tmp)
    code = main(["synth", *argv], ctx=ctx)
    return code, ctx.stdout.getvalue(), ctx.stderr.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("synth")
    code, out, err = _run(tmp, "-od", "ds", *ARGS)
    assert code == 0, err
    assert "wrote 2 synthetic case(s)" in out
    return tmp / "ds"


def _index(root: Path) -> dict:
    return json.loads((root / "cases.json").read_text())


def test_index_lists_cases_with_patients(dataset):
    index = _index(dataset)
    assert [c["case_id"] for c in index["cases"]] == ["s3_c0000", "s3_c0001"]
    assert index["patients"] == ["SYN3-0000", "SYN3-0001"]
    for rec in index["cases"]:
        for rel in rec["files"].values():
            assert (dataset / rel).exists(), rel
        assert set(rec["files"]) == {"labels", "mp4", "dicom", "rawframes", "annotations"}


def test_labels_json_matches_the_scene_and_the_files(dataset):
    for rec in _index(dataset)["cases"]:
        case = dataset / rec["dir"]
        doc = json.loads((case / "labels.json").read_text())
        scene = SceneParams.from_dict(doc["scene"])
        assert scene.seed == doc["seed"] == rec["seed"]
        labels = np.array(doc["frame_labels"])
        assert len(labels) == doc["n_frames"] == 40
        for ev in doc["events"]:
            assert labels[ev["start_frame"]:ev["end_frame"]].all()
            assert ev["start_s"] == pytest.approx(ev["start_frame"] / 10)
        assert labels.sum() == sum(e["end_frame"] - e["start_frame"] for e in doc["events"])
        # Masks: the listed frames (every 7th + event middles), identical to a fresh render.
        frames = [m["frame"] for m in doc["masks"]]
        assert set(range(0, 40, 7)) <= set(frames)
        assert {e["middle_frame"] for e in doc["events"]} <= set(frames)
        renderer = Renderer(scene)
        for m in doc["masks"]:
            mask = np.asarray(Image.open(case / m["mask"])) > 0
            rgb = np.asarray(Image.open(case / m["image"]))
            fr = renderer.render(m["frame"])
            assert np.array_equal(mask, fr.active)
            alike = np.asarray(Image.open(case / m["lookalike"])) > 0
            assert np.array_equal(alike, fr.lookalike)
            assert m["lookalike_pixels"] == int(alike.sum())
            assert np.array_equal(rgb, fr.rgb)
            assert mask.any() == bool(labels[m["frame"]] and m["active_pixels"])
            if not labels[m["frame"]]:
                assert not mask.any()


def test_mp4_and_rawframes_decode_to_the_rendered_video(dataset):
    rec = _index(dataset)["cases"][0]
    case = dataset / rec["dir"]
    scene = SceneParams.from_dict(json.loads((case / "labels.json").read_text())["scene"])
    renderer = Renderer(scene)
    with av.open(str(case / "video.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 40 and decoded[0].shape == (80, 96, 3)
    jpgs = sorted((case / "rawframes").glob("img_*.jpg"))
    assert [p.name for p in jpgs] == [f"img_{k:05d}.jpg" for k in range(1, 41)]
    for k in (0, 17, 39):
        ref = renderer.render(k).rgb.astype(int)
        assert np.abs(decoded[k].astype(int) - ref).mean() < 8
        assert np.abs(np.asarray(Image.open(jpgs[k])).astype(int) - ref).mean() < 6


def test_dicom_is_video_endoscopic_h264_with_synthetic_identity(dataset):
    rec = _index(dataset)["cases"][1]
    ds = pydicom.dcmread(dataset / rec["files"]["dicom"])
    assert ds.SOPClassUID == VIDEO_ENDOSCOPIC
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.102"
    assert int(ds.NumberOfFrames) == 40 and (ds.Rows, ds.Columns) == (80, 96)
    assert ds.PatientID == rec["patient_id"]
    assert str(ds.PatientName).startswith("SYNTHETIC^")
    other = pydicom.dcmread(dataset / _index(dataset)["cases"][0]["files"]["dicom"])
    assert other.StudyInstanceUID != ds.StudyInstanceUID


@pytest.mark.integration
def test_dicom_passes_dciodvfy(dataset):
    path = dataset / _index(dataset)["cases"][0]["files"]["dicom"]
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
    assert errors == []


def test_annotation_lists_follow_the_clip_rule(dataset):
    index = _index(dataset)
    all_lines = (dataset / "annotations.txt").read_text().splitlines()
    per_case: list[str] = []
    for rec in index["cases"]:
        case = dataset / rec["dir"]
        labels = json.loads((case / "labels.json").read_text())["frame_labels"]
        lines = (case / "annotations.txt").read_text().splitlines()
        per_case += lines
        starts = []
        for line in lines:
            folder, total, label = line.split(" ")
            start = int(folder.rsplit("_f", 1)[1])
            starts.append(start)
            assert int(total) == 24
            assert int(label) == labels[start + 12]
            files = sorted((dataset / folder).iterdir())
            assert [p.name for p in files] == [f"img_{j:05d}.jpg" for j in range(1, 25)]
            assert os.path.samefile(files[12], case / "rawframes" / f"img_{start + 13:05d}.jpg")
        assert starts == list(range(0, 40 - 24 + 1, 3))
        assert {int(x.split()[2]) for x in lines} <= {0, 1}
    assert all_lines == per_case


def test_same_seed_same_data_even_with_two_jobs(dataset, tmp_path):
    code, _, err = _run(tmp_path, "-od", "again", *ARGS, "--jobs", "2", "--formats", "mp4")
    assert code == 0, err
    for rec in _index(dataset)["cases"]:
        a = json.loads((dataset / rec["dir"] / "labels.json").read_text())
        b = json.loads((tmp_path / "again" / rec["dir"] / "labels.json").read_text())
        for key in ("frame_labels", "events", "masks", "scene", "active_pixels"):
            assert a[key] == b[key]
        for m in a["masks"]:
            assert (dataset / rec["dir"] / m["mask"]).read_bytes() == \
                (tmp_path / "again" / rec["dir"] / m["mask"]).read_bytes()
    assert not (tmp_path / "again" / "s3_c0000" / "video.dcm").exists()
    code, _, err = _run(tmp_path, "-od", "other", *ARGS[:3], "4", *ARGS[4:], "--formats", "mp4")
    assert code == 0, err
    a = json.loads((dataset / "s3_c0000" / "labels.json").read_text())
    b = json.loads((tmp_path / "other" / "s4_c0000" / "labels.json").read_text())
    assert a["scene"] != b["scene"]


def test_refuses_to_overwrite_and_rejects_bad_options(dataset, tmp_path):
    code, _, err = _run(dataset.parent, "-od", "ds", *ARGS)
    assert code == ExitCode.BAD_INPUT and "already exists" in err and len(err.splitlines()) == 1
    code, _, err = _run(tmp_path, "-od", "x", *ARGS, "--formats", "dicom,avi")
    assert code == ExitCode.USAGE and "avi" in err
    code, _, err = _run(tmp_path, "-od", "x", *ARGS, "--palettes", "blue")
    assert code == ExitCode.USAGE and "palettes" in err
    code, _, err = _run(tmp_path, "-od", "x", *ARGS, "--flow-textures", "waves,marbled")
    assert code == ExitCode.USAGE and "flow_textures must be among waves, advected" in err
    code, _, err = _run(tmp_path, "-od", "x", *ARGS, "--pulse-free", "1.5")
    assert code == ExitCode.USAGE and "pulse_free_probability must lie in [0, 1]" in err
    code, _, err = _run(tmp_path, "-od", "x", *ARGS, "--texture-depth", "0.5,0.2")
    assert code == ExitCode.USAGE and "texture_depth must be a range" in err
    for bad in ("0.03,0.01", "0.05,0.2"):
        code, _, err = _run(tmp_path, "-od", "x", *ARGS, "--wobble", bad)
        assert code == ExitCode.USAGE and "wobble must be a range" in err
    code, _, err = _run(tmp_path, "-od", "x", *ARGS, "--domain", "nowhere")
    assert code == ExitCode.BAD_INPUT and "domain" in err
    code, _, err = _run(tmp_path, "-od", "x", *ARGS, "--frames-from", "decoded")
    assert code == ExitCode.USAGE and "frames_from must be one of render, video" in err
    assert not (tmp_path / "x").exists()


def test_frames_from_video_reaches_the_cases(tmp_path):
    code, _, err = _run(tmp_path, "-od", "dec", *ARGS, "--formats", "rawframes",
                        "--frames-from", "video")
    assert code == 0, err
    assert _index(tmp_path / "dec")["frames_from"] == "video"
    for case in sorted((tmp_path / "dec").glob("s3_c*")):
        doc = json.loads((case / "labels.json").read_text())
        assert doc["frames_from"] == "video" and not (case / "video.mp4").exists()
        assert len(list((case / "rawframes").glob("*.jpg"))) == doc["n_frames"]


def test_scene_range_flags_reach_the_scenes(tmp_path):
    """``--pools`` and ``--fresh-pool-probability`` (the demo's hard-negative emphasis)."""
    code, _, err = _run(tmp_path, "-od", "hard", *ARGS, "--formats", "rawframes",
                        "--pools", "3,3", "--fresh-pool-probability", "1")
    assert code == 0, err
    for case in sorted((tmp_path / "hard").glob("s3_c*")):
        pools = json.loads((case / "labels.json").read_text())["scene"]["pools"]
        assert len(pools) == 3
        assert all(p["colour"][0] >= 0.55 for p in pools)  # fresh-looking red
    code, _, err = _run(tmp_path, "-od", "bad", *ARGS, "--fresh-pool-probability", "1.5")
    assert code == ExitCode.USAGE and "fresh_looking_pool_probability" in err


def test_same_seed_writes_identical_videos(tmp_path):
    """A data set is reproducible from its seed down to the encoded bytes. Before x264's
    macroblock tree was switched off, the same frames gave a different first GOP in about
    half of the encodes (20 s of 160x128 at 30 fps showed it; 4 s at 10 fps did not)."""
    argv = ["--seed", "424242", "--duration-s", "20", "--size", "160x128", "--fps", "30",
            "--formats", "dicom,mp4", "--no-progress"]
    videos = []
    for run in range(3):
        code, _, err = _run(tmp_path, "-od", f"run{run}", *argv)
        assert code == 0, err
        case = tmp_path / f"run{run}" / "s424242_c0000"
        videos.append(((case / "video.mp4").read_bytes(),
                       pydicom.dcmread(case / "video.dcm").PixelData))
    assert videos[1] == videos[0]
    assert videos[2] == videos[0]


def test_vary_format_gives_each_case_its_own_rate_and_size(tmp_path):
    """``--vary-format`` (opt-in): --size and --fps become base values; each case's video,
    labels and DICOM carry its own frame rate and size."""
    argv = ["--cases", "3", "--seed", "5", "--duration-s", "2", "--size", "64x48", "--fps", "10",
            "--domain", "randomised", "--frame-rates", "25,50", "--aspect", "1.0,1.7",
            "--formats", "dicom,mp4", "--no-progress"]
    code, _, err = _run(tmp_path, "-od", "fmt", *argv)
    assert code == 0, err
    index = _index(tmp_path / "fmt")
    assert index["settings"]["fps"] == 10.0 and "per_case_format" in index["settings"]
    sizes = set()
    for rec in index["cases"]:
        case = tmp_path / "fmt" / rec["dir"]
        doc = json.loads((case / "labels.json").read_text())
        assert doc["fps"] == rec["fps"] in (25.0, 50.0) and doc["scene"]["domain"] == "randomised"
        assert doc["n_frames"] == round(2 * doc["fps"])
        sizes.add((doc["width"], doc["height"]))
        with av.open(str(case / "video.mp4")) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (
                doc["width"], doc["height"])
            assert float(stream.average_rate) == pytest.approx(doc["fps"])
            assert sum(1 for _ in container.decode(stream)) == doc["n_frames"]
        ds = pydicom.dcmread(case / "video.dcm", stop_before_pixels=True)
        assert (ds.Columns, ds.Rows, int(ds.NumberOfFrames)) == (
            doc["width"], doc["height"], doc["n_frames"])
        assert float(ds.CineRate) == pytest.approx(doc["fps"])
    assert len(sizes) == 3
    code, _, err = _run(tmp_path, "-od", "bad", *argv, "--frame-rates", "25,fast")
    assert code == ExitCode.BAD_INPUT and "frame-rates" in err
    code, _, err = _run(tmp_path, "-od", "bad", *argv[:-5], "--frame-rates", "500")
    assert code == ExitCode.USAGE and "frame_rates" in err


def test_only_writes_those_cases_exactly_as_the_whole_set(dataset, tmp_path):
    """``--only I,...`` writes those cases of the set and no other: each byte for byte as the
    whole set writes it (labels, video, masks, rawframes; the DICOM video but its creation
    time), with the same record in
    ``cases.json`` (but its writing time), which says which were written."""
    code, out, err = _run(tmp_path, "-od", "one", *ARGS, "--only", "1")
    assert code == 0, err
    assert "wrote 1 synthetic case(s)" in out
    index, whole = _index(tmp_path / "one"), _index(dataset)
    assert index["settings"]["only"] == [1] and index["settings"]["n_cases"] == 2
    def record(r: dict) -> dict:  # what the case is, not how long it took to write
        return {k: v for k, v in r.items() if k != "seconds"}
    assert [record(r) for r in index["cases"]] == [record(r) for r in whole["cases"][1:]]
    assert index["patients"] == ["SYN3-0001"]
    assert not (tmp_path / "one" / "s3_c0000").exists()
    mine = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one" / "s3_c0001").rglob("*")
                  if p.is_file())
    theirs = sorted(p.relative_to(dataset) for p in (dataset / "s3_c0001").rglob("*") if p.is_file())
    assert mine == theirs and len(mine) > 10
    for rel in mine:
        if rel.suffix == ".dcm":  # the same instance, written at another time
            a, b = pydicom.dcmread(tmp_path / "one" / rel), pydicom.dcmread(dataset / rel)
            for ds in (a, b):
                del ds.InstanceCreationDate, ds.InstanceCreationTime
            assert a == b and a.file_meta == b.file_meta and a.PixelData == b.PixelData, rel
        else:
            assert (tmp_path / "one" / rel).read_bytes() == (dataset / rel).read_bytes(), rel
    assert (tmp_path / "one" / "annotations.txt").read_text() == "".join(
        line for line in (dataset / "annotations.txt").read_text().splitlines(keepends=True)
        if line.startswith("s3_c0001"))
    # indices outside the set, or not integers: one line, nothing written
    for only, exit_code, says in (("2", ExitCode.USAGE, "indices 0-1 of the 2, got [2]"),
                                  ("-1,0", ExitCode.USAGE, "got [-1, 0]"),
                                  ("1.5", ExitCode.USAGE, "expected comma-separated integers")):
        code, _, err = _run(tmp_path, "-od", "bad", *ARGS, f"--only={only}")
        assert code == exit_code and says in err, err
        assert not (tmp_path / "bad").exists()


def test_synth_and_the_cli_start_without_torch(tmp_path):
    """Rendering needs no network: ``amagi synth`` (which the demo build runs a dozen times in
    fresh processes) and the CLI's start import neither torch nor MONAI (3.4 s of a 4 s
    one-case synth before session 34)."""
    code = ("import sys\n"
            "from amagi_plugin.cli import main\n"
            "rc = main(['synth', '-od', 'd', '--duration-s', '1', '--size', '64x48',\n"
            "           '--formats', 'dicom,mp4,rawframes', '--no-progress'])\n"
            "assert rc == 0, rc\n"
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
    assert (tmp_path / "d" / "s0_c0000" / "video.dcm").is_file()
