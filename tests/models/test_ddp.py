"""Data-parallel training (DDP) with the gloo backend: 2 CPU processes on a tiny data set.

The library loops are driven by ``torch.multiprocessing.spawn`` (each rank reports a
checksum of its parameters); ``amagi train clip`` itself runs under torchrun as a
subprocess. The launch errors are checked in-process, before any process group exists.
"""

from __future__ import annotations

import faulthandler
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from amagi_plugin.cli import Context, main
from amagi_plugin.errors import ExitCode
from models import build_model, load_checkpoint, read_checkpoint
from models.training import (
    ClipDataset,
    ClipTrainConfig,
    SegDataset,
    SegTrainConfig,
    find_seg_pairs,
    read_annotation_list,
    train_clip_model,
    train_seg_model,
)
from models.training.distributed import (
    DistributedError,
    LaunchInfo,
    launch_info,
    leave,
    process_device,
    process_group,
)
from tests.models.test_training import MEAN, STD, _write_dataset

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _param_checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


#: One spawn, three runs on the same 2 processes: uninterrupted, stopped after epoch 1,
#: then resumed (``(name, out folder, stop_after_epoch, resume)``).
PHASES = (("full", "full", None, False), ("first", "split", 1, False),
          ("resumed", "split", None, True))


def _train_rank(rank: int, port: int, ann: str, tmp: str) -> None:
    """One process of a 2-rank run: AMAGI (frozen segmentation net inside) on 8 clips.

    It ends as ``amagi``'s processes do after a process group (``distributed.leave``); a
    crash on the way leaves its Python stacks in ``faults-rank*.txt`` for the fixture.
    """
    faults = open(Path(tmp, f"faults-rank{rank}.txt"), "w")  # noqa: SIM115 - kept to the end
    faulthandler.enable(faults, all_threads=True)
    _work(rank, port, ann, tmp)
    leave(0)


def _work(rank: int, port: int, ann: str, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with process_group(LaunchInfo(rank, WORLD, rank), "cpu", "gloo"):
        for name, out, stop, resume in PHASES:
            torch.manual_seed(100 + rank)  # different initial weights: DDP broadcasts rank 0's
            model = build_model("amagi_tiny", input_size=32)
            seg_before = _param_checksum(model.backbone.seg_model)
            ds = ClipDataset(read_annotation_list(ann), 32, MEAN, STD, seed=5)
            cfg = ClipTrainConfig(out_dir=str(Path(tmp, out)), epochs=3, batch_size=2,
                                  lr=0.02, warmup_epochs=0.5, seed=5, resume=resume,
                                  stop_after_epoch=stop, class_weights=(1.0, 1.0))
            result = train_clip_model(model, ds, cfg, meta={"arch": "amagi_tiny"})
            Path(tmp, f"{name}-rank{rank}.json").write_text(json.dumps({
                "params": _param_checksum(model), "history": result.history,
                "seg_before": seg_before, "seg_after": _param_checksum(model.backbone.seg_model)
            }))
        # The segmentation net (HRNet-OCR, [aux, main] outputs) on the frame/mask pairs.
        seg = build_model("amagi_tiny", input_size=32).backbone.seg_model
        seg_ds = SegDataset(find_seg_pairs(Path(ann).parent), 32, MEAN, STD, seed=1, crop=32)
        seg_cfg = SegTrainConfig(out_dir=str(Path(tmp, "seg")), epochs=2, batch_size=2,
                                 lr=0.02, seed=1)
        seg_result = train_seg_model(seg, seg_ds, seg_cfg)
        Path(tmp, f"seg-rank{rank}.json").write_text(json.dumps({
            "params": _param_checksum(seg), "history": seg_result.history}))
        # Ranks that computed other class weights (other data) stop before the first step.
        cfg = ClipTrainConfig(out_dir=str(Path(tmp, "disagree")), class_weights=(1.0, 2.0 + rank))
        try:
            train_clip_model(build_model("amagi_tiny", input_size=32), ds, cfg)
        except DistributedError as e:
            Path(tmp, f"disagree-rank{rank}.txt").write_text(str(e))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """8 clips of 2 patients, half of them bleeding (tests.models.test_training)."""
    return _write_dataset(tmp_path_factory.mktemp("ddp-data"))


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    tmp = tmp_path_factory.mktemp("ddp")
    try:
        mp.spawn(_train_rank, args=(_free_port(), str(data), str(tmp)), nprocs=WORLD,
                 join=True)
    except mp.ProcessExitedException as e:  # a rank died: show where, if Python knew
        dumps = {p.name: p.read_text()[-2000:] for p in sorted(tmp.glob("faults-rank*.txt"))}
        raise AssertionError(f"{e}; {dumps}") from e
    return tmp, {name: [json.loads((tmp / f"{name}-rank{r}.json").read_text())
                        for r in range(WORLD)] for name, *_ in PHASES}


def test_two_processes_stay_in_step_and_write_one_checkpoint(runs) -> None:
    tmp, reports = runs
    ranks, out = reports["full"], tmp / "full"
    assert ranks[0]["params"] == ranks[1]["params"]  # every step applied the same gradient
    # the logged loss and accuracy are global figures (only the seconds are each rank's own)
    assert [{**h, "seconds": 0} for h in ranks[0]["history"]] == \
        [{**h, "seconds": 0} for h in ranks[1]["history"]]
    # the frozen segmentation net is rank 0's on every rank, and untouched by training
    assert ranks[0]["seg_before"] == ranks[0]["seg_after"] == ranks[1]["seg_after"]
    assert ranks[1]["seg_before"] != ranks[1]["seg_after"]
    losses = [h["loss"] for h in ranks[0]["history"]]
    assert losses[-1] < losses[0], losses
    assert sorted(p.name for p in out.iterdir()) == ["latest.pth"]
    ck = read_checkpoint(out / "latest.pth")
    assert ck["meta"]["world_size"] == WORLD and ck["meta"]["epoch"] == 3
    assert not any(k.startswith("module.") for k in ck["state_dict"])
    fresh = build_model("amagi_tiny", input_size=32)
    assert load_checkpoint(fresh, out / "latest.pth").ok
    assert _param_checksum(fresh) == ranks[0]["params"]


def test_an_interrupted_distributed_run_resumes_exactly(runs) -> None:
    tmp, reports = runs
    assert [h["epoch"] for h in reports["first"][0]["history"]] == [1]
    resumed, full = reports["resumed"], reports["full"]
    assert [h["epoch"] for h in resumed[0]["history"]] == [1, 2, 3]
    assert resumed[0]["params"] == resumed[1]["params"]
    assert [h["loss"] for h in resumed[0]["history"]] == pytest.approx(
        [h["loss"] for h in full[0]["history"]], rel=1e-5)
    done = read_checkpoint(tmp / "split" / "latest.pth")["state_dict"]
    for k, v in read_checkpoint(tmp / "full" / "latest.pth")["state_dict"].items():
        assert torch.allclose(v.float(), done[k].float(), atol=1e-6), k


def test_the_segmentation_net_trains_in_step_too(runs) -> None:
    tmp, _ = runs
    ranks = [json.loads((tmp / f"seg-rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0]["params"] == ranks[1]["params"]
    assert [h["loss"] for h in ranks[0]["history"]] == [h["loss"] for h in ranks[1]["history"]]
    assert sorted(p.name for p in (tmp / "seg").iterdir()) == ["latest.pth"]
    amagi = build_model("amagi_tiny", input_size=32)
    assert load_checkpoint(amagi, tmp / "seg" / "latest.pth", kind="segmentation").ok
    assert _param_checksum(amagi.backbone.seg_model) == ranks[0]["params"]


def test_ranks_that_disagree_on_class_weights_all_stop(runs) -> None:
    tmp, _ = runs
    for r in range(WORLD):
        msg = (tmp / f"disagree-rank{r}.txt").read_text()
        assert "class_weights: rank 0 (1.0, 2.0), rank 1 (1.0, 3.0)" in msg, msg
        assert "items" not in msg and "labels" not in msg
    assert not (tmp / "disagree" / "latest.pth").exists()


def test_amagi_train_clip_under_torchrun(data: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(WORLD), "-m", "amagi_plugin.cli", "train", "clip", "--arch", "slowfast_tiny",
           "--annotations", str(data), "-od", "out", "--epochs", "2", "--batch-size", "2",
           "--input-size", "32", "--device", "cpu", "--class-weights", "balanced",
           "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("slowfast_tiny trained on 8 clips (4 bleeding)") == 1, proc.stdout
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["latest.pth", "train.log"]
    text = (out / "train.log").read_text()
    assert text.count("clip epoch 1/2") == 1 and text.count("clip epoch 2/2") == 1
    ck = read_checkpoint(out / "latest.pth")
    assert ck["meta"]["world_size"] == WORLD and ck["meta"]["class_weights"] == [1.0, 1.0]
    assert ck["meta"]["config"]["batch_size"] == 2  # per process, as given
    assert load_checkpoint(build_model("slowfast_tiny", input_size=32), out / "latest.pth").ok


TORCHRUN_ENV = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500"}


def _cli(tmp: Path, environ: dict[str, str], *extra: str) -> tuple[int, str]:
    ctx = Context(stdout=io.StringIO(), stderr=io.StringIO(), environ=environ, cwd=tmp)
    code = main(["train", "clip", "--arch", "slowfast_tiny", "--annotations", "none.txt",
                 "-od", "out", "--no-progress", *extra], ctx=ctx)
    return code, ctx.stderr.getvalue()


@pytest.mark.parametrize(("environ", "extra", "message"), [
    ({"WORLD_SIZE": "2"}, (), "WORLD_SIZE is set but RANK, LOCAL_RANK, MASTER_ADDR, "
     "MASTER_PORT are not: start distributed training with torchrun"),
    ({**TORCHRUN_ENV, "RANK": "2"}, (), "RANK 2 / LOCAL_RANK 0 do not fit WORLD_SIZE 2"),
    (TORCHRUN_ENV, ("--device", "cpu", "--dist-backend", "nccl"),
     "the nccl backend needs CUDA devices, not 'cpu'"),
])
def test_bad_launches_fail_with_one_clear_line(tmp_path: Path, environ, extra, message) -> None:
    code, err = _cli(tmp_path, environ, *extra)
    assert code == ExitCode.BAD_INPUT and message in err, err
    assert not torch.distributed.is_initialized() and not (tmp_path / "out").exists()


def test_launch_info_and_process_device() -> None:
    assert launch_info({}) is None
    info = launch_info({**TORCHRUN_ENV, "RANK": "1", "LOCAL_RANK": "1"})
    assert info == LaunchInfo(1, 2, 1) and not info.is_main
    assert process_device("cpu", info) == "cpu"
    with pytest.raises(DistributedError, match="several processes on one GPU"):
        process_device("cuda:0", info)
    with pytest.raises(DistributedError, match="must be integers"):
        launch_info({**TORCHRUN_ENV, "RANK": "x"})


def test_the_demo_build_refuses_torchrun(tmp_path: Path) -> None:
    ctx = Context(stdout=io.StringIO(), stderr=io.StringIO(), environ=TORCHRUN_ENV, cwd=tmp_path)
    assert main(["train", "demo", "--work-dir", "w", "--dest", "d"], ctx=ctx) == ExitCode.BAD_INPUT
    assert "runs in one process" in ctx.stderr.getvalue()
    assert not (tmp_path / "w").exists()


_EXIT_AFTER = """
import atexit, os, sys
from amagi_plugin.cli import exit_with
atexit.register(lambda: print("teardown ran"))
if sys.argv[1] == "group":
    from models.training.distributed import LaunchInfo, process_group
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
    with process_group(LaunchInfo(0, 1, 0), "cpu", "gloo"):
        pass
print("unterminated line, flushed", end="")
exit_with(3)
"""


@pytest.mark.parametrize("group", [True, False])
def test_a_process_that_ran_a_group_ends_without_teardown(group: bool) -> None:
    """After a process group, ``amagi`` leaves by os._exit (torch's threads may abort the
    interpreter's teardown): its exit code and last output survive, atexit hooks do not
    run; without a group it exits normally."""
    r = subprocess.run([sys.executable, "-c", _EXIT_AFTER, "group" if group else "none",
                        str(_free_port())], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 3, r.stderr[-2000:]
    assert r.stdout.startswith("unterminated line, flushed")
    assert ("teardown ran" in r.stdout) is not group
