"""Checkpoint loading: authors' file layout on disk, strict failures naming keys, the
per-fold segmentation file mapping, and a Kinetics checkpoint as initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import (
    CheckpointError,
    CheckpointKind,
    build_model,
    load_checkpoint,
    map_seg_checkpoint_keys,
    save_checkpoint,
)
from models.checkpoint import compare_state_dicts, extract_state_dict, strip_prefix
from tests.models._reference import manifest


def _randomised(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name)
    with torch.no_grad():  # non-default BN statistics, so buffers are checked too
        for k, t in model.state_dict().items():
            if t.is_floating_point() and "running" in k:
                t.uniform_(0.5, 1.5)
            elif t.dtype == torch.int64:
                t.fill_(seed)
    return model.eval()


def _same(a: torch.nn.Module, b: torch.nn.Module, prefix: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(prefix))


def test_round_trip_through_authors_layout_on_disk(tmp_path):
    src = _randomised("amagi_tiny", 1)
    path = tmp_path / "split1_tiny.pth"
    # the mmcv layout, with numpy scalars in meta as mmcv writes them
    torch.save({"meta": {"epoch": 3, "mmcv_version": "1.7.2", "best_score": np.float64(0.91)},
                "state_dict": src.state_dict(), "optimizer": {"state": {}, "param_groups": []}},
               path)
    dst = _randomised("amagi_tiny", 2)
    assert not _same(src, dst)
    report = load_checkpoint(dst, path)
    assert report.ok and report.kind is CheckpointKind.FULL
    assert report.loaded == list(src.state_dict())
    assert _same(src, dst)
    clips = torch.randn(2, *src.default_cfg.clip_shape)
    with torch.inference_mode():
        assert torch.equal(src(clips), dst(clips))


def test_save_checkpoint_writes_the_same_layout(tmp_path):
    src = _randomised("slowfast_tiny", 3)
    path = save_checkpoint(src, tmp_path / "a" / "m.pth", meta={"arch": "slowfast_tiny"})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"meta", "state_dict", "optimizer"}
    assert raw["meta"] == {"arch": "slowfast_tiny"}
    dst = _randomised("slowfast_tiny", 4)
    load_checkpoint(dst, path)
    assert _same(src, dst)


def test_renamed_key_and_wrong_shape_fail_naming_both(tmp_path):
    model = _randomised("slowfast_tiny", 5)
    sd = dict(model.state_dict())
    sd["backbone.fast_path.layer2.0.conv1.conv.weights"] = sd.pop(
        "backbone.fast_path.layer2.0.conv1.conv.weight")
    sd["cls_head.fc_cls.weight"] = torch.zeros(3, sd["cls_head.fc_cls.weight"].shape[1])
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": sd}, path)
    target = _randomised("slowfast_tiny", 6)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(target, path)
    msg = str(e.value)
    assert "bad.pth" in msg and "\n" not in msg
    assert "1 missing (backbone.fast_path.layer2.0.conv1.conv.weight)" in msg
    assert "1 unexpected (backbone.fast_path.layer2.0.conv1.conv.weights)" in msg
    assert "1 wrong shape (cls_head.fc_cls.weight: checkpoint [3, 144] vs model [2, 144])" in msg
    # nothing was loaded
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    # non-strict loads the rest and reports the three
    report = load_checkpoint(target, path, strict=False)
    assert report.missing == ["backbone.fast_path.layer2.0.conv1.conv.weight"]
    assert report.unexpected == ["backbone.fast_path.layer2.0.conv1.conv.weights"]
    assert report.mismatched == [("cls_head.fc_cls.weight", (3, 144), (2, 144))]
    assert len(report.loaded) == len(before) - 2
    assert torch.equal(target.state_dict()["cls_head.fc_cls.bias"], sd["cls_head.fc_cls.bias"])


def test_message_counts_and_truncates_long_lists():
    model = build_model("slowfast_tiny")
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.fast_path")}
    with pytest.raises(CheckpointError, match=r"\d+ missing \(backbone\.fast_path\.conv1\.conv"
                                              r"\.weight, .*, \+\d+ more\)"):
        load_checkpoint(model, sd)


def test_flat_and_ddp_prefixed_state_dicts():
    src = _randomised("slowfast_tiny", 7)
    dst = build_model("slowfast_tiny")
    load_checkpoint(dst, {"module." + k: v for k, v in src.state_dict().items()})
    assert _same(src, dst)
    assert strip_prefix({"module.a": 1, "b": 2}) == {"a": 1, "b": 2}  # type: ignore[dict-item]


def test_seg_key_mapping_is_the_authors_replace_all():
    t = torch.zeros(1)
    mapped, ignored = map_seg_checkpoint_keys({
        "model.last_layer.0.weight": t,
        "model.conv1.weight": t,
        "model.stage2.0.branches.0.0.bn1.weight": t,
        "loss.criterion.weight": t,
    })
    assert list(mapped) == ["backbone.seg_model.aux_head.0.weight",
                            "backbone.seg_model.conv1.weight",
                            "backbone.seg_model.stage2.0.branches.0.0.bn1.weight"]
    assert ignored == ["loss.criterion.weight"]
    # replace-all, not a prefix strip (as the authors' str.replace)
    mapped, _ = map_seg_checkpoint_keys({"xmodel.last_layermodel.y": t})
    assert list(mapped) == ["backbone.seg_model.xaux_heady"]


def test_per_fold_segmentation_file_loads_into_seg_model_only(tmp_path):
    src = _randomised("amagi_tiny", 8)
    seg_sd = {k.removeprefix("backbone.seg_model."): v for k, v in src.state_dict().items()
              if k.startswith("backbone.seg_model.")}
    flat = {"model." + k.replace("aux_head", "last_layer"): v for k, v in seg_sd.items()}
    flat["loss.criterion.weight"] = torch.tensor([0.4, 1.0])
    path = tmp_path / "split34_ocr_best.pth"
    torch.save(flat, path)
    dst = _randomised("amagi_tiny", 9)
    report = load_checkpoint(dst, path)
    assert report.kind is CheckpointKind.SEGMENTATION and report.ok
    assert len(report.loaded) == len(seg_sd)
    assert report.ignored == ["loss.criterion.weight"]
    assert _same(src, dst, "backbone.seg_model.")
    assert not _same(src, dst, "backbone.slow_path.")  # the rest is untouched
    frames = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(src.segment(frames), dst.segment(frames))
    # a wrong shape in the seg file is an error by default, a report entry otherwise
    flat["model.cls_head.weight"] = torch.zeros(5, 5, 1, 1)
    torch.save(flat, path)
    with pytest.raises(CheckpointError, match=r"wrong shape \(backbone\.seg_model\.cls_head"):
        load_checkpoint(dst, path)
    # and a plain SlowFast has nowhere to put it
    with pytest.raises(CheckpointError, match="segmentation"):
        load_checkpoint(build_model("slowfast_tiny"), path)


def test_a_whole_models_checkpoint_read_as_a_segmentation_one_gives_its_segmenter_only(
        tmp_path):
    """``kind="segmentation"`` on a whole model's file (``amagi train probe --seg-checkpoint
    models/weights/demo/...``): its ``backbone.seg_model.*`` keys load, the rest is reported
    as ignored and left untouched."""
    src = _randomised("amagi_tiny", 8)
    path = tmp_path / "whole.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    dst = _randomised("amagi_tiny", 9)
    report = load_checkpoint(dst, path, kind="segmentation")
    assert report.kind is CheckpointKind.SEGMENTATION and report.ok
    seg = [k for k in src.state_dict() if k.startswith("backbone.seg_model.")]
    assert sorted(report.loaded) == sorted(seg)
    assert report.ignored and not any(k.startswith("backbone.seg_model.") for k in report.ignored)
    assert _same(src, dst, "backbone.seg_model.")
    assert not _same(src, dst, "backbone.slow_path.")


def test_kinetics_checkpoint_initialises_amagi_and_reports_the_misfits():
    k400 = _randomised("slowfast_r50", 10)
    amagi = build_model("amagi_sf50")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(amagi, k400.state_dict())
    report = load_checkpoint(amagi, {"state_dict": k400.state_dict()}, strict=False)
    lateral = [f"backbone.slow_path.{n}.conv.weight"
               for n in ("conv1_lateral", "layer1_lateral", "layer2_lateral", "layer3_lateral")]
    assert [k for k, *_ in report.mismatched] == [*lateral, "cls_head.fc_cls.weight",
                                                   "cls_head.fc_cls.bias"]
    assert report.mismatched[0][1:] == ((16, 8, 7, 1, 1), (16, 8, 5, 1, 1))
    assert report.unexpected == []  # every K400 key exists in AMAGI (reference README)
    assert "k400_init_compatibility" in manifest("amagi_sf50")
    assert all(k.startswith(("backbone.seg_model.", "cls_head.")) for k in report.missing)
    assert _same(k400, amagi, "backbone.fast_path.")


@pytest.mark.parametrize("content", [b"", b"not a pickle at all"])
def test_unreadable_files(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(build_model("slowfast_tiny"), path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(build_model("slowfast_tiny"), tmp_path / "missing.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": _Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(build_model("slowfast_tiny"), path)


def test_not_a_state_dict():
    with pytest.raises(CheckpointError, match="non-tensor"):
        extract_state_dict({"state_dict": {"a": 1}})
    with pytest.raises(CheckpointError, match="no state dict"):
        extract_state_dict([1, 2])
    with pytest.raises(CheckpointError, match="kind"):
        load_checkpoint(build_model("slowfast_tiny"), {"a": torch.zeros(1)}, kind="k400")
    with pytest.raises(CheckpointError, match="neither"):
        load_checkpoint(build_model("slowfast_tiny"), {"a": torch.zeros(1)})


def test_compare_state_dicts_is_pure():
    a = {"x": torch.zeros(2), "y": torch.zeros(3)}
    b = {"x": torch.zeros(2), "y": torch.zeros(4), "z": torch.zeros(1)}
    r = compare_state_dicts(a, b)
    assert (r.loaded, r.missing, r.unexpected, r.mismatched) == (["x"], [], ["z"],
                                                                 [("y", (4,), (3,))])
    assert a["y"].shape == (3,)
