"""amagi_plugin.probe_training and models.training.patchnet: the probe's training
neighbourhoods from a real rawframes set (where, how labelled, what they hold), and its
training loop's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amagi_plugin.errors import InputError
from amagi_plugin.probe_training import (
    MARGIN,
    after_end_frames,
    extract_neighbourhoods,
    lookalike_places,
    probe_analyzer,
)
from models import build_model
from models.errors import ModelError
from models.patchnet import PatchNet, PatchNetConfig
from models.training.patchnet import PatchTrainConfig, train_patchnet

CFG = PatchNetConfig(width=8, candidates=3, short_side=64)


@pytest.fixture(scope="module")
def rawframes(tmp_path_factory) -> Path:
    from amagi_plugin.synth import OutputOptions, generate_dataset

    root = tmp_path_factory.mktemp("probetrain")
    generate_dataset(root / "train", n_cases=2, seed=11, width=80, height=64, fps=10.0,
                     duration_s=8.0, ranges="randomised",
                     options=OutputOptions(formats=("rawframes",)))
    return root / "train"


def _analyzer():
    import torch

    torch.manual_seed(0)  # the same (untrained) segmenter each time
    return probe_analyzer(build_model("amagi_tiny_tge", input_size=64), PatchNet(CFG))


def _masks(rawframes: Path) -> tuple[list, list]:
    """Every masked frame of the set as (case folder, mask entry), and those with bleeding."""
    masks = [(labels.parent, m) for labels in sorted(rawframes.glob("*/labels.json"))
             for m in json.loads(labels.read_text())["masks"]]
    bleeding = [(c, m) for c, m in masks if (np.asarray(Image.open(c / m["mask"])) > 0).any()]
    assert bleeding
    return masks, bleeding


def _first_positive_is_on_the_first_bleeding(x: np.ndarray, y: np.ndarray, bleeding: list
                                             ) -> None:
    """The first positive is the first bleeding mask's centre: the centre pixel of its middle
    frame is the colour of a pixel that mask marks in that frame."""
    side = CFG.crop + MARGIN
    case, m = bleeding[0]
    img = np.asarray(Image.open(case / "rawframes" / f"img_{m['frame'] + 1:05d}.jpg")
                     .convert("RGB"))
    marked = img[np.asarray(Image.open(case / m["mask"])) > 0]
    centre = x[int(np.argmax(y)), CFG.frames // 2, side // 2, side // 2]
    assert (marked == centre).all(axis=1).any()


def test_neighbourhoods_sit_on_the_bleeding_and_the_map_peaks(rawframes: Path) -> None:
    x, y, info = extract_neighbourhoods(_analyzer(), rawframes, rand_neg=2, extra_pos=2)
    side = CFG.crop + MARGIN
    assert x.dtype == np.uint8 and x.shape == (len(y), CFG.frames, side, side, 3)
    assert info["neighbourhoods"] == len(y) and info["positive"] == int(y.sum())
    masks, bleeding = _masks(rawframes)
    # the mask centre and 2 more mask pixels of every bleeding mask are positives
    assert info["positive"] >= 3 * len(bleeding)
    # up to 3 map peaks and 2 random places per masked frame besides
    assert info["neighbourhoods"] <= 3 * len(bleeding) + 5 * len(masks)
    assert info["neighbourhoods"] > info["positive"]
    _first_positive_is_on_the_first_bleeding(x, y, bleeding)
    # the same seed draws the same neighbourhoods
    x2, y2, _ = extract_neighbourhoods(_analyzer(), rawframes, rand_neg=2, extra_pos=2)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_a_probe_finer_than_the_map_reads_its_neighbourhoods_at_its_own_scale(
        rawframes: Path) -> None:
    """A probe at twice the map's scale (``amagi train probe --scale 2``): the segmenter maps
    the frames at 32 px, the neighbourhoods come from the 64-px frames (here the rendered
    ones, unresampled), and each positive still sits on the bleeding."""
    torch.manual_seed(0)
    a = probe_analyzer(build_model("amagi_tiny_tge", input_size=32), PatchNet(CFG))
    assert a.probe.geometry.scale == 2 and a.probe.geometry.size == 32
    x, y, info = extract_neighbourhoods(a, rawframes, extra_pos=2)
    side = CFG.crop + MARGIN
    assert x.shape == (len(y), CFG.frames, side, side, 3)
    _, bleeding = _masks(rawframes)
    assert info["positive"] >= 3 * len(bleeding)
    _first_positive_is_on_the_first_bleeding(x, y, bleeding)
    # a probe coarser than the map, or at no whole multiple of it, is refused
    with pytest.raises(InputError, match="whole multiple"):
        probe_analyzer(build_model("amagi_tiny_tge", input_size=96), PatchNet(CFG))


def test_after_end_frames_are_the_still_frames_after_each_end() -> None:
    # two events at 10 fps: frames 5-9 and 20-24 active (end exclusive), 30 frames
    labels = [0] * 30
    for k in (*range(5, 10), *range(20, 25)):
        labels[k] = 1
    events = [{"end_frame": 10}, {"end_frame": 25}]
    # 0.5 s after the last active frame 9 is frame 14; 1.1 s is frame 20, where the second
    # event is active (left out); after the second: 29, and 35 lies outside the video
    assert after_end_frames(events, labels, 10.0, (0.5, 1.1)) == [14, 29]
    # a frame named twice is read once; a tiny offset still lands after the end
    assert after_end_frames(events, labels, 10.0, (0.5, 0.5, 0.01)) == [10, 14, 25, 29]
    assert after_end_frames([], labels, 10.0, (0.5,)) == []


def test_after_end_frames_add_negatives_only(rawframes: Path, tmp_path: Path) -> None:
    """The frames after each end are read as masked frames with no bleeding: every map peak
    and random place there is a negative, and the positives are those of the masks alone."""
    _, plain_y, plain = extract_neighbourhoods(_analyzer(), rawframes, rand_neg=1)
    assert plain["after_end_frames"] == 0 and plain["after_end_s"] == []
    _, y, info = extract_neighbourhoods(_analyzer(), rawframes, rand_neg=1,
                                        after_end_s=(0.5, 1.5))
    expected = 0
    for path in sorted(rawframes.glob("*/labels.json")):
        labels = json.loads(path.read_text())
        masked = {m["frame"] for m in labels["masks"]}
        for f in {ev["end_frame"] + d for ev in labels["events"] for d in (4, 14)}:
            expected += (f < labels["n_frames"] and not labels["frame_labels"][f]
                         and f not in masked)
    assert expected > 0 and info["after_end_frames"] == expected
    assert info["after_end_s"] == [0.5, 1.5]
    assert int(y.sum()) == int(plain_y.sum())  # no positive added
    added = len(y) - len(plain_y)
    assert expected <= added <= expected * (CFG.candidates + 1)
    with pytest.raises(ValueError, match="finite and > 0"):
        extract_neighbourhoods(_analyzer(), rawframes, after_end_s=(0.5, 0.0))
    from amagi_plugin.probe_training import fit_probe

    with pytest.raises(InputError, match="finite and > 0"):
        fit_probe([rawframes], "amagi_tiny_tge", tmp_path / "never-read.pth",
                  after_end_s=(float("inf"),), input_size=64)
    lying = tmp_path / "lying"
    import shutil

    shutil.copytree(rawframes, lying)
    path = sorted(lying.glob("*/labels.json"))[0]
    labels = json.loads(path.read_text())
    labels["frame_labels"] = labels["frame_labels"][:-1]
    path.write_text(json.dumps(labels))
    with pytest.raises(InputError, match="frame labels for"):
        extract_neighbourhoods(_analyzer(), lying, after_end_s=(0.5,))


def test_lookalike_places_draw_a_small_stain_about_as_often_as_a_large_pool() -> None:
    mask = np.zeros((128, 160), bool)
    mask[20:60, 20:60] = True  # a pool of 1600 px over 9 cells of 16 px
    mask[100:104, 130:134] = True  # a stain of 16 px in one cell
    rng = np.random.default_rng(0)
    draws = [lookalike_places(mask, 1, rng)[0] for _ in range(2000)]
    assert all(mask[y, x] for y, x in draws)
    on_stain = np.mean([y >= 100 for y, _ in draws])
    # 1 cell in 10; drawn by pixel, the stain would be 1 place in 100
    assert 0.07 < on_stain < 0.13, on_stain
    # several places a frame fall in distinct cells; never more than the cells reached
    many = lookalike_places(mask, 50, rng)
    assert len(many) == 10 and len({(y // 16, x // 16) for y, x in many}) == 10
    assert lookalike_places(np.zeros_like(mask), 3, rng) == []
    assert lookalike_places(mask, 0, rng) == []


def test_lookalike_negatives_sit_on_blood_that_is_not_bleeding(rawframes: Path,
                                                               tmp_path: Path) -> None:
    """Each look-alike negative is centred on a pixel of its frame's look-alike mask (the
    renderer's, independent of the segmenter); the rest of the extraction is unchanged."""
    plain_x, plain_y, plain = extract_neighbourhoods(_analyzer(), rawframes)
    assert plain["lookalike_negatives"] == 0
    x, y, info = extract_neighbourhoods(_analyzer(), rawframes, lookalike_neg=2)
    masks, _ = _masks(rawframes)
    assert len(masks) < info["lookalike_negatives"] <= 2 * len(masks)  # most frames have two
    assert len(y) == len(plain_y) + info["lookalike_negatives"]
    assert int(y.sum()) == int(plain_y.sum())
    side = CFG.crop + MARGIN
    known = {row.tobytes() for row in plain_x}
    added = [row for row in x if row.tobytes() not in known]
    assert len(added) >= info["lookalike_negatives"] - 2  # two may repeat a map peak's
    alike_colours = set()
    for case, m in masks:
        img = np.asarray(Image.open(case / "rawframes" / f"img_{m['frame'] + 1:05d}.jpg")
                         .convert("RGB"))
        alike = np.asarray(Image.open(case / m["lookalike"])) > 0
        alike_colours |= {tuple(c) for c in img[alike]}
    centres = [tuple(row[CFG.frames // 2, side // 2, side // 2]) for row in added]
    assert all(c in alike_colours for c in centres)
    # a set made before the look-alike masks were written is refused, by name
    import shutil

    old = tmp_path / "old"
    shutil.copytree(rawframes, old)
    path = sorted(old.glob("*/labels.json"))[0]
    labels = json.loads(path.read_text())
    for m in labels["masks"]:
        del m["lookalike"]
    path.write_text(json.dumps(labels))
    with pytest.raises(InputError, match="no look-alike masks"):
        extract_neighbourhoods(_analyzer(), old, lookalike_neg=1)
    # a truncated mask, look-alike or bleeding, is named, not a crash
    for kind in ("lookalike", "mask"):
        bad = tmp_path / f"truncated-{kind}"
        shutil.copytree(rawframes, bad)
        case = sorted(bad.glob("*/labels.json"))[0].parent
        png = case / json.loads((case / "labels.json").read_text())["masks"][0][kind]
        png.write_bytes(png.read_bytes()[:40])
        with pytest.raises(InputError, match=rf"{png.name}: not a readable mask image"):
            extract_neighbourhoods(_analyzer(), bad, lookalike_neg=1)
    extract_neighbourhoods(_analyzer(), old)  # without them it reads as before
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="whole number >= 0"):
            extract_neighbourhoods(_analyzer(), rawframes, lookalike_neg=bad)


def test_extraction_refuses_sets_it_cannot_read(tmp_path: Path, rawframes: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        extract_neighbourhoods(_analyzer(), tmp_path / "nowhere")
    with pytest.raises(InputError, match="no amagi synth case"):
        extract_neighbourhoods(_analyzer(), tmp_path)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(rawframes, broken)
    victim = sorted((broken).glob("*/rawframes/img_00003.jpg"))[0]
    victim.unlink()
    with pytest.raises(InputError, match=r"img_00003\.jpg: missing"):
        extract_neighbourhoods(_analyzer(), broken)
    for text in ("{", '{"n_frames": 10}', '{"n_frames": 10, "fps": 10, "masks": [{"frame": 1}]}',
                 "[]"):
        lying = tmp_path / "lying"
        shutil.rmtree(lying, ignore_errors=True)
        shutil.copytree(rawframes, lying)
        sorted(lying.glob("*/labels.json"))[0].write_text(text)
        with pytest.raises(InputError, match="not an amagi synth labels file"):
            extract_neighbourhoods(_analyzer(), lying)
    sorted(lying.glob("*/labels.json"))[0].write_text(
        '{"n_frames": 10, "fps": 10, "masks": [{"frame": 99, "mask": "m.png"}]}')
    with pytest.raises(InputError, match=r"masks at frames \[99\] outside its 10 frames"):
        extract_neighbourhoods(_analyzer(), lying)


def test_training_refuses_one_class_and_wrong_shapes() -> None:
    x = np.zeros((4, CFG.frames, 36, 36, 3), np.uint8)
    cfg = PatchTrainConfig(epochs=1, batch=2, architecture=CFG)
    with pytest.raises(ModelError, match="positive and negative"):
        train_patchnet(x, np.zeros(4), cfg)
    with pytest.raises(ModelError, match="cannot give 32 px squares"):
        train_patchnet(x[..., :30, :30, :], np.array([0, 1, 0, 1]), cfg)
    with pytest.raises(ModelError, match=r"expected neighbourhoods \(N, 8"):
        train_patchnet(x[:, :5], np.array([0, 1, 0, 1]), cfg)
    result = train_patchnet(x, np.array([0, 1, 0, 1]), cfg)
    assert len(result.losses) == 1 and np.isfinite(result.losses[0])
    assert result.samples == 4 and result.positive_share == 0.5


def test_fit_probe_pools_several_sets(rawframes: Path, tmp_path: Path) -> None:
    import torch

    from amagi_plugin.probe_training import fit_probe
    from models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    seg = tmp_path / "seg.pth"
    save_checkpoint(build_model("amagi_tiny_tge", input_size=64).backbone.seg_model, seg)
    lines: list[str] = []
    net, meta = fit_probe([rawframes, rawframes], "amagi_tiny_tge", seg, epochs=1,
                          candidates=3, step_s=0.3, input_size=64, progress=lines.append)
    one, two = meta["extraction"]["sets"]
    assert meta["extraction"]["cases"] == 4 == one["cases"] + two["cases"]
    assert meta["extraction"]["neighbourhoods"] == one["neighbourhoods"] + two["neighbourhoods"]
    assert (one["seed"], two["seed"]) == (0, 1)  # each set its own draws
    assert net.cfg.short_side == 64 and meta["build"] == {"input_size": 64}
    assert (net.cfg.candidates, net.cfg.step_s) == (3, 0.3)
    assert sum(line.startswith("extract train: ") for line in lines) == 4
    assert lines[-1].startswith("train: epoch 1/1")
    with pytest.raises(InputError, match="unknown architecture"):
        fit_probe([rawframes], "amagi_huge", seg)
    # at twice the model's scale, from a whole model's checkpoint (its segmenter is taken)
    whole = tmp_path / "whole.pth"
    save_checkpoint(build_model("amagi_tiny_tge", input_size=32), whole)
    net, meta = fit_probe([rawframes], "amagi_tiny_tge", whole, epochs=1, candidates=3,
                          input_size=32, scale=2)
    assert net.cfg.short_side == 64 and meta["build"] == {"input_size": 32}
    assert meta["extraction"]["positive"] > 0
    for bad in (0, 1.5):
        with pytest.raises(InputError, match="whole number >= 1"):
            fit_probe([rawframes], "amagi_tiny_tge", whole, input_size=32, scale=bad)


def _two_kinds(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Neighbourhoods of two kinds: bright (1) and dark (0), with noise."""
    rng = np.random.default_rng(3)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, CFG.frames, 36, 36, 3)) + 150 * y[:, None, None, None, None]
    return x.astype(np.uint8), y


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_the_probe_trains_on_a_device_and_comes_back_on_the_cpu(device: str) -> None:
    """The network trains where it is told (the demo's GPU build: session 40 found the probe
    training on the CPU of the lent machine); each batch is drawn with the same random
    numbers, so on the CPU the weights are those of the default call, and on a GPU the losses
    follow the CPU's to rounding."""
    x, y = _two_kinds()
    cfg = PatchTrainConfig(epochs=2, batch=4, architecture=CFG)
    base = train_patchnet(x, y, cfg)
    here = train_patchnet(x, y, cfg, device=device)
    assert all(p.device.type == "cpu" for p in here.net.parameters())
    assert not here.net.training
    if device == "cpu":
        assert all(torch.equal(a, b) for a, b in zip(base.net.state_dict().values(),
                                                     here.net.state_dict().values(), strict=True))
        assert here.losses == base.losses
    else:
        np.testing.assert_allclose(here.losses, base.losses, rtol=1e-3, atol=1e-4)


def test_a_stabilising_probe_trains_on_stabilised_neighbourhoods(tmp_path: Path) -> None:
    """``amagi train probe --stabilise``: on a set whose view sways (``amagi synth
    --wobble``), the neighbourhoods are those of the plain probe, at the same places with the
    same labels, but their frames shifted onto the instant's own: what changes over them,
    away from the bleeding and where every frame has data, drops by a fifth or more (28 %
    here: the sway is a few pixels of 64, and the set's camera also turns and zooms)."""
    from dataclasses import replace

    from amagi_plugin.synth import DOMAINS, OutputOptions, generate_dataset

    root = tmp_path / "sway"
    generate_dataset(root, n_cases=2, seed=12, width=80, height=64, fps=10.0, duration_s=8.0,
                     ranges=replace(DOMAINS["randomised"], wobble=(0.04, 0.06)),
                     options=OutputOptions(formats=("rawframes",)))

    def extracted(stabilise: bool) -> tuple[np.ndarray, np.ndarray]:
        torch.manual_seed(0)
        probe = PatchNet(replace(CFG, stabilise=stabilise))
        a = probe_analyzer(build_model("amagi_tiny_tge", input_size=64), probe)
        x, y, _ = extract_neighbourhoods(a, root, rand_neg=2)
        return x, y

    (x_st, y_st), (x_plain, y_plain) = extracted(True), extracted(False)
    assert np.array_equal(y_st, y_plain) and x_st.shape == x_plain.shape
    mid, inner = CFG.frames // 2, slice(MARGIN, -MARGIN)

    def change(x: np.ndarray) -> float:  # where every frame has data (none is black)
        c = x[y_st == 0][:, :, inner, inner].astype(float)
        inside = (c.max(axis=-1) > 0).all(axis=1, keepdims=True)
        return float(np.abs(c - c[:, mid:mid + 1]).max(axis=-1)[np.broadcast_to(
            inside, c.shape[:-1])].mean())

    assert np.array_equal(x_st[:, mid], x_plain[:, mid])
    assert change(x_st) < 0.8 * change(x_plain)
