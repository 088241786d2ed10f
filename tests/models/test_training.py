"""Training recipe, data layout, splits and the resumable loops on tiny models."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import build_model, load_checkpoint, read_checkpoint
from models.errors import ModelError
from models.training import (
    AUTHORS_CLIP_CLASS_WEIGHTS,
    ClipDataset,
    ClipRecord,
    ClipTrainConfig,
    SegDataset,
    SegTrainConfig,
    TrainingDataError,
    balanced_class_weights,
    drop_unseen_bleeding,
    find_seg_pairs,
    patient_folds,
    read_annotation_list,
    split_by_patient,
    train_clip_model,
    train_seg_model,
    warmup_cosine,
)
from models.training.augment import freeze_clip
from models.training.recipe import build_optimizer, clip_gradients, crop_peak_loss, seg_loss

MEAN, STD = (117.0, 75.0, 67.0), (60.0, 51.0, 49.0)


def _write_dataset(root: Path, n_cases: int = 2, clips_per_case: int = 4) -> Path:
    """The authors' layout: <case>/clips/<clip>/img_00001..24.jpg, masks/ + frames/, list.

    Bleeding clips (label 1) show a red disc that grows frame by frame; normal clips a
    static dark-red disc (a hard negative). Masks mark the growing disc only.
    """
    rng = np.random.default_rng(0)
    lines = []
    for c in range(n_cases):
        case = root / f"case{c}"
        (case / "masks").mkdir(parents=True)
        (case / "frames").mkdir()
        for k in range(clips_per_case):
            label = k % 2
            folder = case / "clips" / f"clip{k}"
            folder.mkdir(parents=True)
            cx, cy = rng.integers(20, 44, 2)
            yy, xx = np.mgrid[:48, :64]
            for j in range(24):
                img = np.full((48, 64, 3), (200, 150, 120), np.uint8)
                img += rng.integers(0, 12, img.shape, dtype=np.uint8)
                r = 4 + j // 2 if label else 8
                disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
                img[disc] = (220, 10, 20) if label else (90, 10, 15)
                Image.fromarray(img).save(folder / f"img_{j + 1:05d}.jpg", quality=95)
                if j == 12:
                    name = f"img_{k + 1:05d}.png"
                    Image.fromarray(img).save(case / "frames" / name)
                    Image.fromarray((disc & bool(label)).astype(np.uint8) * 255).save(
                        case / "masks" / name)
            lines.append(f"case{c}/clips/clip{k} 24 {label}")
    (root / "annotations.txt").write_text("\n".join(lines) + "\n")
    return root / "annotations.txt"


def test_balanced_weights_reproduce_the_authors_formula() -> None:
    # 82.5 % normal, 17.5 % bleeding gives the authors' [0.6060, 2.8592] to 3 decimals.
    w = balanced_class_weights([0] * 825 + [1] * 175)
    assert w == pytest.approx(AUTHORS_CLIP_CLASS_WEIGHTS, abs=3e-3)
    assert balanced_class_weights([0, 1, 1, 1]) == (2.0, round(4 / 6, 4))
    with pytest.raises(ValueError, match="every class"):
        balanced_class_weights([0, 0])


def test_warmup_cosine_schedule() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=4, warmup_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.1, 0.325, 0.55, 0.775])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))


def test_optimizer_and_gradient_clip_follow_the_recipe() -> None:
    model = build_model("slowfast_tiny", input_size=32)
    opt = build_optimizer(model.parameters())
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.01, 0.9, 4e-5)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([300.0, 400.0, 0.0])
    assert clip_gradients([p], 40.0) == pytest.approx(500.0)
    assert float(p.grad.norm()) == pytest.approx(40.0, rel=1e-4)


def test_patient_folds_keep_patients_together() -> None:
    patients = ["a", "a", "b", "c", "c", "c", "d", "e", "f"]
    folds = patient_folds(patients, 3, seed=1)
    for pid in set(patients):
        assert len({f for p, f in zip(patients, folds, strict=True) if p == pid}) == 1
    per_fold = [len({p for p, f in zip(patients, folds, strict=True) if f == k}) for k in range(3)]
    assert sorted(per_fold) == [2, 2, 2]
    train, test = split_by_patient(patients, 3, 0, seed=1)
    assert sorted(train + test) == list(range(len(patients)))
    assert not {patients[i] for i in train} & {patients[i] for i in test}
    with pytest.raises(ValueError, match="cannot make 3 folds"):
        patient_folds(["a", "b"], 3)


def test_annotation_list_and_clip_dataset(tmp_path: Path) -> None:
    ann = _write_dataset(tmp_path)
    records = read_annotation_list(ann)
    assert [r.label for r in records] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert records[0].patient == "case0" and records[5].patient == "case1"
    ds = ClipDataset(records, 32, MEAN, STD, train=True, seed=3)
    assert ds.frame_indices(records[0], None) == [1, 4, 7, 10, 13, 16, 19, 22]
    x, y = ds[1]
    assert x.shape == (3, 8, 32, 32) and x.dtype == torch.float32 and y == 1
    x2, _ = ds[1]
    assert torch.equal(x, x2)  # seeded per (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], x)
    val = ClipDataset(records, 32, MEAN, STD, train=False)
    assert torch.equal(val[2][0], val[2][0])
    # normalisation: the background (200, 150, 120) maps to (200 - mean) / std
    centre = val[0][0][:, 0, 0, 0]
    assert centre[0] == pytest.approx((200 + 5.5 - MEAN[0]) / STD[0], abs=0.3)


def test_bad_annotation_lines_raise(tmp_path: Path) -> None:
    ann = tmp_path / "a.txt"
    ann.write_text("only_two 24\n")
    with pytest.raises(TrainingDataError, match="expected 'folder total_frames label'"):
        read_annotation_list(ann)
    ann.write_text("missing 24 1\n")
    with pytest.raises(TrainingDataError, match="clip folder not found"):
        read_annotation_list(ann)
    with pytest.raises(TrainingDataError, match="not found"):
        read_annotation_list(tmp_path / "nope.txt")


def test_bleeding_clips_that_show_no_bleeding_are_left_out(tmp_path: Path) -> None:
    """The labelled frame is labels.json's ``label_offset`` frames into the folder; only
    bleeding clips go."""
    case = tmp_path / "c0"
    case.mkdir()
    pixels = [0] * 40
    pixels[12], pixels[24], pixels[36] = 3, 10, 50  # the labelled frames of f0, f12, f24
    (case / "labels.json").write_text(json.dumps({"active_pixels": pixels,
                                                  "clips": {"label_offset": 12}}))

    def clip(start: int, label: int) -> ClipRecord:
        return ClipRecord(case / "clips" / f"c0_f{start:06d}", 24, label, "p0")

    records = [clip(0, 1), clip(12, 1), clip(24, 1), clip(0, 0), clip(6, 0)]
    kept = drop_unseen_bleeding(records, 10)
    assert kept == [clip(12, 1), clip(24, 1), clip(0, 0), clip(6, 0)]
    assert drop_unseen_bleeding(records, 51) == [clip(0, 0), clip(6, 0)]
    with pytest.raises(TrainingDataError, match="past the case's 40"):
        drop_unseen_bleeding([clip(30, 1)], 1)
    with pytest.raises(TrainingDataError, match="not an 'amagi synth' clip folder"):
        drop_unseen_bleeding([ClipRecord(tmp_path / "any", 24, 1, "p0")], 1)
    (case / "labels.json").write_text(json.dumps({"frame_labels": [0] * 40}))
    with pytest.raises(TrainingDataError, match="gives no active_pixels"):
        drop_unseen_bleeding([clip(12, 1)], 1)


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = build_model("slowfast_tiny", input_size=32, dropout=0.0).train()
    x = torch.randn(8, 3, 8, 32, 32)
    y = torch.tensor([0, 1] * 4)
    x[y == 1, 0] += 1.5  # bleeding clips are redder
    opt = build_optimizer(model.parameters(), lr=0.05)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        clip_gradients(model.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def _clip_cfg(out: Path, epochs: int, resume: bool = False,
              stop: int | None = None, workers: int = 0) -> ClipTrainConfig:
    return ClipTrainConfig(out_dir=str(out), epochs=epochs, batch_size=4, lr=0.02,
                           warmup_epochs=0.5, seed=5, resume=resume, stop_after_epoch=stop,
                           workers=workers)


def test_clip_training_checkpoints_and_resumes_exactly(tmp_path: Path) -> None:
    records = read_annotation_list(_write_dataset(tmp_path / "data"))

    def run(out: Path, resume: bool = False, stop: int | None = None):
        torch.manual_seed(0)
        model = build_model("slowfast_tiny", input_size=32)
        ds = ClipDataset(records, 32, MEAN, STD, seed=5)
        return model, train_clip_model(model, ds, _clip_cfg(out, 2, resume, stop),
                                       meta={"arch": "slowfast_tiny"})

    full_model, full = run(tmp_path / "full")
    _, first = run(tmp_path / "split", stop=1)  # an interrupted session
    assert [h["epoch"] for h in first.history] == [1]
    resumed_model, resumed = run(tmp_path / "split", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[1]["loss"] == pytest.approx(full.history[1]["loss"], rel=1e-5)
    for k, v in full_model.state_dict().items():
        assert torch.allclose(v.float(), resumed_model.state_dict()[k].float(), atol=1e-6), k
    ck = read_checkpoint(full.checkpoint)
    assert set(ck) == {"meta", "state_dict", "optimizer"}
    assert ck["meta"]["epoch"] == 2 and ck["meta"]["arch"] == "slowfast_tiny"
    fresh = build_model("slowfast_tiny", input_size=32)
    assert load_checkpoint(fresh, full.checkpoint).ok


def test_bf16_training_runs_the_forward_pass_in_bf16_and_keeps_fp32_weights(
        tmp_path: Path) -> None:
    """``precision="bf16"``: the convolutions see bfloat16 (autocast), the weights, their
    gradients and the checkpoint stay fp32, the loss falls as in fp32 (8 clips: the two
    runs part after the first steps, so only the fall is compared) and the setting is
    recorded; an unknown precision is refused."""
    records = read_annotation_list(_write_dataset(tmp_path / "data"))
    dtypes: set[torch.dtype] = set()

    def run(precision: str) -> tuple[torch.nn.Module, list[float], Path]:
        torch.manual_seed(0)
        model = build_model("slowfast_tiny", input_size=32)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
        hook = conv.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
        ds = ClipDataset(records, 32, MEAN, STD, seed=5)
        cfg = dataclasses.replace(_clip_cfg(tmp_path / precision, 6), precision=precision)
        result = train_clip_model(model, ds, cfg, meta={})
        hook.remove()
        return model, [h["loss"] for h in result.history], result.checkpoint

    model, losses, ckpt = run("bf16")
    assert dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    meta = read_checkpoint(ckpt)["meta"]
    assert meta["config"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in read_checkpoint(ckpt)["state_dict"].values()
               if v.is_floating_point())
    dtypes.clear()
    _, fp32_losses, _ = run("fp32")
    assert dtypes == {torch.float32}
    assert losses[-1] < 0.5 * losses[0] and fp32_losses[-1] < 0.5 * fp32_losses[0]
    with pytest.raises(ModelError, match="precision must be one of fp32, bf16"):
        train_clip_model(build_model("slowfast_tiny", input_size=32),
                         ClipDataset(records, 32, MEAN, STD, seed=5),
                         dataclasses.replace(_clip_cfg(tmp_path / "x", 1), precision="fp16"),
                         meta={})


def test_data_loading_processes_do_not_change_training(tmp_path: Path) -> None:
    """Augmentation is seeded per (seed, epoch, item), so ``--workers N`` trains the same."""
    records = read_annotation_list(_write_dataset(tmp_path / "data"))

    def run(out: Path, workers: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("slowfast_tiny", input_size=32)
        ds = ClipDataset(records, 32, MEAN, STD, seed=5)
        train_clip_model(model, ds, _clip_cfg(out, 1, workers=workers), meta={})
        return model.state_dict()

    inline, two = run(tmp_path / "w0", 0), run(tmp_path / "w2", 2)
    for k, v in inline.items():
        assert torch.allclose(v.float(), two[k].float(), atol=1e-6), k


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_look_on_device_draws_each_clip_the_look_of_its_seed(device: str) -> None:
    """What a GPU build's loop does to a batch (``finish_batch`` on the batch's device)."""
    from models.training.augment import ClipAugment, LookJitter

    aug = ClipAugment(24, MEAN, STD, train=True, look_jitter=1.0)
    rng = np.random.default_rng(3)
    # mid-grey texture: no value near 0 or 255 before the look, so little clipping after
    frames = rng.integers(90, 160, (6, 30, 36, 3)).astype(np.uint8)
    seeds = [5, 17, 29, 41, 53, 65, 77, 89]
    ref = torch.stack([aug(frames, k) for k in seeds])
    raw = torch.stack([aug.deferred(frames, k) for k in seeds])
    assert raw.shape == ref.shape == (8, 3, 6, 24, 24) and raw.min() >= 0 and raw.max() > 100
    got = aug.finish_batch(raw.to(device), torch.tensor(seeds))
    assert got.device.type == device and got.shape == ref.shape
    got = got.cpu()
    # without the sensor noise the two paths agree to float32 rounding, blur included
    looks = torch.stack([aug.look.draw(np.random.default_rng([k, 0x100C])) for k in seeds])
    assert (looks[:, 5] > 0).any() and (looks[:, 5] == 0).any()  # blurred and sharp samples
    quiet = looks.clone()
    quiet[:, 6] = 0.0
    per = torch.stack([aug.look.apply(c.transpose(0, 1), q, None).transpose(0, 1)
                       for c, q in zip(raw, quiet, strict=True)])
    batched = LookJitter.apply_batch(raw.to(device), quiet,
                                     torch.Generator(device=device)).cpu()
    assert torch.allclose(batched, per, atol=1e-3)
    # with it, each clip differs from its per-item twin by two independent draws of its
    # own noise level: the residual's deviation is sqrt(2) times that sample's sigma
    resid = ((got - ref) * torch.tensor(STD).view(1, 3, 1, 1, 1)).flatten(1)
    expected = looks[:, 6].float() * math.sqrt(2.0)
    assert torch.allclose(resid.std(dim=1), expected, rtol=0.12, atol=0.05), (
        resid.std(dim=1), expected)
    assert resid.mean(dim=1).abs().max() < 0.15
    with pytest.raises(ValueError, match="B, 3, T, H, W"):
        LookJitter.apply_batch(raw[0], looks[:1], torch.Generator())
    with pytest.raises(ValueError, match="only training clips"):
        ClipAugment(24, MEAN, STD, train=False).deferred(frames)


def test_clip_training_with_the_look_on_the_device(tmp_path: Path) -> None:
    """The loop finishes deferred items on its device; as with the looks in the loaders, the
    loading processes do not change what it trains, and neither does a resumed run."""
    records = read_annotation_list(_write_dataset(tmp_path / "data"))

    def run(out: Path, workers: int, look_on_device: bool = True
            ) -> tuple[dict[str, torch.Tensor], list[dict]]:
        torch.manual_seed(0)
        model = build_model("slowfast_tiny", input_size=32)
        ds = ClipDataset(records, 32, MEAN, STD, seed=5, look_jitter=1.0,
                         look_on_device=look_on_device)
        assert ds.look_on_device is look_on_device
        item = ds[0]
        assert len(item) == (3 if look_on_device else 2)
        res = train_clip_model(model, ds, _clip_cfg(out, 2, workers=workers), meta={})
        return model.state_dict(), res.history

    inline, hist = run(tmp_path / "w0", 0)
    two, hist2 = run(tmp_path / "w2", 2)
    assert all(math.isfinite(h["loss"]) for h in hist) and len(hist) == 2
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in hist2], rel=1e-5)
    for k, v in inline.items():
        assert torch.allclose(v.float(), two[k].float(), atol=1e-6), k
    in_loaders, _ = run(tmp_path / "loaders", 0, look_on_device=False)
    assert any(not torch.allclose(v.float(), in_loaders[k].float()) for k, v in inline.items()
               if v.is_floating_point())  # other noise draws: not the same run
    # without look jitter, or for validation, nothing is deferred
    assert not ClipDataset(records, 32, MEAN, STD, look_on_device=True).look_on_device
    assert not ClipDataset(records, 32, MEAN, STD, train=False, look_jitter=1.0,
                           look_on_device=True).look_on_device


def test_seg_training_then_frozen_inside_amagi(tmp_path: Path) -> None:
    root = tmp_path / "data"
    ann = _write_dataset(root)
    pairs = find_seg_pairs(root)
    assert len(pairs) == 8 and pairs[0].image.parent.name == "frames"
    seg = build_model("amagi_tiny", input_size=32).backbone.seg_model
    seg_ds = SegDataset(pairs, 32, MEAN, STD, seed=1, crop=32)
    image, target = seg_ds[1]
    assert image.shape == (3, 32, 32) and target.dtype == torch.int64 and target.sum() > 0
    res = train_seg_model(seg, seg_ds, SegTrainConfig(out_dir=str(tmp_path / "seg"), epochs=3,
                                                      batch_size=4, lr=0.02, seed=1))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    amagi = build_model("amagi_tiny", input_size=32)
    report = load_checkpoint(amagi, res.checkpoint, kind="segmentation")
    assert report.ok and report.kind.value == "segmentation"
    before = {k: v.clone() for k, v in amagi.backbone.seg_model.state_dict().items()}
    ds = ClipDataset(read_annotation_list(ann), 32, MEAN, STD, seed=2)
    train_clip_model(amagi, ds, _clip_cfg(tmp_path / "amagi", 1))
    after = amagi.backbone.seg_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN stats
    assert not any(p.requires_grad for p in amagi.backbone.seg_model.parameters())
    for p in amagi.backbone.seg_model.parameters():
        p.requires_grad_(True)
    with pytest.raises(ModelError, match="must be frozen"):
        train_clip_model(amagi, ds, _clip_cfg(tmp_path / "x", 1))


def test_relabelled_bleeding_clips_count_as_normal_in_balanced_weights() -> None:
    # 6 normal, 4 bleeding of which half become still negatives: 8 normal, 2 bleeding.
    assert balanced_class_weights([0] * 6 + [1] * 4, relabelled=0.5) == (
        round(10 / 16, 4), round(10 / 4, 4))


def test_freeze_clip_moves_one_frame_rigidly() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    clip = freeze_clip(frame, 8, np.random.default_rng(4), max_speed=1.5, noise=0.0)
    assert clip.shape == (8, 40, 50, 3) and clip.dtype == np.uint8
    # Each frame is the source shifted by whole pixels: its interior matches somewhere.
    for t in range(8):
        found = [(dy, dx) for dy in range(-7, 8) for dx in range(-7, 8)
                 if np.array_equal(clip[t, 8:-8, 8:-8], frame[8 + dy:32 + dy, 8 + dx:42 + dx])]
        assert len(found) == 1, t
    assert not np.array_equal(clip[0], clip[-1])  # it moves, like a camera
    assert np.array_equal(clip, freeze_clip(frame, 8, np.random.default_rng(4), noise=0.0))


def test_freeze_clip_adds_fresh_noise_to_every_frame() -> None:
    """By default each frame carries its own small noise on top of the same rigid shift, so
    a frozen clip is not given away by pixels that never change."""
    frame = np.full((40, 50, 3), 120, np.uint8)
    exact = freeze_clip(frame, 8, np.random.default_rng(4), noise=0.0)
    noisy = freeze_clip(frame, 8, np.random.default_rng(4))
    diff = noisy.astype(float) - exact
    assert 0.3 < np.abs(diff).mean() < 3.0 and abs(diff.mean()) < 0.2
    assert not np.array_equal(noisy[0] - exact[0], noisy[1] - exact[1])
    assert np.array_equal(noisy, freeze_clip(frame, 8, np.random.default_rng(4)))


def test_still_negatives_relabel_only_bleeding_clips(tmp_path: Path) -> None:
    records = read_annotation_list(_write_dataset(tmp_path))
    plain = ClipDataset(records, 32, MEAN, STD, train=True, seed=3)
    still = ClipDataset(records, 32, MEAN, STD, train=True, seed=3, still_negatives=0.9)
    seen = [still[i][1] for i in range(len(records))]
    relabelled = [i for i, r in enumerate(records) if r.label == 1 and seen[i] == 0]
    assert all(seen[i] == 0 for i, r in enumerate(records) if r.label == 0)
    assert relabelled  # at 0.9 some of the 4 bleeding clips became still negatives
    for i in relabelled:
        x, _ = still[i]
        # the still clip's frames are shifted copies of one frame: frame-to-frame change is
        # a translation, so every frame has the same mean colour up to the replicated border
        means = x.mean(dim=(2, 3))
        assert (means - means[:, :1]).abs().max() < 0.25
        assert not torch.equal(x, plain[i][0])
    val = ClipDataset(records, 32, MEAN, STD, train=False, still_negatives=0.9)
    assert [val[i][1] for i in range(len(records))] == [r.label for r in records]
    with pytest.raises(ValueError, match="still_negatives"):
        ClipDataset(records, 32, MEAN, STD, still_negatives=1.0)


def test_threads_apply_to_the_training_only(tmp_path: Path) -> None:
    """``threads`` sets torch's process-wide thread count for the training alone: the
    caller's count is back afterwards, and after a training that fails."""
    from dataclasses import replace

    records = read_annotation_list(_write_dataset(tmp_path / "data", 1, 2))
    before = torch.get_num_threads()
    seen: list[int] = []

    class Watched(ClipDataset):
        def __getitem__(self, i):
            seen.append(torch.get_num_threads())
            return super().__getitem__(i)

    ds = Watched(records, 32, MEAN, STD, seed=5)
    cfg = replace(_clip_cfg(tmp_path / "t", 1), threads=before + 1)
    train_clip_model(build_model("slowfast_tiny", input_size=32), ds, cfg, meta={})
    assert seen and set(seen) == {before + 1}
    assert torch.get_num_threads() == before
    with pytest.raises(ModelError):
        train_clip_model(build_model("slowfast_tiny", input_size=32), ds,
                         replace(cfg, epochs=0), meta={})
    assert torch.get_num_threads() == before


def test_torch_threads_restores_the_count_even_on_error() -> None:
    from models.threads import torch_threads

    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(KeyError), torch_threads(before + 2):
        assert torch.get_num_threads() == before + 2
        raise KeyError("x")
    assert torch.get_num_threads() == before


def _still_clip(length: int = 4) -> np.ndarray:
    """``uint8 (T, H, W, 3)``: one textured frame, repeated (nothing changes over time)."""
    rng = np.random.default_rng(5)
    frame = rng.integers(30, 220, (32, 40, 3)).astype(np.uint8)
    return np.repeat(frame[None], length, axis=0)


def test_look_jitter_changes_the_look_not_what_changes_over_time() -> None:
    from models.training.augment import ClipAugment

    still = _still_clip()
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    plain = ClipAugment(32, mean, std, look_jitter=0.0)
    looks = ClipAugment(32, mean, std, look_jitter=1.0)
    shifts, steadiness = [], []
    for seed in range(12):
        a, b = plain(still, seed), looks(still, seed)  # same crop and flip, other look
        assert a.shape == b.shape == (3, 4, 32, 32)
        assert float(b.min()) >= 0.0 and float(b.max()) <= 255.0
        shifts.append(float((b - a).abs().mean()))
        # a still clip stays still: frames differ by the fresh noise alone (σ ≤ 3 levels)
        steadiness.append(float((b[:, 1:] - b[:, :1]).abs().mean()))
        assert torch.equal(b, looks(still, seed))  # one seed, one look
    assert max(shifts) > 10.0 and min(shifts) < max(shifts) / 2  # looks vary from clip to clip
    assert max(steadiness) < 4.0
    assert torch.equal(plain(still, 3), ClipAugment(32, mean, std)(still, 3))  # 0 = off


def test_normalisation_is_monais_channel_wise_normalisation_bit_for_bit() -> None:
    """Clips and stacked segmentation frames are normalised by one broadcast, checked here
    against MONAI's ``NormalizeIntensity(channel_wise=True)`` over the 3·T (3·K) channels,
    which the augmentations used before (its per-channel loop cost 40 % of a clip's load)."""
    from monai.transforms import NormalizeIntensity

    from models.training.augment import ClipAugment, SegAugment, resize_short_centre_crop

    rng = np.random.default_rng(4)
    mean, std = (117.1168392375, 75.27494787, 67.37629650299999), (58.4, 57.12, 57.375)
    frames = rng.integers(0, 256, (6, 40, 52, 3), dtype=np.uint8)
    flat = torch.as_tensor(frames).permute(3, 0, 1, 2).float().reshape(18, 40, 52)
    ref = NormalizeIntensity(subtrahend=np.repeat(np.float32(mean), 6),
                             divisor=np.repeat(np.float32(std), 6), channel_wise=True)(
        resize_short_centre_crop(flat, 32))
    got = ClipAugment(32, mean, std, train=False)(frames)
    assert got.shape == (3, 6, 32, 32)
    assert torch.equal(got, torch.as_tensor(ref).as_subclass(torch.Tensor).reshape(3, 6, 32, 32))
    rgb = rng.integers(0, 256, (32, 40, 9), dtype=np.uint8)  # 3 stacked frames
    aug = SegAugment(32, mean, std, train=False)
    image = aug._scaled(rgb, np.zeros((32, 40), bool))[0][:, :, 4:36]  # the centre crop
    ref = NormalizeIntensity(subtrahend=list(mean) * 3, divisor=list(std) * 3,
                             channel_wise=True)(image.clone())
    got, _ = aug(rgb, np.zeros((32, 40), bool))
    assert torch.equal(got, torch.as_tensor(ref).as_subclass(torch.Tensor))


def test_look_jitter_keeps_each_frame_its_own_colours() -> None:
    from models.training.augment import LookJitter

    # frame t is a flat grey of level 40 + 40 t: the same monotone change of look, applied to
    # every frame, keeps the frames in order in every channel
    x = torch.stack([torch.full((3, 16, 16), 40.0 + 40.0 * t) for t in range(5)])
    for seed in range(8):
        y = LookJitter(1.0)(x, np.random.default_rng(seed))
        means = y.mean(dim=(2, 3))  # (frames, channels)
        assert (means[1:] > means[:-1]).all(), seed
    with pytest.raises(ValueError, match="strength"):
        LookJitter(2.5)
    with pytest.raises(ValueError, match="frames, 3, H, W"):
        LookJitter(1.0)(torch.zeros(6, 8, 8), np.random.default_rng(0))


def test_seg_look_jitter_leaves_crops_and_masks_alone() -> None:
    from models.training.augment import SegAugment

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (40, 48, 9)).astype(np.uint8)  # 3 stacked frames
    mask = np.zeros((40, 48), bool)
    mask[10:20, 12:30] = True
    args = (32, (100.0, 90.0, 80.0), (50.0, 50.0, 50.0))
    for seed in range(4):
        img0, t0 = SegAugment(*args, crop=24)(rgb, mask, seed)
        img1, t1 = SegAugment(*args, crop=24, look_jitter=1.0)(rgb, mask, seed)
        assert torch.equal(t0, t1) and img0.shape == img1.shape == (9, 24, 24)
        assert not torch.equal(img0, img1)


def _moving_bar_stack() -> tuple[np.ndarray, np.ndarray]:
    """5 stacked 64x80 frames: grey tissue, a bright bar moving right 2 pixels a frame in
    columns 50-68, and a still bleeding patch (the mask) far from it."""
    rgb = np.full((64, 80, 15), 100, np.uint8)
    for k in range(5):
        rgb[:, 50 + 2 * k:60 + 2 * k, 3 * k:3 * k + 3] = 200
    mask = np.zeros((64, 80), bool)
    mask[10:20, 5:15] = True
    return rgb, mask


def plain_and_hard_crops(**hard_negatives: float):
    """16-pixel crops of frames at scale 64, unnormalised, half on bleeding: the plain
    augment and the same with ``hard_negatives`` (``moving_negatives=0.5`` ...)."""
    from models.training.augment import SegAugment

    args = (64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return (SegAugment(*args, crop=16, pos_fraction=0.5),
            SegAugment(*args, crop=16, pos_fraction=0.5, **hard_negatives))


def test_moving_negatives_centre_a_share_of_crops_on_what_moves_but_is_not_blood() -> None:
    from models.training.augment import SegAugment

    rgb, mask = _moving_bar_stack()
    args = (64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    plain, hard = plain_and_hard_crops(moving_negatives=0.5)

    def on_the_bar(aug) -> int:
        hits = 0
        for seed in range(200):
            x, t = aug(rgb, mask, seed)
            assert x.shape == (15, 16, 16) and t.shape == (16, 16)
            change = (x.reshape(5, 3, 16, 16) - x.reshape(5, 3, 16, 16)[2]).abs().amax()
            hits += int(change > 0 and t.sum() == 0)
        return hits

    # the bar is a sixth of the non-bleeding area: random background crops seldom land on
    # it; half the crops now centre on it, and none of those holds bleeding
    assert on_the_bar(plain) < 50 and on_the_bar(hard) > 100
    again = SegAugment(*args, crop=16, pos_fraction=0.5, moving_negatives=0.5)
    for seed in range(5):  # seeded: the same sample gives the same crop
        assert all(torch.equal(a, b) for a, b in zip(hard(rgb, mask, seed),
                                                     again(rgb, mask, seed), strict=True))


def test_moving_negatives_leave_one_frame_and_still_stacks_to_the_usual_crops() -> None:
    from models.training.augment import SegAugment

    rgb, mask = _moving_bar_stack()
    still = np.repeat(rgb[..., 6:9], 5, axis=-1)  # the middle frame five times: nothing moves
    args = (64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    for seed in range(6):
        for image in (still, rgb[..., 6:9]):  # a still stack, and a one-frame segmenter's
            a = SegAugment(*args, crop=16)(image, mask, seed)
            b = SegAugment(*args, crop=16, moving_negatives=0.9)(image, mask, seed)
            assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="moving_negatives"):
        SegAugment(*args, moving_negatives=1.0)


def test_hard_pixels_add_the_mean_of_the_worst_pixels() -> None:
    """OHEM: the loss adds the weighted mean of the largest per-pixel losses to the mean
    over every pixel, computed here from the definition (each pixel's -w·log p of its
    class, by hand)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=g) * 2
    target = (torch.rand(2, 8, 8, generator=g) > 0.9).long()
    weights = torch.tensor([0.4, 1.0])
    logp = torch.log_softmax(logits, dim=1)
    nll = -logp.gather(1, target[:, None])[:, 0]  # (2, 8, 8)
    w = weights[target]
    one = [torch.zeros(2, 2, 8, 8), logits]  # [aux, main]; aux weighted 0 below
    order = (w * nll).flatten().argsort(descending=True)[:13]  # 10 % of 128 pixels
    hard = (w * nll).flatten()[order].sum() / w.flatten()[order].sum()
    everyone = (w * nll).sum() / w.sum()
    got = seg_loss(one, target, weights.tolist(), aux_weights=(0.0, 1.0), hard_pixels=0.1)
    torch.testing.assert_close(got, everyone + hard)
    torch.testing.assert_close(seg_loss(one, target, weights.tolist(), aux_weights=(0.0, 1.0)),
                               everyone)
    assert hard > everyone
    with pytest.raises(ValueError, match="hard_pixels"):
        seg_loss(one, target, hard_pixels=1.0)


def _blob_logits(value: float, size: int = 16, background: float = -4.0) -> torch.Tensor:
    """(1, 2, size, size) logits whose bleeding margin is ``background`` everywhere but a
    3x3 block of margin ``value`` at (5..7, 5..7)."""
    margin = torch.full((size, size), background)
    margin[5:8, 5:8] = value
    return torch.stack([torch.zeros(size, size), margin])[None]


def test_the_crop_peak_loss_reads_the_largest_3x3_margin_per_crop() -> None:
    """Each crop's peak is its largest 3x3 mean margin (the block's own value here), scored
    with binary cross-entropy against whether its mask holds any bleeding, by hand:
    -log σ(v) for a crop with bleeding, -log(1 - σ(v)) for one without."""
    logits = torch.cat([_blob_logits(2.0), _blob_logits(-1.0)])
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[0, 12, 12] = 1  # one bleeding pixel anywhere makes a bleeding crop
    sig = torch.sigmoid(torch.tensor([2.0, -1.0]))
    want = (-torch.log(sig[0]) - torch.log(1 - sig[1])) / 2
    torch.testing.assert_close(crop_peak_loss(logits, target), want)
    # in seg_loss: the per-pixel mean plus the weight times this, per output
    ce = seg_loss([torch.zeros_like(logits), logits], target, aux_weights=(0.0, 1.0))
    got = seg_loss([torch.zeros_like(logits), logits], target, aux_weights=(0.0, 1.0),
                   peak_weight=0.5)
    torch.testing.assert_close(got, ce + 0.5 * want)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="peak_weight"):
            seg_loss([logits, logits], target, peak_weight=bad)


def test_the_crop_peak_loss_weighs_a_small_source_as_a_large_pool() -> None:
    """The per-pixel mean weighs a missed 4-pixel source far less than a missed 400-pixel
    pool (over 20× less here); the peak loss weighs both crops alike (one crop, one peak)."""
    logits = torch.zeros(2, 2, 32, 32)
    logits[:, 1] = -3.0  # both crops say "no bleeding" everywhere
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[0, 10:12, 10:12] = 1  # 4 pixels
    target[1, 6:26, 6:26] = 1  # 400 pixels
    peaks = [crop_peak_loss(logits[i:i + 1], target[i:i + 1]) for i in range(2)]
    torch.testing.assert_close(peaks[0], peaks[1])
    pixels = [seg_loss([logits[i:i + 1]] * 2, target[i:i + 1], aux_weights=(0.0, 1.0))
              for i in range(2)]
    assert pixels[1] > 20 * pixels[0]
