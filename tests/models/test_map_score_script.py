"""scripts/model/map_score.py: a segmenter's map scored on its own, on real synthetic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import build_model
from models.checkpoint import save_checkpoint
from tests.models._scripts import load_script

SCRIPT = "scripts/model/map_score.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path, Path]:
    from amagi_plugin.synth import OutputOptions, generate_dataset

    root = tmp_path_factory.mktemp("mapscore")
    opts = OutputOptions(formats=("mp4",))
    generate_dataset(root / "looks", n_cases=1, seed=5, width=96, height=80, fps=10.0,
                     duration_s=8.0, ranges="heldout", options=opts)
    generate_dataset(root / "still", n_cases=1, seed=6, width=96, height=80, fps=10.0,
                     duration_s=8.0, ranges="static", options=opts)
    ckpt = root / "seg.pth"
    save_checkpoint(build_model("amagi_tiny_tgea").backbone.seg_model, ckpt)
    return root / "looks", root / "still", ckpt


def test_scores_every_sampled_frame_of_each_set(data, capsys) -> None:
    looks, still, ckpt = data
    assert load_script(SCRIPT).main(["amagi_tiny_tgea", str(ckpt), f"looks={looks}",
                                     f"still={still}", "--every", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    labels = json.loads(next(looks.glob("*/labels.json")).read_text())
    n = len(range(0, labels["n_frames"], 4))
    # every sampled frame whose temporal window lies inside the video is scored
    assert 0 < report["looks"]["frames"] <= n and report["still"]["frames"] > 0
    assert report["looks"]["bleeding"] <= sum(labels["frame_labels"][::4])
    assert report["still"]["bleeding"] == 0 and "auroc_peak" not in report["still"]
    assert 0.0 <= report["still"]["marked"] <= 1.0
    if 0 < report["looks"]["bleeding"] < report["looks"]["frames"]:
        assert 0.0 <= report["looks"]["auroc_peak"] <= 1.0


def test_scores_at_the_size_the_segmenter_was_trained_at(data, capsys) -> None:
    """``--input-size``: the frames are scaled so their short side is that size (a
    segmenter trained with ``amagi train seg --input-size``), and the report says so."""
    looks, _, ckpt = data
    assert load_script(SCRIPT).main(["amagi_tiny_tgea", str(ckpt), f"looks={looks}",
                                     "--every", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["input_size"] == 128  # the model's own
    assert load_script(SCRIPT).main(["amagi_tiny_tgea", str(ckpt), f"looks={looks}",
                                     "--every", "8", "--input-size", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_size"] == 64 and report["looks"]["frames"] > 0


def test_a_model_without_segmentation_is_refused(data, capsys) -> None:
    looks, _, ckpt = data
    with pytest.raises(SystemExit) as e:
        load_script(SCRIPT).main(["slowfast_tiny", str(ckpt), f"looks={looks}"])
    assert e.value.code == 2 and "slowfast_tiny has no segmentation net" in capsys.readouterr().err
