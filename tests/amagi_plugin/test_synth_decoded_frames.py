"""``amagi synth --frames-from video``: training frames decoded from the case's own H.264
video (what an analysis reads), instead of the rendered frames."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from amagi_plugin.synth import Renderer, SceneParams, SynthError
from amagi_plugin.synth.dataset import generate_dataset
from amagi_plugin.synth.writer import OutputOptions

SMALL = dict(width=96, height=80, fps=30.0, duration_s=2.0)


def _jpegs(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("img_*.jpg"))
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).astype(np.float32)


def _case(root: Path) -> Path:
    (case,) = [p for p in root.iterdir() if p.is_dir()]
    return case


def test_rawframes_are_the_decoded_video_frames(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "v", 1, 7, ranges="randomised",
                     options=OutputOptions(formats=("mp4", "rawframes"), frames_from="video"),
                     **SMALL)
    case = _case(tmp_path / "v")
    doc = json.loads((case / "labels.json").read_text())
    assert doc["frames_from"] == "video"
    got = _jpegs(case / "rawframes")
    assert len(got) == doc["n_frames"] == 60
    # decoded independently of the project's reader: PyAV, frame by frame, in order
    with av.open(str(case / "video.mp4")) as c:
        ref = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert ref.shape == got.shape
    near = np.abs(got - ref).mean()
    assert near < 1.3  # only the quality-95 4:4:4 JPEG between them
    # and not the rendered frames: H.264 at the look's CRF changed them
    scene = SceneParams.from_dict(doc["scene"])
    rendered = np.stack([fr.rgb for fr in Renderer(scene).frames()]).astype(np.float32)
    assert np.array_equal(rendered.shape, got.shape)
    assert np.abs(rendered - ref).mean() > 2 * near
    # the segmenter's frames beside the masks are decoded too; the masks the renderer's
    for m in doc["masks"]:
        png = np.asarray(Image.open(case / m["image"]).convert("RGB")).astype(np.float32)
        assert np.array_equal(png, ref[m["frame"]])  # PNG: lossless
        mask = np.asarray(Image.open(case / m["mask"])) > 0
        assert mask.sum() == doc["active_pixels"][m["frame"]]


def test_the_video_is_encoded_for_its_frames_and_not_kept_unless_asked(tmp_path: Path) -> None:
    root = tmp_path / "r"
    generate_dataset(root, 1, 7, ranges="randomised",
                     options=OutputOptions(formats=("rawframes",), frames_from="video"), **SMALL)
    case = _case(root)
    assert not (case / "video.mp4").exists()
    assert "mp4" not in json.loads((case / "labels.json").read_text())["files"]
    again = tmp_path / "again"
    generate_dataset(again, 1, 7, ranges="randomised",
                     options=OutputOptions(formats=("rawframes",), frames_from="video"), **SMALL)
    assert np.array_equal(_jpegs(case / "rawframes"), _jpegs(_case(again) / "rawframes"))
    # clip folders link the decoded frames
    first = sorted((case / "clips").iterdir())[0]
    assert np.array_equal(_jpegs(first), _jpegs(case / "rawframes")[:24])


def test_an_unknown_frame_source_is_refused() -> None:
    with pytest.raises(SynthError, match="frames_from must be one of render, video"):
        OutputOptions(frames_from="decoded")


def test_a_video_that_decodes_short_leaves_no_case(tmp_path: Path, monkeypatch) -> None:
    """A decoder that loses frames (a broken encode) must not pass as a shorter case."""
    import dicom_io.video

    real = dicom_io.video.open_video

    class Short:
        def __init__(self, path):
            self.video = real(path)

        def frames(self):
            for i, item in enumerate(self.video.frames()):
                if i == 30:
                    return
                yield item

    monkeypatch.setattr(dicom_io.video, "open_video", Short)
    with pytest.raises(SynthError, match="decoded 30 frames of the 60 rendered"):
        generate_dataset(tmp_path / "s", 1, 7, ranges="randomised",
                         options=OutputOptions(formats=("rawframes",), frames_from="video"),
                         **SMALL)
    assert not [p for p in (tmp_path / "s").glob("*") if p.is_dir()]
