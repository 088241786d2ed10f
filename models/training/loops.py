"""Resumable training loops for the segmentation net and the clip models.

Both loops step a warm-up + cosine schedule per iteration, clip gradients at 40, log a line
per epoch and show a tqdm bar, and write after every epoch ``<out_dir>/latest.pth`` (the
authors' ``{'meta', 'state_dict', 'optimizer'}`` layout, readable by
:func:`models.load_checkpoint`); ``meta`` carries the epoch, the scheduler state and the
loss history, so ``resume=True`` continues where a run stopped. Data order and augmentation
depend only on ``(seed, epoch)``, so a resumed run sees the same batches as an uninterrupted
one. The AMAGI segmentation net stays frozen (no gradient, BN in eval mode) during clip
training. Segmentation training can mine the net's own false peaks between epochs
(``SegTrainConfig.peak_negatives``); the peaks are part of the checkpoint's ``meta``, so a
resumed run crops where the uninterrupted one did.

Under torchrun (an initialised default process group, see
:mod:`models.training.distributed`) the same loops train data-parallel: the model is wrapped
in ``DistributedDataParallel`` (every trainable parameter takes part in the loss, so no
unused-parameter search; the frozen segmentation net has no gradient and is left out), each
epoch is sharded by a ``DistributedSampler`` seeded with ``seed`` and ``set_epoch``-ed (the
same permutation on every rank; item ``i`` still gets the augmentation of ``(seed, epoch,
i)``), ``batch_size`` is per process, the logged loss and accuracy pool every batch of
every rank, and rank 0 alone writes (and, on resume, reads and broadcasts) the checkpoint of the
unwrapped model, so its keys are those of a single-process run. Data, class weights and
recipe are checked to be the same on every rank before the first step.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from models.checkpoint import read_checkpoint, save_checkpoint
from models.errors import ModelError
from models.threads import torch_threads
from models.training import distributed as _dist
from models.training.mining import false_peaks
from models.training.recipe import (
    AUTHORS_CLIP_CLASS_WEIGHTS,
    AUTHORS_SEG_CLASS_WEIGHTS,
    GRAD_CLIP,
    build_optimizer,
    clip_gradients,
    seg_loss,
    warmup_cosine,
)

__all__ = ["ClipTrainConfig", "SegTrainConfig", "TrainResult", "train_clip_model",
           "train_seg_model"]

log = logging.getLogger(__name__)

LATEST = "latest.pth"

#: Training precisions. ``bf16``: each step's forward pass and loss run under bfloat16
#: autocast (convolutions and matrix products in bf16, reductions and the loss in fp32); the
#: weights, gradients and optimiser state stay fp32, so no loss scaling is needed. Only where
#: the device computes bf16 natively (:func:`amagi_plugin.modelspec.bf16_native`): on a 2-core
#: AMX CPU one demo training step (batch 32, 128-pixel clips) took 0.56 s against 0.97 s in
#: fp32, 0.39 against 0.74 for the SlowFast baseline (session 54); on an AVX-512 BF16 CPU
#: without AMX it gained nothing (session 45).
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class _Common:
    out_dir: str
    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: float = 1.0
    grad_clip: float = GRAD_CLIP
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    threads: int | None = None  # torch CPU threads while training (restored after)
    keep_epochs: bool = False  # also keep epoch_N.pth files
    stop_after_epoch: int | None = None  # end this session early (resume later)
    workers: int = 0  # data-loading processes (0: in the training process)
    #: the forward pass and loss under bfloat16 autocast (``"bf16"``) or not (``"fp32"``):
    #: weights, gradients and optimiser state stay fp32 (see :data:`PRECISIONS`)
    precision: str = "fp32"


@dataclass(frozen=True)
class SegTrainConfig(_Common):
    """Segmentation training (HRNet-OCR, weighted CE on [aux, main] outputs)."""

    class_weights: tuple[float, float] = AUTHORS_SEG_CLASS_WEIGHTS
    hard_pixels: float = 0.0  # OHEM: plus the mean loss of the hardest share of pixels (0: off)
    peak_loss: float = 0.0  # weight of each crop's map-peak loss (recipe.seg_loss; 0: off)
    # Share of crops centred on each frame's false peak, mined by the net itself before
    # epoch 2 and every ``mine_every`` epochs after (0: off; see models.training.mining).
    peak_negatives: float = 0.0
    mine_every: int = 1
    input_size: int = 0  # frames' short side as the net saw them (0: not recorded)


@dataclass(frozen=True)
class ClipTrainConfig(_Common):
    """Clip-classifier training (AMAGI or SlowFast, weighted CE)."""

    class_weights: tuple[float, ...] = AUTHORS_CLIP_CLASS_WEIGHTS


@dataclass
class TrainResult:
    """Where the weights went and how the loss evolved (one entry per epoch)."""

    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _setup(cfg: _Common) -> torch.device:
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ModelError(f"epochs and batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {cfg.device!r} requested but CUDA is not available")
    if cfg.precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{cfg.precision!r}")
    torch.manual_seed(cfg.seed)
    return torch.device(cfg.device)


def _loader(ds: Dataset, cfg: _Common, epoch: int,
            group: tuple[int, int] | None = None) -> DataLoader:
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    if group is not None:
        return _shard_loader(ds, cfg, epoch, *group)
    seed = int(np.random.SeedSequence([cfg.seed, epoch]).generate_state(1)[0])
    torch.manual_seed(seed)  # dropout of this epoch, so a resumed run matches
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=g,
                      drop_last=len(ds) > cfg.batch_size, num_workers=cfg.workers,
                      pin_memory=_pinned(cfg))


def _shard_loader(ds: Dataset, cfg: _Common, epoch: int, rank: int, world: int
                  ) -> DataLoader:
    """This rank's share of the epoch: one permutation of ``(seed, epoch)`` on every rank."""
    seed = int(np.random.SeedSequence([cfg.seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(seed)  # dropout of this rank and epoch, so a resumed run matches
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    sampler.set_epoch(epoch)
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler,
                      drop_last=len(sampler) > cfg.batch_size, num_workers=cfg.workers,
                      pin_memory=_pinned(cfg))


def _pinned(cfg: _Common) -> bool:
    """Batches in page-locked memory when they go to a GPU (copied while it computes)."""
    return cfg.device.startswith("cuda")


def _read_latest(path: Path) -> Any:
    if not path.is_file():
        return None
    return read_checkpoint(path)


def _shared_latest(path: Path, rank: int) -> Any:
    """Rank 0 reads the checkpoint and every rank gets it (no shared file system needed)."""
    if rank == 0:
        try:
            sent: tuple[str, Any] = ("ok", _read_latest(path))
        except ModelError as e:  # tell the other ranks instead of leaving them waiting
            sent = ("error", str(e))
    else:
        sent = ("ok", None)
    status, value = _dist.broadcast_object(sent)
    if status == "error":
        raise ModelError(value)
    return value


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, out: Path,
            group: tuple[int, int] | None = None
            ) -> tuple[int, list[dict[str, float]], dict[str, Any]]:
    path = out / LATEST
    ck = _read_latest(path) if group is None else _shared_latest(path, group[0])
    if ck is None:
        log.info("no checkpoint to resume in %s: starting from scratch", out)
        return 0, [], {}
    model.load_state_dict(ck["state_dict"])
    optimizer.load_state_dict(ck["optimizer"])
    meta = ck["meta"]
    scheduler.load_state_dict(meta["scheduler"])
    world = 1 if group is None else group[1]
    if int(meta.get("world_size", 1)) != world:
        log.warning("%s was written by %s process(es), resumed by %d: an epoch now has "
                    "another number of steps, so the learning-rate schedule is not the "
                    "uninterrupted run's", path, meta.get("world_size", 1), world)
    log.info("resumed %s at epoch %d", path, meta["epoch"])
    return int(meta["epoch"]), list(meta.get("history", [])), meta


def _same_everywhere(train_ds: Dataset, cfg: _Common, kind: str) -> None:
    """Every rank trains the same data with the same recipe (class weights included)."""
    per_process = {"out_dir", "device", "threads", "workers"}  # may differ between hosts
    facts: dict[str, Any] = {k: v for k, v in asdict(cfg).items() if k not in per_process}
    facts.update(kind=kind, items=len(train_ds))
    labels = getattr(train_ds, "labels", None)
    if labels is not None:
        facts["labels"] = _dist.digest([int(v) for v in labels])
    _dist.check_same(facts)


class _EpochHook(Protocol):
    """Work between epochs whose state the checkpoint carries (so a resumed run goes on
    with it): ``before_epoch`` returns figures for the epoch's history entry."""

    key: str

    def before_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]: ...

    def state(self) -> Any: ...

    def restore(self, state: Any) -> None: ...


def _loop(model: nn.Module, train_ds: Dataset, cfg: _Common, kind: str, loss_fn,
          meta_extra: dict[str, Any], progress: TextIO | None,
          hook: _EpochHook | None = None) -> TrainResult:
    """The training loop, with ``cfg.threads`` torch threads for its duration only."""
    with torch_threads(cfg.threads):
        return _train(model, train_ds, cfg, kind, loss_fn, meta_extra, progress, hook)


def _train(model: nn.Module, train_ds: Dataset, cfg: _Common, kind: str, loss_fn,
           meta_extra: dict[str, Any], progress: TextIO | None,
           hook: _EpochHook | None = None) -> TrainResult:
    device = _setup(cfg)
    group = _dist.world()  # (rank, world size) under torchrun, else None
    rank, world = group or (0, 1)
    main = rank == 0
    out = Path(cfg.out_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    model.to(device)
    if group is not None:
        _same_everywhere(train_ds, cfg, kind)
    optimizer = build_optimizer(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    n_items = len(train_ds) if group is None else math.ceil(len(train_ds) / world)
    steps_per_epoch = max(1, n_items // cfg.batch_size) if n_items > cfg.batch_size else 1
    total = cfg.epochs * steps_per_epoch
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = warmup_cosine(optimizer, total, warmup)
    start, history, resumed = (_resume(model, optimizer, scheduler, out, group)
                               if cfg.resume else (0, [], {}))
    if hook is not None and hook.key in resumed:
        hook.restore(resumed[hook.key])
    trainable = [p for p in model.parameters() if p.requires_grad]
    net: nn.Module = model
    if group is not None:
        # Every trainable parameter reaches the loss (AMAGI's segmentation net is frozen,
        # so DDP leaves it out): no unused-parameter search. BN statistics stay per process
        # (the authors' BN3d), rank 0's buffers are broadcast before each forward.
        net = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=False)
        meta_extra = {**meta_extra, "world_size": world}
    bf16 = cfg.precision == "bf16"
    t_start = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        extra = hook.before_epoch(model, epoch) if hook is not None else {}
        net.train()
        loader = _loader(train_ds, cfg, epoch, group)
        bar = tqdm(loader, desc=f"{kind} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   file=progress, disable=progress is None or not main, leave=False)
        losses, correct, seen, t0 = [], 0, 0, time.perf_counter()
        for batch in bar:
            x, y = (t.to(device, non_blocking=True) for t in batch[:2])
            if len(batch) > 2:  # the dataset left the rest of each item to this device
                x = train_ds.finish_batch(x, *batch[2:])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, n_ok = loss_fn(net, x, y)
            loss = loss.float()
            if not math.isfinite(float(loss.detach())):
                raise ModelError(f"{kind} training diverged at epoch {epoch + 1} (loss {loss})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            correct += n_ok
            seen += int(y.numel())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        bar.close()
        mean_loss, accuracy = float(np.mean(losses)), correct / max(1, seen)
        if group is not None:  # the global figures: every batch of every rank
            loss_sum, batches, correct_all, seen_all = _dist.all_sum(
                [float(np.sum(losses)), len(losses), correct, seen], device)
            mean_loss, accuracy = loss_sum / max(1.0, batches), correct_all / max(1.0, seen_all)
        entry = {"epoch": epoch + 1, "loss": round(mean_loss, 5),
                 "accuracy": round(accuracy, 5),
                 "lr": round(float(scheduler.get_last_lr()[0]), 7),
                 "seconds": round(time.perf_counter() - t0, 2), **extra}
        history.append(entry)
        if main:
            log.info("%s epoch %d/%d: loss %.4f, accuracy %.3f, lr %.5f, %.1f s", kind,
                     epoch + 1, cfg.epochs, entry["loss"], entry["accuracy"], entry["lr"],
                     entry["seconds"])
            meta = {"epoch": epoch + 1, "kind": kind, "config": asdict(cfg),
                    "scheduler": scheduler.state_dict(), "history": history, **meta_extra}
            if hook is not None:
                meta[hook.key] = hook.state()
            path = save_checkpoint(model, out / LATEST, meta=meta, optimizer=optimizer)
            if cfg.keep_epochs:
                shutil.copyfile(path, out / f"epoch_{epoch + 1}.pth")
        _dist.barrier()  # the epoch's files are complete before any rank goes on or ends
        if cfg.stop_after_epoch is not None and epoch + 1 >= cfg.stop_after_epoch:
            if main:
                log.info("%s: stopping after epoch %d as asked (resume to continue)", kind,
                         epoch + 1)
            break
    return TrainResult(out / LATEST, history, time.perf_counter() - t_start)


class _PeakMiner:
    """Before epoch 2 and every ``mine_every`` epochs after, the net finds each training
    frame's false peak (:func:`models.training.mining.false_peaks`) and the dataset centres
    a share of its crops there. The peaks go into the checkpoint, so a resumed run crops
    where the uninterrupted one did."""

    key = "false_peaks"

    def __init__(self, ds: Any, cfg: SegTrainConfig) -> None:
        self.ds, self.cfg = ds, cfg

    def before_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        if epoch < 1 or (epoch - 1) % self.cfg.mine_every:
            return {}
        t0 = time.perf_counter()
        device = next(model.parameters()).device  # where the loop put it
        found = false_peaks(model, self.ds, device, batch_size=self.cfg.batch_size)
        self.ds.set_peaks({i: (f.y, f.x) for i, f in found.items()})
        values = [f.p for f in found.values()]
        figures = {"false_peak_mean": round(float(np.mean(values)) if values else 0.0, 5),
                   "mining_seconds": round(time.perf_counter() - t0, 2)}
        log.info("seg epoch %d: mined %d false peaks (mean probability %.3f) in %.1f s",
                 epoch + 1, len(found), figures["false_peak_mean"], figures["mining_seconds"])
        return figures

    def state(self) -> list[list[int]]:
        return [[int(i), int(y), int(x)] for i, (y, x) in sorted(self.ds.peaks.items())]

    def restore(self, state: list[list[int]]) -> None:
        self.ds.set_peaks({int(i): (int(y), int(x)) for i, y, x in state})


def train_seg_model(seg_model: nn.Module, train_ds: Dataset, cfg: SegTrainConfig,
                    progress: TextIO | None = None) -> TrainResult:
    """Train an HRNet-OCR bleeding segmenter on ``(image, target)`` batches.

    The checkpoint's ``state_dict`` has the segmentation net's own keys, the layout of the
    authors' standalone segmentation file: load it into an AMAGI model with
    ``load_checkpoint(model, path, kind='segmentation')``.

    Raises
    ------
    ModelError
        If ``cfg.peak_negatives`` is not the share the dataset crops with (a dataset that
        cannot take false peaks has none), or ``mine_every`` is below 1.
    """
    share = getattr(getattr(train_ds, "augment", None), "peak_negatives", 0.0)
    if share != cfg.peak_negatives or cfg.mine_every < 1:
        raise ModelError(f"peak_negatives {cfg.peak_negatives} (every {cfg.mine_every} "
                         f"epochs) but the dataset centres a share {share} of its crops on "
                         "false peaks")
    hook = _PeakMiner(train_ds, cfg) if cfg.peak_negatives else None
    for p in seg_model.parameters():
        p.requires_grad_(True)

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        outputs = model(x)
        loss = seg_loss(outputs, y, cfg.class_weights, hard_pixels=cfg.hard_pixels,
                        peak_weight=cfg.peak_loss)
        with torch.no_grad():
            up = nn.functional.interpolate(outputs[-1], size=y.shape[-2:], mode="bilinear",
                                           align_corners=False)
            ok = int((up.argmax(1) == y).sum())
        return loss, ok

    return _loop(seg_model, train_ds, cfg, "seg", step, {"task": "segmentation"}, progress,
                 hook)


def train_clip_model(model: nn.Module, train_ds: Dataset, cfg: ClipTrainConfig,
                     progress: TextIO | None = None, meta: dict[str, Any] | None = None
                     ) -> TrainResult:
    """Train a clip classifier (``model(clips) -> logits``) with weighted cross-entropy.

    An AMAGI model's segmentation net must already hold trained weights; it is checked to
    be frozen (no parameter requires a gradient) before training starts.

    Raises
    ------
    ModelError
        If the segmentation net of an AMAGI model is not frozen, or the loss diverges.
    """
    seg = getattr(getattr(model, "backbone", None), "seg_model", None)
    if seg is not None and any(p.requires_grad for p in seg.parameters()):
        raise ModelError("the segmentation net inside AMAGI must be frozen for clip training")
    weights = torch.as_tensor(cfg.class_weights, dtype=torch.float32, device=cfg.device)

    def step(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        logits = m(x)
        loss = nn.functional.cross_entropy(logits, y, weight=weights)
        return loss, int((logits.argmax(1) == y).sum())

    extra = {"task": "clip", **(meta or {})}
    return _loop(model, train_ds, cfg, "clip", step, extra, progress)


def export_weights(checkpoint: str | os.PathLike[str], dest: str | os.PathLike[str],
                   meta: dict[str, Any] | None = None) -> Path:
    """Copy a training checkpoint without its optimizer state (for distribution)."""
    ck = read_checkpoint(checkpoint)
    payload = {"meta": {**{k: v for k, v in ck.get("meta", {}).items() if k != "scheduler"},
                        **(meta or {})},
               "state_dict": ck["state_dict"], "optimizer": {}}
    d = Path(dest)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(d.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, d)
    return d


def evaluate_clips(model: nn.Module, ds: Dataset, batch_size: int = 16,
                   device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Bleeding probabilities and labels of every clip of ``ds`` (eval mode, no grad)."""
    model.eval().to(device)
    probs: list[np.ndarray] = []
    labels: list[int] = []
    with torch.no_grad():
        for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
            probs.append(torch.softmax(model(x.to(device)), 1)[:, 1].cpu().numpy())
            labels.extend(int(v) for v in y)
    return np.concatenate(probs), np.asarray(labels)


