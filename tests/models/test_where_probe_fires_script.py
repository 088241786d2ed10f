"""scripts/model/where_probe_fires.py: the probe's highest instants of a video as pictures,
through the bundled model on real synthetic output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amagi_plugin.probing import neighbourhoods
from tests.models._scripts import load_script

SCRIPT = "scripts/model/where_probe_fires.py"


def test_the_picture_shows_the_marked_frame_beside_every_crop_of_the_square() -> None:
    wpf = load_script(SCRIPT)
    stack = torch.zeros(8, 3, 64, 80)
    for k in range(8):
        stack[k, 0, 30:34, 40 + k] = 255  # a red dot moving right, one pixel a frame
    crops = neighbourhoods(stack, [(32, 40)], 16)[0]
    pic = np.asarray(wpf.picture(stack[4], 32, 40, crops))
    assert pic.shape == (128, 2 * 80 + 8 * 16 * 4, 3)
    assert (pic[2 * (32 - 8), 2 * 40, 1] == 255)  # the square's top edge, marked green
    for k in range(8):  # each crop, 4x, holds the dot where it was in its frame
        crop = pic[:64, 160 + k * 64:160 + (k + 1) * 64, 0]
        xs = np.nonzero(crop.max(0))[0]
        assert xs.min() == 4 * (8 + k) and xs.max() == 4 * (8 + k) + 3


def test_each_video_gives_its_scores_and_pictures_apart(looks: Path, tmp_path, capsys) -> None:
    video = next(looks.glob("*/video.dcm"))
    out = tmp_path / "pics"
    assert load_script(SCRIPT).main([str(out), str(video), "--top", "2", "--hz", "5",
                                     "--threads", "1"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith(f"| {video.parent.name}_video |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert int(cells[1]) == 30  # 5 per second from the first second to the last (8 s)
    mean, q90, top, share = map(float, cells[2:])
    assert 0 <= mean <= q90 <= top <= 1 and 0 <= share <= 1
    pics = sorted(out.glob("*.png"))
    assert len(pics) == 2
    times = sorted(float(p.stem.split("_t")[1].split("_p")[0]) for p in pics)
    assert times[1] - times[0] > 3.0 - 1e-6  # at least 3 s apart
    assert max(float(p.stem.rsplit("_p", 1)[1]) for p in pics) == pytest.approx(top, abs=0.006)
    assert Image.open(pics[0]).size == (2 * 160 + 8 * 32 * 4, 2 * 128)
    with pytest.raises(SystemExit):
        load_script(SCRIPT).main([str(out), str(video), "--hz", "0"])
