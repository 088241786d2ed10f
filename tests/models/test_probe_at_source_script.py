"""scripts/model/probe_at_source.py: where the probe looks against what it sees at the
bleeding, on real synthetic output through the bundled model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tests.models._scripts import load_script

SCRIPT = "scripts/model/probe_at_source.py"


def test_the_source_point_lies_on_the_bleeding_and_near_counts_a_3_px_border() -> None:
    pas = load_script(SCRIPT)
    ring = np.zeros((40, 40), bool)
    yy, xx = np.mgrid[:40, :40]
    ring[((yy - 20) ** 2 + (xx - 20) ** 2 >= 36) & ((yy - 20) ** 2 + (xx - 20) ** 2 <= 49)] = True
    y, x = pas.source_point(ring)  # the centroid (20, 20) is off the ring; the point is on it
    assert ring[y, x] and 6 <= np.hypot(y - 20, x - 20) <= 7
    dot = np.zeros((40, 40), bool)
    dot[10, 10] = True
    assert pas.near(dot, [(13, 13)]) and not pas.near(dot, [(14, 10)])
    assert pas.near(dot, [(30, 30), (7, 12)]) and not pas.near(dot, [])
    assert [pas.size_bin(p) for p in (1, 10, 11, 30, 31, 100, 101)] == \
        ["1-10 px", "1-10 px", "11-30 px", "11-30 px", "31-100 px", "31-100 px", ">= 101 px"]


def test_the_table_pools_by_size_and_gives_the_level_of_frames_without_bleeding() -> None:
    pas = load_script(SCRIPT)
    rows = [{"px": 4, "hit": False, "at_places": 0.6, "at_source": 0.1},
            {"px": 8, "hit": True, "at_places": 0.8, "at_source": 0.3},
            {"px": 500, "hit": True, "at_places": 0.9, "at_source": 0.9},
            {"px": 0, "hit": None, "at_places": 0.5, "at_source": None}]
    lines = pas.table(rows).splitlines()
    assert "| 1-10 px | 2 | 0.50 | 0.70 | 0.20 | 0.20 |" in lines
    assert "| >= 101 px | 1 | 1.00 | 0.90 | 0.90 | 0.90 |" in lines
    assert "| all active | 3 | 0.67 | 0.77 | 0.43 | 0.30 |" in lines
    assert "| none active | 1 | | 0.50 | | |" in lines
    assert not any(line.startswith(("| 11-30", "| 31-100")) for line in lines)


def test_the_form_table_pools_the_active_frames_by_the_bleeding_under_way() -> None:
    pas = load_script(SCRIPT)
    rows = [{"px": 4, "form": "ooze", "hit": False, "at_places": 0.6, "at_source": 0.1},
            {"px": 8, "form": "ooze", "hit": True, "at_places": 0.8, "at_source": 0.3},
            {"px": 500, "form": "spurt", "hit": True, "at_places": 0.9, "at_source": 0.9},
            {"px": 50, "form": None, "hit": True, "at_places": 0.4, "at_source": 0.4},
            {"px": 0, "form": None, "hit": None, "at_places": 0.5, "at_source": None}]
    lines = pas.form_table(rows).splitlines()
    assert lines[2:] == ["| ooze | 2 | 0.50 | 0.70 | 0.20 | 0.20 |",
                         "| spurt | 1 | 1.00 | 0.90 | 0.90 | 0.90 |",
                         "| unknown | 1 | 1.00 | 0.40 | 0.40 | 0.40 |"]


def test_the_lookalike_table_gives_the_level_blood_that_does_not_bleed_reaches() -> None:
    pas = load_script(SCRIPT)
    rows = [{"px": 4, "on_lookalike": 0.95}, {"px": 0, "on_lookalike": 0.2},
            {"px": 0, "on_lookalike": 0.92}, {"px": 0, "on_lookalike": None},
            {"px": 9}]  # a set made before look-alike masks
    lines = pas.lookalike_table(rows).splitlines()
    assert lines[2:] == ["| beside active bleeding | 1 | 0.95 | 1.00 |",
                         "| none active | 2 | 0.56 | 0.50 |", "| all | 3 | 0.69 | 0.67 |"]
    assert pas.lookalike_table([{"px": 0, "on_lookalike": None}, {"px": 3}]) is None


def test_every_masked_frame_is_read_through_the_bundled_probe(looks: Path, capsys) -> None:
    labels = json.loads(next(looks.glob("*/labels.json")).read_text())
    active = sum(1 for m in labels["masks"] if m["active_pixels"] > 0)
    idle = len(labels["masks"]) - active
    assert active and idle  # the seed's case has both
    assert load_script(SCRIPT).main([str(looks), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    everything = next(line for line in lines if line.startswith("| all active |"))
    cells = [c.strip() for c in everything.strip("|").split("|")]
    assert int(cells[1]) == active and 0.0 <= float(cells[2]) <= 1.0
    assert all(0.0 <= float(v) <= 1.0 for v in cells[3:])
    assert any(line.startswith(f"| none active | {idle} |") for line in lines)
    forms = {e["form"] for e in labels["events"]}
    by_form = [line for line in lines if line.startswith("|")
               and line.split("|")[1].strip() in forms]
    assert by_form and sum(int(line.split("|")[2]) for line in by_form) == active
    # every masked frame of this set has look-alike blood (its still pools) away from the
    # bleeding: each is read there too
    alike = sum(1 for m in labels["masks"] if m["lookalike_pixels"] > 0)
    assert alike > 0
    total = next(line for line in lines if line.startswith("| all |"))
    cells = [c.strip() for c in total.strip("|").split("|")]
    assert 0 < int(cells[1]) <= alike and 0.0 <= float(cells[2]) <= 1.0
    assert 0.0 <= float(cells[3]) <= 1.0


def test_a_model_without_a_probe_or_data_without_bleeding_is_one_error_line(
        looks: Path, tmp_path: Path, capsys) -> None:
    from amagi_plugin.modelspec import DEMO_DIR

    plain = tmp_path / "plain"
    plain.mkdir()
    manifest = json.loads((DEMO_DIR / "model.json").read_text())
    manifest.pop("probe")
    (plain / "model.json").write_text(json.dumps(manifest))
    assert load_script(SCRIPT).main([str(looks), "--model-dir", str(plain)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {plain}/model.json names no probe"
    still = tmp_path / "still"
    case = next(looks.glob("*/labels.json")).parent
    shutil.copytree(case, still / case.name)
    labels = json.loads((still / case.name / "labels.json").read_text())
    labels["masks"] = [m for m in labels["masks"] if m["active_pixels"] == 0]
    (still / case.name / "labels.json").write_text(json.dumps(labels))
    assert load_script(SCRIPT).main([str(still), "--threads", "1"]) == 2
    assert "no masked frame with active bleeding" in capsys.readouterr().err
