"""scripts/model/patch_stage.py: the neighbourhood probe's extraction, training and scoring
run on real synthetic output; its geometry checked against hand-made frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import build_model
from models.checkpoint import save_checkpoint
from models.patchnet import PatchNetConfig
from tests.models._scripts import load_script

SCRIPT = "scripts/model/patch_stage.py"


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from amagi_plugin.synth import OutputOptions, generate_dataset

    root = tmp_path_factory.mktemp("patchstage")
    generate_dataset(root / "train", n_cases=2, seed=11, width=96, height=80, fps=10.0,
                     duration_s=8.0, ranges="randomised",
                     options=OutputOptions(formats=("rawframes",)))
    for name, seed, ranges in (("looks", 12, "heldout"), ("still", 13, "static")):
        generate_dataset(root / name, n_cases=1, seed=seed, width=96, height=80, fps=10.0,
                         duration_s=6.0, ranges=ranges, options=OutputOptions(formats=("mp4",)))
    ckpt = root / "seg.pth"
    save_checkpoint(build_model("amagi_tiny_tge").backbone.seg_model, ckpt)
    return {"root": root, "seg": ckpt}


def test_frames_are_step_apart_around_the_centre_and_clamped(script) -> None:
    cfg = PatchNetConfig(frames=8, step_s=0.2)
    assert script.frame_indices(100, 900, 30.0, cfg) == [76, 82, 88, 94, 100, 106, 112, 118]
    assert script.frame_indices(2, 10, 10.0, cfg) == [0, 0, 0, 0, 2, 4, 6, 8]
    assert script.frame_indices(9, 10, 10.0, cfg)[-3:] == [9, 9, 9]


def test_a_neighbourhood_is_the_frame_around_the_point_zero_outside(script) -> None:
    rng = np.random.default_rng(0)
    pixels = {f: rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for f in range(3)}
    n = script.neighbourhood(pixels, [0, 2], 10, 15, 6)
    assert n.shape == (2, 6, 6, 3)
    assert np.array_equal(n[1], pixels[2][7:13, 12:18])
    corner = script.neighbourhood(pixels, [1], 0, 0, 6)[0]
    assert not corner[:3].any() and not corner[:, :3].any()
    assert np.array_equal(corner[3:, 3:], pixels[1][:3, :3])


def test_moving_mean_stays_inside_each_case(script) -> None:
    scores = np.array([0.0, 1.0, 2.0, 10.0, 10.0])
    cases = np.array(["a", "a", "a", "b", "b"])
    out = script.moving_mean(scores, cases, 3)
    assert np.allclose(out, [1 / 3, 1.0, 5 / 3, 10.0, 10.0])


def test_extract_train_score_end_to_end(script, data, tmp_path, capsys) -> None:
    root = data["root"]
    npz, net = tmp_path / "n.npz", tmp_path / "net.pt"
    assert script.main(["extract", "amagi_tiny_tge", str(data["seg"]), str(root / "train"),
                        str(npz), "--candidates", "3", "--rand-neg", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    d = np.load(npz)
    assert d["x"].shape == (info["neighbourhoods"], 8, 36, 36, 3) and d["x"].dtype == np.uint8
    # at least the one positive at each bleeding mask's centre, plus 2 more there
    bleeding_masks = sum(
        1 for case in (root / "train").glob("*/labels.json")
        for m in json.loads(case.read_text())["masks"]
        if (np.asarray(Image.open(case.parent / m["mask"])) > 0).any())
    assert bleeding_masks > 0
    assert info["positive"] >= 3 * bleeding_masks and info["positive"] == int(d["y"].sum())
    assert info["neighbourhoods"] > info["positive"]

    assert script.main(["train", str(npz), str(net), "--epochs", "1"]) == 0
    assert len(json.loads(capsys.readouterr().out)["losses"]) == 1

    assert script.main(["score", str(net), f"looks={root / 'looks'}",
                        f"still={root / 'still'}", "--every", "5", "--still", "still"]) == 0
    report = json.loads(capsys.readouterr().out)
    labels = json.loads(next((root / "looks").glob("*/labels.json")).read_text())
    assert report["looks"]["raw"]["frames"] == len(range(0, labels["n_frames"], 5))
    assert report["still"]["raw"]["bleeding"] == 0 and "auroc" not in report["still"]["raw"]
    if 0 < report["looks"]["raw"]["bleeding"] < report["looks"]["raw"]["frames"]:
        assert 0.0 <= report["looks"]["smoothed"]["auroc"] <= 1.0
        assert 0.0 <= report["looks_bleeding_vs_still_auroc"] <= 1.0
    assert report["where"] == "dense" and "map_peak" not in report["looks"]

    # at the segmenter's map peaks: the same frames, and the map's own peak scored beside
    assert script.main(["score", str(net), f"looks={root / 'looks'}", "--every", "5",
                        "--seg", "amagi_tiny_tge", str(data["seg"]), "--candidates", "2"]) == 0
    peaks = json.loads(capsys.readouterr().out)
    assert peaks["where"] == "2 map peaks"
    assert peaks["looks"]["raw"]["frames"] == report["looks"]["raw"]["frames"]
    assert peaks["looks"]["map_peak"]["frames"] == report["looks"]["raw"]["frames"]


def test_map_peaks_are_local_maxima_highest_first(script) -> None:
    import torch

    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")

    def bump(y: int, x: int, height: float) -> torch.Tensor:
        return height * torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)

    # the third bump lies inside the second's 9 x 9 neighbourhood, below it: not a peak
    p = torch.maximum(torch.maximum(bump(5, 5, 0.5), bump(30, 10, 0.9)), bump(33, 12, 0.3))
    found = script.map_peaks(p, 5)
    assert [(y, x) for y, x, _ in found] == [(30, 10), (5, 5)]
    assert found[0][2] > found[1][2] > 0
    assert script.map_peaks(p, 1) == found[:1]
    assert script.map_peaks(torch.zeros(8, 8), 3) == []


def test_a_set_without_rawframes_is_refused(script, data, tmp_path) -> None:
    with pytest.raises(SystemExit, match="no rawframes"):
        script.main(["extract", "amagi_tiny_tge", str(data["seg"]), str(data["root"] / "looks"),
                     str(tmp_path / "n.npz")])
