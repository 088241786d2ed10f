"""The segmenter's own false peaks: mining, the crops centred on them, and the loop that
mines between epochs and resumes with them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models import build_model, read_checkpoint
from models.errors import ModelError
from models.training import SegDataset, SegTrainConfig, find_seg_pairs, train_seg_model
from models.training.augment import SegAugment
from models.training.mining import false_peaks
from tests.models.test_training import MEAN, STD, _write_dataset, plain_and_hard_crops


class _RedIsBleeding(nn.Module):
    """A segmenter whose bleeding logit is the input's first channel, at full resolution
    (``[aux, main]`` like HRNet-OCR); it records the mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.modes.append(self.training)
        main = torch.stack([torch.zeros_like(x[:, 0]), x[:, 0]], dim=1)
        return [main * 0.5, main]


class _Frames:
    def __init__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def whole(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def _frame(h: int, w: int, spots: dict[tuple[int, int], float], bleed: tuple[slice, slice]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.zeros(3, h, w)
    for (y, x), v in spots.items():
        image[0, y, x] = v
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[bleed] = True
    return image, mask


def test_the_false_peak_is_the_highest_place_away_from_bleeding() -> None:
    bleed = (slice(5, 10), slice(5, 10))
    # 40 x 50 is padded to 64 x 64 for the net: the peak keeps the frame's coordinates
    first = _frame(40, 50, {(7, 7): 9.0,  # on the bleed
                            (7, 14): 8.0,  # 5 px from it: within the margin
                            (30, 41): 5.0, (35, 3): 4.0}, bleed)
    all_bleeding = (torch.zeros(3, 40, 50), torch.ones(40, 50, dtype=torch.bool))
    other_size = _frame(32, 32, {(20, 2): 3.0}, (slice(0, 2), slice(30, 32)))
    net = _RedIsBleeding().train()
    found = false_peaks(net, _Frames([first, all_bleeding, other_size]), batch_size=8)
    assert set(found) == {0, 2}  # a frame that is all bleeding has no false peak
    assert found[0][:2] == (30, 41) and found[2][:2] == (20, 2)
    assert found[0].p == pytest.approx(1 / (1 + math.exp(-5.0)), rel=1e-5)  # softmax([0, 5])
    assert net.training and net.modes == [False, False]  # eval, two shapes, mode restored
    wider = false_peaks(net, _Frames([first]), margin=4)  # 5 px away is outside a margin of 4
    assert wider[0][:2] == (7, 14)
    with pytest.raises(ValueError, match="margin"):
        false_peaks(net, _Frames([first]), margin=-1)


def test_mining_a_real_segmenter_gives_places_inside_its_frames(tmp_path: Path) -> None:
    _write_dataset(tmp_path / "data")
    ds = SegDataset(find_seg_pairs(tmp_path / "data"), 32, MEAN, STD, crop=16)
    seg = build_model("amagi_tiny", input_size=32).backbone.seg_model
    found = false_peaks(seg, ds, batch_size=3)
    assert set(found) == set(range(len(ds)))
    for i, peak in found.items():
        image, mask = ds.whole(i)
        assert image.shape == (3, 32, 43) and mask.shape == (32, 43)  # 48 x 64, short side 32
        assert 0 <= peak.y < 32 and 0 <= peak.x < 43 and 0.0 <= peak.p <= 1.0
        near = torch.nn.functional.max_pool2d(mask[None, None].float(), 13, 1, 6)[0, 0]
        assert not near[peak.y, peak.x]


def _marked_frame() -> tuple[np.ndarray, np.ndarray]:
    """A 64 x 80 grey frame, bleeding top left, one marked pixel at (50, 70)."""
    rgb = np.full((64, 80, 3), 100, np.uint8)
    rgb[50, 70] = 255
    mask = np.zeros((64, 80), bool)
    mask[5:15, 5:15] = True
    return rgb, mask


def test_peak_negatives_centre_a_share_of_crops_on_the_given_peak() -> None:
    rgb, mask = _marked_frame()
    plain, hard = plain_and_hard_crops(peak_negatives=0.5)
    args = (64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def centred(aug, peak) -> int:
        hits = 0
        for seed in range(200):
            x, t = aug(rgb, mask, seed, peak=peak)
            assert x.shape == (3, 16, 16) and t.shape == (16, 16)
            # the mark at the crop's centre row, at its centre column or the flipped one
            hits += int(x[0, 8, 8] == 255 or x[0, 8, 7] == 255)
        return hits

    assert centred(plain, (50, 70)) < 20  # random crops seldom centre there
    assert 70 < centred(hard, (50, 70)) < 130  # about half
    for seed in range(8):  # no peak: exactly the crops of an augment without the option
        assert all(torch.equal(a, b) for a, b in zip(plain(rgb, mask, seed),
                                                     hard(rgb, mask, seed), strict=True))
    # a peak at the frame's edge: the crop shifts inside the frame
    x, _ = SegAugment(*args, crop=16, peak_negatives=0.99)(rgb, mask, 3, peak=(63, 79))
    assert x.shape == (3, 16, 16)
    with pytest.raises(ValueError, match="peak_negatives"):
        SegAugment(*args, peak_negatives=1.0)


def test_whole_is_the_scaled_uncropped_frame_and_mask() -> None:
    rgb, mask = _marked_frame()
    image, m = SegAugment(32, (100.0, 100.0, 100.0), (2.0, 2.0, 2.0)).whole(rgb, mask)
    assert image.shape == (3, 32, 40) and m.shape == (32, 40) and m.dtype == torch.bool
    assert float(image[1, 31, 0]) == 0.0  # (100 - 100) / 2
    # the 10 x 10 patch at (5..14) at half scale: about (2.5..7), nothing elsewhere
    assert m[3:7, 3:7].all() and 16 <= int(m.sum()) <= 36 and not m[9:].any()


def _seg_run(root: Path, out: Path, epochs: int, stop: int | None = None,
             resume: bool = False, share: float = 0.5) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    seg = build_model("amagi_tiny", input_size=32).backbone.seg_model
    ds = SegDataset(find_seg_pairs(root), 32, MEAN, STD, seed=3, crop=16,
                    peak_negatives=share)
    cfg = SegTrainConfig(out_dir=str(out), epochs=epochs, batch_size=4, lr=0.02, seed=3,
                         warmup_epochs=0.5, peak_negatives=share, mine_every=2,
                         stop_after_epoch=stop, resume=resume)
    return seg, train_seg_model(seg, ds, cfg)


def test_seg_training_mines_between_epochs_and_resumes_with_the_peaks(tmp_path: Path) -> None:
    _write_dataset(tmp_path / "data")
    root = tmp_path / "data"
    full_seg, full = _seg_run(root, tmp_path / "full", 3)
    # mined before epoch 2 (not 1: a random net's peaks mean nothing), not before epoch 3
    assert ["mining_seconds" in h for h in full.history] == [False, True, False]
    assert 0.0 < full.history[1]["false_peak_mean"] <= 1.0
    peaks = read_checkpoint(full.checkpoint)["meta"]["false_peaks"]
    assert [p[0] for p in peaks] == list(range(8))
    assert all(0 <= y < 32 and 0 <= x < 43 for _, y, x in peaks)
    # interrupted after epoch 2: epoch 3 mines nothing, so it crops where the peaks read
    # back from the checkpoint say, and ends exactly as the uninterrupted run
    _seg_run(root, tmp_path / "split", 3, stop=2)
    resumed_seg, resumed = _seg_run(root, tmp_path / "split", 3, resume=True)
    assert resumed.history[2]["loss"] == pytest.approx(full.history[2]["loss"], rel=1e-5)
    for k, v in full_seg.state_dict().items():
        assert torch.allclose(v.float(), resumed_seg.state_dict()[k].float(), atol=1e-6), k
    # and the peaks matter: the same epochs without them end elsewhere
    _, plain = _seg_run(root, tmp_path / "plain", 3, share=0.0)
    assert plain.history[2]["loss"] != pytest.approx(full.history[2]["loss"], rel=1e-5)


def test_the_config_and_the_dataset_must_agree_on_the_share(tmp_path: Path) -> None:
    _write_dataset(tmp_path / "data")
    ds = SegDataset(find_seg_pairs(tmp_path / "data"), 32, MEAN, STD, crop=16)
    seg = build_model("amagi_tiny", input_size=32).backbone.seg_model
    cfg = SegTrainConfig(out_dir=str(tmp_path / "x"), epochs=1, peak_negatives=0.3)
    with pytest.raises(ModelError, match=r"peak_negatives 0\.3"):
        train_seg_model(seg, ds, cfg)
    assert not (tmp_path / "x").exists()  # refused before anything was written

