"""scripts/model/map_probe.py: squares of the all-blood and hidden maps at the probe's places,
labelled as the probe's training labels them, a probe fitted on them and scored per frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.models._scripts import load_script

SCRIPT = "scripts/model/map_probe.py"


@pytest.fixture(scope="module")
def blood_net(tmp_path_factory) -> Path:
    net = tmp_path_factory.mktemp("blood") / "blood.pth"
    assert load_script("scripts/model/blood_map.py").main(
        [str(net), "--cases", "2", "--frames-per-case", "4", "--epochs", "1", "--batch", "4",
         "--features", "4", "4", "8", "8", "8", "4", "--threads", "1"]) == 0
    return net


def test_extract_train_and_score_a_set(looks: Path, blood_net: Path, tmp_path, capsys) -> None:
    mp = load_script(SCRIPT)
    data = tmp_path / "d.npz"
    assert mp.main(["extract", str(data), str(looks), "--blood-net", str(blood_net),
                    "--frames", "4", "--step-s", "0.3", "--reference", "--threads", "1"]) == 0
    d = dict(np.load(data))
    cfg = json.loads(str(d["cfg"]))
    assert (cfg["frames"], cfg["step_s"], cfg["crop"]) == (4, 0.3, 32)
    n = len(d["label"])
    assert d["x"].shape == (n, 4, 36, 36, 3) and d["x"].dtype == np.uint8
    assert not d["x"][..., 2].any()  # the third channel is zero: no pixel reaches the probe
    labels = json.loads(next(looks.glob("*/labels.json")).read_text())
    masked = {m["frame"]: m["active_pixels"] > 0 for m in labels["masks"]}
    assert set(d["frame"]) <= set(masked)
    # a mask's centre is one positive per frame with bleeding; it has no reference score
    src = d["source"]
    assert (d["label"][src] == 1).all() and np.isnan(d["ref"][src]).all()
    assert len(set(d["frame"][src])) == int(src.sum())
    assert all(masked[f] for f in d["frame"][src]) and d["active"][src].all()
    # places of frames with no bleeding are negatives, each with the reference's probability
    idle = ~d["active"]
    assert idle.any() and (d["label"][idle] == 0).all()
    assert np.isfinite(d["ref"][~src]).all() and ((d["ref"][~src] >= 0) & (d["ref"][~src] <= 1)).all()
    capsys.readouterr()

    net = tmp_path / "mp.pth"
    assert mp.main(["train", str(net), str(data), "--epochs", "1", "--width", "4",
                    "--threads", "1"]) == 0
    out = tmp_path / "s.json"
    assert mp.main(["score", str(net), str(data), "--json", str(out)]) == 0
    row = [line for line in capsys.readouterr().out.splitlines()
           if line.startswith(f"| {looks.name} |")]
    assert len(row) == 1
    fig = json.loads(out.read_text())["figures"][looks.name]
    frames_read = len(set(d["frame"][~src]))
    assert fig["active"] + fig["idle"] == frames_read
    assert all(0.0 <= fig[k] <= 1.0 for k in ("map", "ref", "mean"))

