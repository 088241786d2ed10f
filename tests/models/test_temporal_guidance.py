"""Temporal guidance (``amagi_tiny_tg``): a segmenter that sees the clip frames around the
centre, its training data (the mask's frame and its neighbours from ``rawframes/``) and its
place inside AMAGI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import build_model, load_checkpoint
from models.errors import CheckpointError, InputShapeError, ModelConfigError
from models.flowseg import FLOWSEG_TINY, FlowSeg, FlowSegConfig
from models.hrnet_ocr import HRNET_TINY_OCR, HRNetOCR
from models.training import (
    SegDataset,
    SegTrainConfig,
    TrainingDataError,
    find_seg_pairs,
    train_seg_model,
)

MEAN, STD = (117.0, 75.0, 67.0), (60.0, 51.0, 49.0)


def _write_case(root: Path, n_frames: int = 20, mask_frames=(0, 10, 19)) -> Path:
    """rawframes whose grey level encodes the frame (4·k + 20), masks at ``mask_frames``
    marking a disc whose red rises frame by frame (flowing) beside a still red square."""
    case = root / "case0"
    for d in ("rawframes", "frames", "masks"):
        (case / d).mkdir(parents=True)
    yy, xx = np.mgrid[:48, :64]
    disc = (xx - 44) ** 2 + (yy - 24) ** 2 < 64
    for k in range(n_frames):
        img = np.full((48, 64, 3), 4 * k + 20, np.uint8)
        img[disc] = (100 + 5 * k, 10, 20)
        img[8:20, 6:18] = (200, 10, 20)
        Image.fromarray(img).save(case / "rawframes" / f"img_{k + 1:05d}.jpg", quality=100)
        if k in mask_frames:
            Image.fromarray(img).save(case / "frames" / f"img_{k + 1:05d}.png")
            Image.fromarray(disc.astype(np.uint8) * 255).save(case / "masks" / f"img_{k + 1:05d}.png")
    return case


def test_in_frames_must_be_odd_and_positive() -> None:
    for bad in (0, 2, -1):
        with pytest.raises(ModelConfigError, match="positive odd"):
            replace(HRNET_TINY_OCR, in_frames=bad)
    net = HRNetOCR(replace(HRNET_TINY_OCR, in_frames=3))
    assert net.conv1.in_channels == 9
    with pytest.raises(InputShapeError, match=r"expects \(N, 9, H, W\)"):
        net(torch.zeros(1, 3, 32, 32))


def test_flowseg_sees_the_centre_and_the_scaled_changes_from_it() -> None:
    for bad in (1, 4, 0):
        with pytest.raises(ModelConfigError, match="odd number of frames >= 3"):
            FlowSegConfig(in_frames=bad)
    net = FlowSeg(FlowSegConfig(in_frames=3, width=4, diff_gain=2.5)).eval()
    x = torch.randn(2, 9, 16, 20)
    z = net.changes(x)
    assert torch.equal(z[:, :3], x[:, 3:6])
    torch.testing.assert_close(z[:, 3:6], (x[:, 0:3] - x[:, 3:6]) * 2.5)
    torch.testing.assert_close(z[:, 6:9], (x[:, 6:9] - x[:, 3:6]) * 2.5)
    aux, main = net(x)
    assert aux.shape == main.shape == (2, 2, 4, 5)
    with pytest.raises(InputShapeError, match=r"expects \(N, 9, H, W\)"):
        net(torch.zeros(1, 15, 16, 16))
    with pytest.raises(InputShapeError, match="divisible by 4"):
        net(torch.zeros(1, 9, 18, 16))
    # A still stack (every frame the same) is seen as the frame alone with zero change.
    still = x[:, 3:6].repeat(1, 3, 1, 1)
    assert not net.changes(still)[:, 3:].any()
    assert FLOWSEG_TINY.in_frames == 5


def test_amagi_tg_segments_the_five_centre_clip_frames_frame_major() -> None:
    model = build_model("amagi_tiny_tg", input_size=32).eval()
    assert model.default_cfg.seg_frames == 5 and build_model("amagi_tiny").default_cfg.seg_frames == 1
    assert isinstance(model.backbone.seg_model, FlowSeg)
    seen = []
    model.backbone.seg_model.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.inference_mode():
        model(clip)
    (x,) = seen
    assert x.shape == (2, 15, 32, 32)
    for j, t in enumerate(range(2, 7)):  # T // 2 = 4: clip frames 2..6, RGB each
        assert torch.equal(x[:, 3 * j:3 * j + 3], clip[:, :, t])
    with pytest.raises(InputShapeError, match=r"frames must be \(N, 15, H, W\)"):
        model.segment(torch.zeros(1, 3, 32, 32))
    assert model.segment(torch.zeros(1, 15, 32, 32)).shape == (1, 2, 8, 8)
    with pytest.raises(InputShapeError, match="needs 5 frames around the centre; the clip has 4"):
        model.backbone.segmentation_input(torch.zeros(1, 3, 4, 32, 32))


def test_seg_pairs_carry_the_neighbouring_rawframes_clamped(tmp_path: Path) -> None:
    _write_case(tmp_path)
    plain = find_seg_pairs(tmp_path)
    assert [r.stack for r in plain] == [(), (), ()]
    pairs = find_seg_pairs(tmp_path, frames=5, frame_interval=3)
    names = [[int(p.stem[4:]) - 1 for p in r.stack] for r in pairs]
    assert names == [[0, 0, 0, 3, 6], [4, 7, 10, 13, 16], [13, 16, 19, 19, 19]]
    assert all(p.parent.name == "rawframes" for r in pairs for p in r.stack)


def test_temporal_seg_samples_stack_each_frame_with_the_same_crop(tmp_path: Path) -> None:
    _write_case(tmp_path)
    pairs = find_seg_pairs(tmp_path, frames=5, frame_interval=3)
    ds = SegDataset(pairs, 48, MEAN, STD, seed=3, crop=32, pos_fraction=0.5)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (15, 32, 32) and target.shape == (32, 32)
        frames = [int(p.stem[4:]) - 1 for p in pairs[i].stack]
        # background pixels: grey level 4k + 20 of each stacked frame, normalised per channel
        red, green = image[0] * STD[0] + MEAN[0], image[1] * STD[1] + MEAN[1]
        bg = (red - green).abs() < 3  # grey: neither the disc nor the square
        grey = image[:, bg].median(dim=1).values.view(5, 3)
        want = torch.tensor([[(4 * k + 20 - m) / s for m, s in zip(MEAN, STD, strict=True)]
                             for k in frames])
        torch.testing.assert_close(grey, want, atol=0.05, rtol=0)
        # the same crop and flip for every frame: the red shapes sit where the mask says
        raw = image.view(5, 3, 32, 32) * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(
            MEAN).view(1, 3, 1, 1)
        shapes = (raw[:, 0] - raw[:, 1]) > 50  # (5, 32, 32): disc and square
        for j in range(5):  # (JPEG blurs the shapes' edges a little differently per frame)
            iou = (shapes[j] & shapes[2]).sum() / (shapes[j] | shapes[2]).sum().clamp(min=1)
            assert iou > 0.9
        if target.any():  # the disc is inside the red shapes
            assert shapes[2][target.bool()].float().mean() > 0.9
    val = SegDataset(pairs, 48, MEAN, STD, train=False)
    assert val[1][0].shape == (15, 48, 48)


def test_temporal_seg_data_errors(tmp_path: Path) -> None:
    case = _write_case(tmp_path)
    (case / "rawframes" / "img_00008.jpg").unlink()  # frame 7, a neighbour of frame 10
    with pytest.raises(TrainingDataError, match=r"img_00008\.jpg is missing"):
        find_seg_pairs(tmp_path, frames=3, frame_interval=3)
    for f in (case / "rawframes").glob("*.jpg"):
        f.unlink()
    with pytest.raises(TrainingDataError, match="needs the frames around"):
        find_seg_pairs(tmp_path, frames=3)
    assert len(find_seg_pairs(tmp_path)) == 3  # a one-frame segmenter does not need them


def test_a_temporal_segmenter_learns_flow_and_loads_into_amagi_tg(tmp_path: Path) -> None:
    _write_case(tmp_path, n_frames=30, mask_frames=tuple(range(3, 27, 2)))
    pairs = find_seg_pairs(tmp_path, frames=5, frame_interval=3)
    seg = build_model("amagi_tiny_tg", input_size=32).backbone.seg_model
    ds = SegDataset(pairs, 32, MEAN, STD, seed=1, crop=32)
    res = train_seg_model(seg, ds, SegTrainConfig(out_dir=str(tmp_path / "seg"), epochs=3,
                                                  batch_size=4, lr=0.02, seed=1))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    amagi = build_model("amagi_tiny_tg", input_size=32)
    report = load_checkpoint(amagi, res.checkpoint, kind="segmentation")
    assert report.ok
    with pytest.raises(CheckpointError, match="seg_model"):  # nor can a one-frame model
        load_checkpoint(build_model("amagi_tiny", input_size=32), res.checkpoint,
                        kind="segmentation")
