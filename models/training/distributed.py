"""Data-parallel training under torchrun: one process per GPU (or per CPU worker).

torchrun (``python -m torch.distributed.run``) starts the processes and sets ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`launch_info` reads them
and :func:`process_group` initialises the default process group around a block (nccl for
CUDA devices, gloo on the CPU) and destroys it afterwards. The training loops of
:mod:`models.training.loops` notice an initialised group (:func:`world`) and then wrap the
model in ``DistributedDataParallel``, shard each epoch with a ``DistributedSampler``, sum
the logged loss and accuracy over the ranks and write checkpoints on rank 0 only. Without
a process group none of this is used.

A process that ran a group leaves through :func:`leave` (``os._exit`` once its streams are
flushed) rather than through the interpreter's teardown: with torch 2.13's gloo backend a rank
now and then aborted there (SIGABRT, "terminate called without an active exception", no
Python frame) after the group was destroyed and every file written: once in a CI run of the
test suite, once in 131 bare two-rank runs on 2 loaded cores. torchrun then reports a failed
run whose training had finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from models.errors import ModelError

__all__ = ["BACKENDS", "DistributedError", "LaunchInfo", "all_sum", "barrier",
           "broadcast_object", "check_same", "choose_backend", "digest", "launch_info", "leave",
           "process_device", "process_group", "ran_group", "world"]

#: ``--dist-backend`` values; ``auto`` is nccl for CUDA devices and gloo on the CPU.
BACKENDS = ("auto", "nccl", "gloo")
_LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_ran_group = False  # set once this process has initialised a process group


class DistributedError(ModelError):
    """The torchrun environment, device or backend does not allow distributed training."""


@dataclass(frozen=True)
class LaunchInfo:
    """This process's place among the ones torchrun started."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and prints."""
        return self.rank == 0


def launch_info(environ: Mapping[str, str]) -> LaunchInfo | None:
    """The torchrun variables of ``environ``, or None when ``WORLD_SIZE`` is not set.

    Raises
    ------
    DistributedError
        ``WORLD_SIZE`` is set but another variable is missing or out of range.
    """
    if "WORLD_SIZE" not in environ:
        return None
    missing = [k for k in _LAUNCH_ENV if not environ.get(k)]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"not: start distributed training with torchrun (python -m torch.distributed.run), "
            f"which sets them all")
    try:
        world, rank, local = (int(environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except ValueError:
        raise DistributedError(
            f"WORLD_SIZE, RANK and LOCAL_RANK must be integers, got "
            f"{environ['WORLD_SIZE']!r}, {environ['RANK']!r}, {environ['LOCAL_RANK']!r}"
        ) from None
    if world < 1 or not 0 <= rank < world or not 0 <= local < world:
        raise DistributedError(f"RANK {rank} / LOCAL_RANK {local} do not fit WORLD_SIZE {world}")
    return LaunchInfo(rank, world, local)


def process_device(device: str, info: LaunchInfo) -> str:
    """This process's device: ``cuda`` becomes ``cuda:LOCAL_RANK``, ``cpu`` stays.

    Raises
    ------
    DistributedError
        An explicit ``cuda:N`` other than ``cuda:LOCAL_RANK`` (the processes of a host
        would share one GPU), or fewer visible GPUs than processes on this host.
    """
    if not device.startswith("cuda"):
        return device
    target = f"cuda:{info.local_rank}"
    if device not in ("cuda", target):
        raise DistributedError(
            f"--device {device} under torchrun would put several processes on one GPU: "
            f"give --device cuda (or auto) and each process uses cuda:LOCAL_RANK")
    visible = torch.cuda.device_count()
    if info.local_rank >= visible:
        raise DistributedError(
            f"LOCAL_RANK {info.local_rank} needs GPU {info.local_rank} but {visible} "
            f"{'is' if visible == 1 else 'are'} visible: start at most {visible} processes "
            f"per host (--nproc_per_node)")
    return target


def choose_backend(backend: str, device: str) -> str:
    """``auto`` → nccl for a CUDA device, gloo on the CPU; the choice is checked.

    Raises
    ------
    DistributedError
        Unknown backend, nccl with a CPU device, or a backend this torch build lacks.
    """
    if backend not in BACKENDS:
        raise DistributedError(f"unknown distributed backend {backend!r}: use one of "
                               f"{', '.join(BACKENDS)}")
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    cuda = device.startswith("cuda")
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl":
        if not cuda:
            raise DistributedError(f"the nccl backend needs CUDA devices, not {device!r}: give "
                                   f"--device cuda, or --dist-backend gloo on the CPU")
        if not dist.is_nccl_available():
            raise DistributedError("this torch build has no NCCL: use --dist-backend gloo")
    elif not dist.is_gloo_available():
        raise DistributedError("this torch build has no gloo backend")
    return backend


@contextlib.contextmanager
def process_group(info: LaunchInfo, device: str, backend: str = "auto",
                  timeout_s: float = 1800.0) -> Iterator[str]:
    """Initialise the default process group for the block (yields the backend's name).

    The rendezvous is torchrun's (``env://``: ``MASTER_ADDR``/``MASTER_PORT`` of the
    process environment). A CUDA device becomes the process's current device first.
    """
    backend = choose_backend(backend, device)
    if dist.is_initialized():
        raise DistributedError("a torch.distributed process group is already initialised")
    bound = None
    if device.startswith("cuda"):
        bound = torch.device(device)
        torch.cuda.set_device(bound)
    # device_id binds the group to this process's GPU (barriers and object collectives use it)
    dist.init_process_group(backend, init_method="env://", rank=info.rank,
                            world_size=info.world_size, timeout=timedelta(seconds=timeout_s),
                            device_id=bound if backend == "nccl" else None)
    global _ran_group
    _ran_group = True
    try:
        yield backend
    finally:
        dist.destroy_process_group()


def ran_group() -> bool:
    """Whether this process has initialised a process group (then it ends by :func:`leave`)."""
    return _ran_group


def leave(code: int) -> NoReturn:
    """End the process with ``code`` without the interpreter's teardown (module docstring).

    Log handlers are closed and the standard streams flushed first; files written through
    ``with`` blocks are closed already. Only for a process's last step.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def world() -> tuple[int, int] | None:
    """``(rank, world_size)`` of the initialised default process group, else None."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if world() is not None:
        dist.barrier()


def all_sum(values: Sequence[float], device: torch.device | str) -> list[float]:
    """Sum each value over the ranks (float64, one collective)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; tensors arrive on the CPU)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def digest(values: Sequence[Any]) -> str:
    """Short hash of a JSON-able sequence (labels), to compare data sets across ranks."""
    return hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()[:16]


def check_same(facts: Mapping[str, Any]) -> None:
    """Raise on every rank when some rank's ``facts`` differ from rank 0's.

    Used before training to make sure every process read the same data and computed the
    same recipe (class weights, seed, batch size ...): a mismatch would not fail otherwise,
    it would silently train something else.
    """
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(facts))
    first = gathered[0]
    bad = {k: next(r for r, g in enumerate(gathered) if g.get(k) != first.get(k))
           for k in first if any(g.get(k) != first.get(k) for g in gathered)}
    if bad:
        shown = "; ".join(f"{k}: rank 0 {first[k]!r}, rank {r} {gathered[r].get(k)!r}"
                          for k, r in bad.items())
        raise DistributedError(f"the processes disagree ({shown}): every rank must read the "
                               f"same data with the same options")
