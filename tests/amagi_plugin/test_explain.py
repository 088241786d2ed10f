from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.amagi_plugin.serve_support import make_video


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("explain")
    return make_video(d / "v.dcm", seconds=2.0), tiny_checkpoint


@pytest.mark.parametrize("layer", ["fast", "fusion"])
def test_explain_writes_gif_and_strip(run_cli, tmp_path: Path, setup, layer: str) -> None:
    video, ckpt = setup
    r = run_cli("explain", str(video), "--at", "1.0", "--layer", layer, "--model", "amagi_tiny",
                "--checkpoint", str(ckpt), "-od", str(tmp_path))
    assert r.code == 0, r.stderr
    assert "clip frames 19-40" in r.stdout  # centred on frame 31 (1.0 s at 30 fps), 3 apart
    gif = Image.open(tmp_path / f"gradcam_{layer}_1000ms.gif")
    assert gif.n_frames == 8 and gif.size == (128, 128)
    assert Image.open(tmp_path / f"gradcam_{layer}_1000ms.png").size == (8 * 128, 2 * 128)


def test_explain_outside_the_video(run_cli, tmp_path: Path, setup) -> None:
    video, ckpt = setup
    r = run_cli("explain", str(video), "--at", "99", "--model", "amagi_tiny", "--checkpoint",
                str(ckpt), "-od", str(tmp_path))
    assert r.code == 3 and "outside the video" in r.stderr
