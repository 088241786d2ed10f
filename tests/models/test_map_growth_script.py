"""scripts/model/map_growth.py: the segmentation map's growth at the bleeding and at the
map's peaks, on hand-made maps and on real synthetic output through the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.models._scripts import load_script

SCRIPT = "scripts/model/map_growth.py"


def _discs(radii, centres) -> torch.Tensor:
    yy, xx = np.mgrid[:40, :40]
    return torch.tensor(np.stack([((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)
                                  for r, (cy, cx) in zip(radii, centres, strict=True)]))


def test_growth_counts_blood_gained_and_blood_arriving() -> None:
    mg = load_script(SCRIPT)
    grows = mg.growth(_discs([2, 3, 4, 5, 6, 7], [(20, 20)] * 6), 20, 20, 16)
    # early: discs of radius 2 and 3 (13 and 29 px), late: 6 and 7 (113 and 149 px)
    assert grows["net"] == pytest.approx((113 + 149 - 13 - 29) / 2)
    assert grows["new"] == pytest.approx(grows["net"])  # nothing left
    assert grows["rel"] == pytest.approx(grows["net"] / (149 + 1))
    moves = mg.growth(_discs([4] * 6, [(20, 14 + k) for k in range(6)]), 20, 20, 24)
    assert moves["net"] == pytest.approx(0.0) and moves["new"] > 10  # moved in, not grown
    clipped = mg.growth(_discs([4] * 6, [(2, 2)] * 6), 0, 0, 16)  # a square at the map's corner
    assert clipped == {"net": 0.0, "rel": 0.0, "new": 0.0}


def test_summary_ranks_active_frames_against_idle_ones_and_the_negative_sets() -> None:
    mg = load_script(SCRIPT)

    def row(active, places, source=None):
        r = {"active": active, "places": dict.fromkeys(mg.STATS, places)}
        return r | ({"source": dict.fromkeys(mg.STATS, source)} if source is not None else {})

    rows = [row(True, 5.0, 9.0), row(True, 1.0), row(False, 2.0), row(False, 0.0)]
    f = mg.summary(rows, [row(False, 3.0)])
    assert (f["active"], f["idle"], f["in_map"]) == (2, 3, 0.5)
    assert f["net"]["auroc_places"] == pytest.approx(4 / 6, abs=1e-3)  # 5 beats 3, 1 beats 1
    assert f["net"]["auroc_source"] == 1.0 and f["net"]["source_mean"] == 9.0
    assert mg.summary([row(False, 1.0)], [])["net"]["auroc_places"] is None


def test_every_masked_frame_is_read_through_the_bundled_model(looks: Path, tmp_path,
                                                              capsys) -> None:
    labels = json.loads(next(looks.glob("*/labels.json")).read_text())
    active = sum(1 for m in labels["masks"] if m["active_pixels"] > 0)
    out = tmp_path / "g.json"
    assert load_script(SCRIPT).main([f"looks={looks}", "--threads", "1", "--json",
                                     str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| looks")]
    assert [line.split("|")[5].strip() for line in lines] == list(load_script(SCRIPT).STATS)
    doc = json.loads(out.read_text())
    rows = doc["rows"]["looks"]
    assert len(rows) == len(labels["masks"])
    # the model's scale can lose a source of a few pixels: at most the labelled ones are active
    assert 0 < sum(r["active"] for r in rows) <= active
    assert all(np.isfinite(v) for r in rows for v in r["places"].values())
    with pytest.raises(SystemExit):
        load_script(SCRIPT).main([f"looks={looks}", "--negatives", "elsewhere"])


def test_growth_reads_only_pixels_that_nothing_covered() -> None:
    """An instrument leaving a still pool uncovers blood: the square's mass rises although no
    blood spread; counted only where no frame hid the tissue, the pool has not grown."""
    mg = load_script(SCRIPT)
    pool = _discs([6] * 6, [(20, 20)] * 6)
    covered = torch.zeros_like(pool, dtype=torch.bool)
    for k in range(6):  # a shaft over the pool's left half, sliding off it
        covered[k, :, : max(0, 20 - 3 * k)] = True
    seen_maps = pool * ~covered
    fooled = mg.growth(seen_maps, 20, 20, 16)
    assert fooled["net"] > 25  # the uncovered half reads as blood gained
    seen = ~covered.any(0)
    honest = mg.growth_of(seen_maps[:, 12:28, 12:28], seen[12:28, 12:28])
    assert honest == {"net": 0.0, "rel": 0.0, "new": 0.0}
    spreads = mg.growth_of(_discs([2, 3, 4, 5, 6, 7], [(20, 20)] * 6)[:, 12:28, 12:28],
                           seen[12:28, 12:28])
    assert spreads["net"] > 20  # blood spreading on tissue seen throughout still counts


def test_growth_on_an_all_blood_nets_maps(looks: Path, tmp_path, capsys) -> None:
    """``--blood-net``: the statistics read on ``scripts/model/blood_map.py``'s maps (a tiny
    net trained here on rendered frames), stabilised, with its recall of active blood."""
    net = tmp_path / "blood.pth"
    assert load_script("scripts/model/blood_map.py").main(
        [str(net), "--cases", "2", "--frames-per-case", "4", "--epochs", "1", "--batch", "4",
         "--features", "4", "4", "8", "8", "8", "4", "--threads", "1"]) == 0
    meta = json.loads(torch.load(net, weights_only=True)["_meta"])
    assert meta["outputs"] == ["blood", "hidden"] and meta["size"] == 128
    capsys.readouterr()
    out = tmp_path / "g.json"
    assert load_script(SCRIPT).main([f"looks={looks}", "--blood-net", str(net), "--stabilise",
                                     "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all-blood map's recall of active bleeding" in printed
    rows = json.loads(out.read_text())["rows"]["looks"]
    active = [r for r in rows if r["active"]]
    assert active and all(0.0 <= r["blood_recall"] <= 1.0 for r in active)
    assert all(np.isfinite(v) for r in rows for v in r["places"].values())
