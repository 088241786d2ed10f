"""scripts/model/patch_stage.py: a probe's research scores on real synthetic video, dense and
at a segmenter's map peaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import build_model
from models.checkpoint import save_checkpoint
from models.patchnet import PatchNet, PatchNetConfig, save_patchnet
from tests.models._scripts import load_script

SCRIPT = "scripts/model/patch_stage.py"


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from amagi_plugin.synth import OutputOptions, generate_dataset

    root = tmp_path_factory.mktemp("patchstage")
    for name, seed, ranges in (("looks", 12, "heldout"), ("still", 13, "static")):
        generate_dataset(root / name, n_cases=1, seed=seed, width=96, height=80, fps=10.0,
                         duration_s=6.0, ranges=ranges, options=OutputOptions(formats=("mp4",)))
    ckpt = root / "seg.pth"
    save_checkpoint(build_model("amagi_tiny_tge", input_size=64).backbone.seg_model, ckpt)
    probe = save_patchnet(PatchNet(PatchNetConfig(width=8, candidates=2, short_side=64)),
                          root / "probe.pth")
    return {"root": root, "seg": ckpt, "probe": probe}


def test_moving_mean_stays_inside_each_case(script) -> None:
    scores = np.array([0.0, 1.0, 2.0, 10.0, 10.0])
    cases = np.array(["a", "a", "a", "b", "b"])
    out = script.moving_mean(scores, cases, 3)
    assert np.allclose(out, [1 / 3, 1.0, 5 / 3, 10.0, 10.0])


def test_score_dense_and_at_the_map_peaks(script, data, capsys) -> None:
    root = data["root"]
    assert script.main(["score", str(data["probe"]), f"looks={root / 'looks'}",
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
    assert script.main(["score", str(data["probe"]), f"looks={root / 'looks'}", "--every", "5",
                        "--seg", "amagi_tiny_tge", str(data["seg"])]) == 0
    peaks = json.loads(capsys.readouterr().out)
    assert peaks["where"] == "2 map peaks"
    assert peaks["looks"]["raw"]["frames"] == report["looks"]["raw"]["frames"]
    assert peaks["looks"]["map_peak"]["frames"] == report["looks"]["raw"]["frames"]


def test_an_unknown_still_set_is_refused(script, data) -> None:
    with pytest.raises(SystemExit, match="not one of the sets"):
        script.main(["score", str(data["probe"]), f"looks={data['root'] / 'looks'}",
                     "--still", "nope"])
