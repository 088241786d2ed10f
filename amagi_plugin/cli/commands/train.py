"""``amagi train seg|clip|refiner|probe|demo``: train the bleeding models with the authors' recipe.

``seg`` trains the segmentation net (HRNet-OCR) on frame/mask PNG pairs; ``clip`` trains
AMAGI (with that segmentation net frozen inside) or the plain SlowFast baseline on the
authors' rawframe layout (``folder total_frames label`` lists); ``refiner`` trains a
temporal refiner (:mod:`models.refiner`) on a clip model's predictions of whole videos;
``probe`` trains a neighbourhood probe (:mod:`amagi_plugin.probing`) where a segmentation
net's map peaks on ``amagi synth`` rawframes;
``demo`` builds the bundled demo model end to end (what ``make demo-model`` runs).
Checkpoints are written after every epoch in the authors' layout; ``--resume`` continues an
interrupted run.

``seg`` and ``clip`` also run data-parallel under torchrun (``torchrun --nproc_per_node N -m
amagi_plugin.cli train clip ...``): one process per GPU (``--device cuda`` becomes
``cuda:LOCAL_RANK``; nccl, or gloo on the CPU), ``--batch-size`` per process, and rank 0
alone writes the checkpoint, ``train.log`` and the summary line
(:mod:`models.training.distributed`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

from amagi_plugin.cli.commands import comma_numbers
from amagi_plugin.errors import InputError

#: ``--arch`` shorthands: small variants on the CPU, the authors' sizes on a GPU.
ARCH_ALIASES = {"amagi": ("amagi_tiny", "amagi_sf50"),
                "slowfast": ("slowfast_tiny", "slowfast_r50_amagi")}


_floats = comma_numbers(float)


def _common(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    g = p.add_argument_group("optimisation (the authors' recipe unless changed)")
    g.add_argument("-od", "--output-directory", required=True, metavar="DIR",
                   help="checkpoints (latest.pth, authors' layout) and train.log go here")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=8,
                   help="per process: under torchrun each of N processes takes this many, "
                   "so one optimiser step sees N times as many (the authors' per-GPU batch); "
                   "the learning rate is not scaled")
    g.add_argument("--lr", type=float, default=lr, help="SGD learning rate")
    g.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear warm-up length before the cosine decay")
    g.add_argument("--seed", type=int, default=0, help="data order and augmentation seed")
    g.add_argument("--look-jitter", type=float, default=0.0, metavar="S",
                   help="strength (0-2) of a random change of look per training sample: white "
                   "balance, exposure, gamma, saturation, blur, noise (0 = the authors' recipe); "
                   "for clips on a GPU it is applied there per batch, not in the loaders")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under "
                   "torchrun: cuda means cuda:LOCAL_RANK)")
    g.add_argument("--dist-backend", default="auto", choices=("auto", "nccl", "gloo"),
                   help="process-group backend under torchrun (auto: nccl on CUDA, gloo on "
                   "the CPU); ignored without torchrun")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--precision", default="fp32", metavar="{fp32,bf16}",
                   help="bf16: forward pass and loss under bfloat16 autocast (weights, "
                   "gradients and optimiser stay fp32), where the device computes bf16 "
                   "natively (CUDA compute capability 8.0, a CPU with AMX: about 1.7x "
                   "faster steps on 2 AMX cores); fp32: the authors' arithmetic")
    g.add_argument("--workers", type=int, default=0, metavar="N",
                   help="data-loading processes (0: decode and augment in the training "
                   "process; a few help keep a GPU busy)")
    g.add_argument("--resume", action="store_true", help="continue from DIR/latest.pth")
    g.add_argument("--keep-epochs", action="store_true", help="also keep epoch_N.pth files")
    g.add_argument("--stop-after-epoch", type=int, default=None, metavar="N",
                   help="end this session after epoch N (continue later with --resume)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    f = p.add_argument_group("patient-level cross-validation")
    f.add_argument("--folds", type=int, default=None, metavar="K",
                   help="split patients into K folds and train on all but --fold")
    f.add_argument("--fold", type=int, default=0, metavar="I", help="held-out fold (0-based)")
    f.add_argument("--fold-seed", type=int, default=0, help="seed of the patient shuffle")


def _check_look_jitter(args: argparse.Namespace) -> None:
    from models.training.augment import LookJitter

    top = LookJitter.MAX_STRENGTH
    if not 0.0 <= args.look_jitter <= top:
        raise InputError(f"--look-jitter must lie in [0, {top:g}], got {args.look_jitter}")


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from amagi_plugin.demo_model import RECIPE_HELP

    # No parents here: this level only dispatches, and the shared flags would make
    # argparse's prefix matching see '--data' as ambiguous (--database-url ...).
    p = sub.add_parser("train", help="train bleeding models (seg, clip, refiner, probe, demo)",
                       description=__doc__.splitlines()[0], allow_abbrev=False)
    tsub = p.add_subparsers(dest="train_command", metavar="{seg,clip,refiner,probe,demo}")
    tsub.required = True
    s = tsub.add_parser("seg", parents=parents, help="train the bleeding segmentation net",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        description="Train HRNet-OCR on masks/NAME.png + frames/NAME.png pairs "
                        "found under --data (as 'amagi synth' writes them), weighted CE with "
                        "class weights [0.4, 1].")
    s.add_argument("--data", required=True, metavar="DIR", help="folder searched for masks/")
    s.add_argument("--arch", default="amagi", help="AMAGI variant whose segmentation net to "
                   "train (amagi = amagi_tiny on CPU, amagi_sf50 on CUDA)")
    s.add_argument("--crop", type=int, default=None, metavar="PIXELS",
                   help="training crop side (default: the model's input size)")
    s.add_argument("--class-weights", type=_floats, default=(0.4, 1.0), metavar="BG,BLEED")
    s.add_argument("--hard-pixels", type=float, default=0.0, metavar="F",
                   help="online hard example mining: add the mean loss of the hardest share F "
                   "of each batch's pixels (0 = off, the authors')")
    s.add_argument("--peak-loss", type=float, default=0.0, metavar="W",
                   help="add W times a loss on each training crop's map peak (the largest "
                   "3x3 mean bleeding margin against whether the crop holds any bleeding), "
                   "so that a source of a few pixels counts as much as a large pool (0 = off, "
                   "the authors')")
    s.add_argument("--pos-fraction", type=float, default=0.5, metavar="P",
                   help="share of training crops centred on a bleeding pixel")
    s.add_argument("--moving-negatives", type=float, default=0.0, metavar="F",
                   help="temporal segmenters: share of training crops centred instead on a "
                   "pixel that moves but is not bleeding (hard negatives; 0 = off)")
    s.add_argument("--peak-negatives", type=float, default=0.0, metavar="F",
                   help="share of training crops centred instead on each frame's false peak "
                   "(where the net itself, mined from epoch 2 on, scores bleeding highest "
                   "away from any bleeding; hard negatives; 0 = off)")
    s.add_argument("--mine-every", type=int, default=1, metavar="N",
                   help="with --peak-negatives: mine the false peaks again every N epochs")
    s.add_argument("--input-size", type=int, default=None,
                   help="scale frames so the short side is this (default: what the model's "
                   "segmenter sees, its input size times its seg_scale)")
    _common(s, epochs=10, lr=0.01)
    s.set_defaults(handler=run_seg)
    c = tsub.add_parser("clip", parents=parents, help="train AMAGI or the SlowFast baseline",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        description="Train a clip classifier on an annotation list "
                        "('folder total_frames label', folders relative to --data-root).")
    c.add_argument("--arch", required=True, help="amagi, slowfast, or a variant name "
                   "(amagi_tiny, slowfast_tiny, amagi_sf50, slowfast_r50_amagi, ...)")
    c.add_argument("--annotations", required=True, metavar="FILE", help="annotation list")
    c.add_argument("--data-root", metavar="DIR",
                   help="folder the list's paths are relative to (default: the list's folder)")
    c.add_argument("--seg-checkpoint", metavar="PATH",
                   help="trained segmentation checkpoint (required for AMAGI)")
    c.add_argument("--class-weights", default="authors", metavar="W",
                   help="'authors' (0.6060,2.8592), 'balanced' (N/(2·N_c) on this data, the "
                   "authors' formula) or NORMAL,BLEEDING")
    c.add_argument("--input-size", type=int, default=None, help="override the variant's size")
    c.add_argument("--still-negatives", type=float, default=0.0, metavar="P",
                   help="chance that a bleeding clip is replaced by its centre frame held "
                   "still under camera motion, labelled not bleeding (0 = the authors' recipe)")
    c.add_argument("--min-visible-px", type=float, default=0.0, metavar="N",
                   help="leave out the bleeding clips whose labelled frame shows fewer than N "
                   "pixels of active bleeding ('amagi synth' data: labels.json "
                   "active_pixels): nothing in them shows it (0 = the authors' recipe)")
    _common(c, epochs=100, lr=0.01)
    c.set_defaults(handler=run_clip)
    r = tsub.add_parser(
        "refiner", parents=parents, help="train a temporal refiner on a model's predictions",
        description="Train a temporal refiner (a small dilated temporal convolution that "
        "re-reads a whole video's bleeding probabilities, with each video's median as its "
        "baseline) on the predictions.json that 'amagi evaluate' writes. Evaluate the model "
        "without a refiner (--checkpoint NAME=ARCH:PATH) on videos it was not trained on. "
        "Name the written file as the model's 'refiner' in its model.json to use it.")
    r.add_argument("--predictions", required=True, nargs="+", metavar="FILE",
                   help="predictions.json files of 'amagi evaluate'")
    r.add_argument("--model", default=None, metavar="LABEL",
                   help="the model's label in them (needed when they hold several)")
    r.add_argument("-o", "--output", required=True, metavar="FILE", help="refiner .pth")
    # Unset, each of these is the refiner's own default (models.refiner, models.training).
    r.add_argument("--steps", type=int, default=None, help="optimiser steps (default 400)")
    r.add_argument("--width", type=int, default=None,
                   help="channels of each layer (default 8)")
    r.add_argument("--layers", type=int, default=None, help="dilated layers: each output "
                   "sees 2^layers - 1 predictions each way (default 8)")
    r.add_argument("--offset", type=float, default=None, help="random shift (± logits) of "
                   "each training window's level, so that the level is not over-trusted "
                   "(default 1)")
    r.add_argument("--seed", type=int, default=0, help="window order and draws (default 0)")
    r.set_defaults(handler=run_refiner)
    q = tsub.add_parser(
        "probe", parents=parents, help="train a neighbourhood probe at a segmenter's map peaks",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a neighbourhood probe (PatchNet: 8 frames (--frames) 0.2 s apart of a 32-pixel "
        "neighbourhood) on an 'amagi synth --formats rawframes' set: at each masked frame, "
        "neighbourhoods at the bleeding and at the segmenter's highest map peaks (the map's "
        "false peaks are its negatives). Name the written file as the model's 'probe' in its "
        "model.json to use it in analysis.")
    q.add_argument("--data", required=True, nargs="+", metavar="DIR",
                   help="amagi synth rawframes sets (several are pooled; bleeding-free ones, "
                   "'--domain randomised-static', add still-blood negatives)")
    q.add_argument("--arch", required=True, help="the model whose segmentation net chooses "
                   "the places (an AMAGI architecture)")
    q.add_argument("--seg-checkpoint", required=True, metavar="PATH",
                   help="its segmentation net ('amagi train seg' latest.pth, or a whole "
                   "model's checkpoint: its segmenter is read)")
    q.add_argument("--input-size", type=int, default=None,
                   help="the model's input size, if its build overrides the variant's")
    q.add_argument("-o", "--output", required=True, metavar="FILE", help="probe .pth")
    q.add_argument("--epochs", type=int, default=8)
    q.add_argument("--candidates", type=int, default=8, help="map peaks looked at per frame")
    q.add_argument("--step-s", type=float, default=0.2, metavar="S",
                   help="seconds between the probe's frames (its span is frames - 1 steps)")
    q.add_argument("--frames", type=int, default=8, metavar="N",
                   help="frames the probe reads around each instant (at least 2)")
    q.add_argument("--align", action="store_true",
                   help="the probe first shifts each frame of a neighbourhood onto the middle "
                   "one (the neighbourhood's own motion, found by phase correlation), so that "
                   "what moves with the view shows no change")
    q.add_argument("--stabilise", action="store_true",
                   help="the probe first shifts each of its frames onto the instant's own by "
                   "the whole view's motion (phase correlation over tiles of the frame), so that blood "
                   "the view carries as it sways or pans stands still where it looks")
    q.add_argument("--pool", default="avg", metavar="{avg,max,avgmax}",
                   help="how the probe pools its feature map: avg (its mean), max (its largest "
                   "value), or avgmax (both), so that a source of a few pixels is not averaged "
                   "away")
    q.add_argument("--norm", default="fixed", metavar="{fixed,sample}",
                   help="how the probe scales a neighbourhood: fixed (the same constants for "
                   "all) or sample (each colour channel by the neighbourhood's own mean and "
                   "spread, so that white balance, exposure and contrast do not reach it)")
    q.add_argument("--scale", type=int, default=1, metavar="K",
                   help="the probe reads its neighbourhoods on frames K times the model's scale "
                   "(a 32-pixel neighbourhood then covers 32/K map pixels, and a source of a few "
                   "map pixels fills K² times more of it); the data should be drawn at least "
                   "that fine (amagi synth --size)")
    q.add_argument("--rand-neg", type=int, default=0,
                   help="random negatives away from bleeding per masked frame")
    q.add_argument("--extra-pos", type=int, default=0,
                   help="positives at random mask pixels per masked frame (besides its centre)")
    q.add_argument("--look-jitter", type=float, default=1.0, metavar="S",
                   help="strength (0-2) of a random change of look per neighbourhood")
    q.add_argument("--reversed-negatives", type=float, default=0.0, metavar="W",
                   help="each positive played backwards (spreading blood becomes shrinking "
                   "blood) as a negative of this weight relative to a positive (0: none)")
    q.add_argument("--sliding-negatives", type=float, default=0.0, metavar="W",
                   help="one frame of each positive slid rigidly across the frames (red that "
                   "moves without growing) as a negative of this weight (0: none)")
    q.add_argument("--view-negatives", type=float, default=0.0, metavar="W",
                   help="one frame of each positive held while the view zooms (up to x1.35) "
                   "and the light drifts (up to x1.3) across the frames (red that grows only "
                   "because the camera comes closer) as a negative of this weight (0: none)")
    q.add_argument("--hinged-negatives", type=float, default=0.0, metavar="W",
                   help="one frame of each positive cut in two, its halves turning about a "
                   "pivot and back like an instrument's jaws (red that changes shape without "
                   "growing) as a negative of this weight (0: none)")
    q.add_argument("--lookalike-negatives", type=int, default=0, metavar="K",
                   help="per masked frame, K negatives on blood that is not bleeding (still "
                   "pools, stained instrument jaws, blood on the lens), drawn from the set's "
                   "look-alike masks (amagi synth's lookalikes/) whether or not the segmenter "
                   "peaks there, a small stain as often as a large pool (0: none)")
    q.add_argument("--after-end-negatives", type=_floats, default=(), metavar="S,...",
                   help="also read the frames these seconds after each bleeding's end (where "
                   "none is active): every map peak there is a negative, most often the "
                   "blood the bleeding left (e.g. 0.5,1,2,3)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    q.add_argument("--precision", default="fp32", metavar="{fp32,bf16}",
                   help="bf16: the probe's forward pass under bfloat16 autocast, where the "
                   "device computes it natively (epochs about 1.45x faster on 2 AMX cores), "
                   "as 'amagi train clip --precision'")
    q.add_argument("--device", default="cpu", help="where the segmenter runs (cpu, cuda)")
    q.add_argument("--no-progress", action="store_true", help="no progress lines")
    q.set_defaults(handler=run_probe)
    d = tsub.add_parser("demo", parents=parents, help="build the bundled demo model",
                        description="Synthesise data, train seg, AMAGI and SlowFast, evaluate "
                        "and write models/weights/demo/ (what 'make demo-model' runs).")
    d.add_argument("--work-dir", metavar="DIR",
                   help="intermediate files (default var/demo-model[-RECIPE][-quick])")
    d.add_argument("--dest", metavar="DIR", help="output (default models/weights/demo)")
    d.add_argument("--recipe", default="shipped", help=RECIPE_HELP)
    d.add_argument("--device", dest="demo_device", default="cpu",
                   help="cpu, cuda, cuda:N or auto: where the networks train and evaluate")
    d.add_argument("--quick", action="store_true", help="a minutes-long run of every stage")
    d.add_argument("--precision", default=None, metavar="{fp32,bf16}",
                   help="the networks' training arithmetic instead of the recipe's (fp32; "
                   "bf16 only where the device computes it natively, as 'amagi train clip')")
    d.add_argument("--networks-from", metavar="DIR",
                   help="take the trained networks of this model folder (e.g. "
                   "models/weights/demo) instead of training: the recipe must match its "
                   "build in every setting but how they are read and measured")
    d.set_defaults(handler=run_demo)


def _arch(name: str, device: str) -> str:
    from models import list_models

    if name in ARCH_ALIASES:
        return ARCH_ALIASES[name][1 if device.startswith("cuda") else 0]
    if name not in list_models():
        raise InputError(f"unknown --arch {name!r}; use amagi, slowfast or one of "
                         f"{', '.join(list_models())}")
    return name


def _device(name: str) -> str:
    from amagi_plugin.modelspec import resolve_device

    return resolve_device(name)


def _fold_filter(records: list, args: argparse.Namespace) -> tuple[list, dict]:
    from models.training import split_by_patient

    if args.folds is None:
        return records, {}
    try:
        train, test = split_by_patient([r.patient for r in records], args.folds, args.fold,
                                       args.fold_seed)
    except ValueError as e:
        raise InputError(f"cannot split by patient: {e}") from None
    held = sorted({records[i].patient for i in test})
    return [records[i] for i in train], {"folds": args.folds, "fold": args.fold,
                                         "fold_seed": args.fold_seed, "held_out_patients": held}


@contextlib.contextmanager
def _distributed(args: argparse.Namespace, ctx) -> Iterator[tuple[str, bool]]:
    """This process's training device and whether it writes (rank 0).

    Started by torchrun (``WORLD_SIZE`` in the environment), the default process group lives
    for the block; otherwise nothing changes: the device is ``--device`` resolved, and the
    process writes.
    """
    from models.training.distributed import launch_info, process_device, process_group

    info = launch_info(ctx.environ)
    device = _device(args.device)
    if info is None:
        yield device, True
        return
    device = process_device(device, info)
    with process_group(info, device, args.dist_backend):
        yield device, info.is_main


def _writer_log(out: Path, main: bool) -> contextlib.AbstractContextManager[None]:
    return _log_to(out) if main else contextlib.nullcontext()


@contextlib.contextmanager
def _log_to(out: Path) -> Iterator[None]:
    """Append the training loggers' records to ``out/train.log`` while the block runs."""
    out.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(out / "train.log")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    h.setLevel(logging.INFO)
    loggers = [logging.getLogger(n) for n in ("models.training", "models.checkpoint")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(h)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(h)
            lg.setLevel(level)
        h.close()


def _check_precision(args: argparse.Namespace, device: str) -> None:
    """``--precision``: one of the training precisions, bf16 only where ``device`` computes
    it natively."""
    from amagi_plugin.modelspec import emulated_bf16
    from models.training.loops import PRECISIONS

    if args.precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{args.precision!r}")
    if args.precision == "bf16" and (why := emulated_bf16(device)):
        raise InputError(f"--precision bf16: {why}, so autocast would emulate it, many "
                         "times slower than fp32")


def _common_cfg(args: argparse.Namespace, ctx, device: str) -> dict:
    return dict(out_dir=str(ctx.cwd / args.output_directory), epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs,
                seed=args.seed, device=device, resume=args.resume, threads=args.threads,
                keep_epochs=args.keep_epochs, stop_after_epoch=args.stop_after_epoch,
                workers=args.workers, precision=args.precision)


def run_seg(args: argparse.Namespace, ctx) -> int:
    with _distributed(args, ctx) as (device, main):
        return _run_seg(args, ctx, device, main)


def _run_seg(args: argparse.Namespace, ctx, device: str, main: bool) -> int:
    from models import build_model, model_cfg
    from models.training import SegDataset, SegTrainConfig, TrainingDataError, train_seg_model
    from models.training.data import find_seg_pairs

    arch = _arch(args.arch, device)
    mcfg = model_cfg(arch)
    if not mcfg.has_segmentation:
        raise InputError(f"{arch} has no segmentation net; use an AMAGI variant")
    _check_look_jitter(args)  # the flags before the data: a typo costs no reading
    _check_precision(args, device)
    if not 0.0 <= args.moving_negatives < 1.0:
        raise InputError(f"--moving-negatives must lie in [0, 1), got {args.moving_negatives}")
    if not 0.0 <= args.peak_negatives < 1.0:
        raise InputError(f"--peak-negatives must lie in [0, 1), got {args.peak_negatives}")
    if args.mine_every < 1:
        raise InputError(f"--mine-every must be at least 1, got {args.mine_every}")
    if not 0.0 <= args.hard_pixels < 1.0:
        raise InputError(f"--hard-pixels must lie in [0, 1), got {args.hard_pixels}")
    if not 0.0 <= args.peak_loss < math.inf:
        raise InputError(f"--peak-loss must be a finite number, at least 0, got {args.peak_loss}")
    if args.moving_negatives and mcfg.seg_frames == 1:
        raise InputError(f"--moving-negatives needs a temporal segmenter; {arch}'s sees one "
                         "frame, in which nothing moves")
    try:
        records = find_seg_pairs(ctx.cwd / args.data, frames=mcfg.seg_frames,
                                 frame_interval=mcfg.frame_interval)
    except TrainingDataError as e:
        raise InputError(str(e)) from None
    records, fold = _fold_filter(records, args)
    size = args.input_size or mcfg.seg_input_size
    cfg = SegTrainConfig(**_common_cfg(args, ctx, device), class_weights=args.class_weights,
                         hard_pixels=args.hard_pixels, peak_loss=args.peak_loss,
                         peak_negatives=args.peak_negatives,
                         mine_every=args.mine_every, input_size=size)
    ds = SegDataset(records, size, mcfg.mean, mcfg.std,
                    train=True, seed=args.seed, crop=args.crop, pos_fraction=args.pos_fraction,
                    look_jitter=args.look_jitter, moving_negatives=args.moving_negatives,
                    peak_negatives=args.peak_negatives)
    seg = build_model(arch).backbone.seg_model
    with _writer_log(Path(cfg.out_dir), main):
        result = train_seg_model(seg, ds, cfg,
                                 progress=None if args.no_progress else ctx.stderr)
    last = result.history[-1] if result.history else {}
    if not main:
        return 0
    ctx.print(f"segmentation net of {arch} trained on {len(ds)} frames: {result.checkpoint} "
              f"(loss {last.get('loss')}, pixel accuracy {last.get('accuracy')}) "
              f"{json.dumps(fold) if fold else ''}".rstrip())
    return 0


def run_clip(args: argparse.Namespace, ctx) -> int:
    with _distributed(args, ctx) as (device, main):
        return _run_clip(args, ctx, device, main)


def _run_clip(args: argparse.Namespace, ctx, device: str, main: bool) -> int:
    from models import CheckpointError, build_model, load_checkpoint
    from models.training import (
        AUTHORS_CLIP_CLASS_WEIGHTS,
        ClipDataset,
        ClipTrainConfig,
        TrainingDataError,
        balanced_class_weights,
        drop_unseen_bleeding,
        read_annotation_list,
        train_clip_model,
    )

    arch = _arch(args.arch, device)
    _check_precision(args, device)
    overrides = {"input_size": args.input_size} if args.input_size else {}
    try:
        records = read_annotation_list(ctx.cwd / args.annotations,
                                       ctx.cwd / args.data_root if args.data_root else None)
    except TrainingDataError as e:
        raise InputError(str(e)) from None
    records, fold = _fold_filter(records, args)
    unseen = 0
    if args.min_visible_px > 0:
        try:
            kept = drop_unseen_bleeding(records, args.min_visible_px)
        except TrainingDataError as e:
            raise InputError(f"--min-visible-px: {e}") from None
        unseen, records = len(records) - len(kept), kept
    labels = [r.label for r in records]
    if not 0.0 <= args.still_negatives < 1.0:
        raise InputError(f"--still-negatives must lie in [0, 1), got {args.still_negatives}")
    _check_look_jitter(args)
    if args.class_weights == "authors":
        weights = AUTHORS_CLIP_CLASS_WEIGHTS
    elif args.class_weights == "balanced":
        try:
            weights = balanced_class_weights(labels, relabelled=args.still_negatives)
        except ValueError as e:
            raise InputError(f"--class-weights balanced: {e}") from None
    else:
        try:
            weights = _floats(args.class_weights)
        except argparse.ArgumentTypeError as e:
            raise InputError(str(e)) from None
    model = build_model(arch, **overrides)
    mcfg = model.default_cfg
    seg_source = None
    if mcfg.has_segmentation:
        if not args.seg_checkpoint:
            raise InputError(f"{arch} needs --seg-checkpoint (train it with 'amagi train seg')")
        seg_source = str(ctx.cwd / args.seg_checkpoint)
        try:
            load_checkpoint(model, seg_source, kind="segmentation")
        except CheckpointError as e:
            raise InputError(str(e)) from None
    cfg = ClipTrainConfig(**_common_cfg(args, ctx, device), class_weights=tuple(weights))
    ds = ClipDataset(records, mcfg.input_size, mcfg.mean, mcfg.std, mcfg.clip_len,
                     mcfg.frame_interval, train=True, seed=args.seed,
                     still_negatives=args.still_negatives, look_jitter=args.look_jitter,
                     look_on_device=not device.startswith("cpu"))
    meta = {"arch": arch, "build": overrides, "class_weights": list(weights),
            "still_negatives": args.still_negatives, "look_jitter": args.look_jitter,
            "look_on_device": ds.look_on_device,
            "min_visible_px": args.min_visible_px, "unseen_bleeding_left_out": unseen,
            "seg_checkpoint": seg_source, "clips": len(ds),
            "positives": int(sum(labels)), **fold}
    with _writer_log(Path(cfg.out_dir), main):
        result = train_clip_model(model, ds, cfg,
                                  progress=None if args.no_progress else ctx.stderr, meta=meta)
    last = result.history[-1] if result.history else {}
    if not main:
        return 0
    left_out = f", {unseen} showing no bleeding left out" if args.min_visible_px > 0 else ""
    ctx.print(f"{arch} trained on {len(ds)} clips ({sum(labels)} bleeding{left_out}), class weights "
              f"{list(weights)}: {result.checkpoint} (loss {last.get('loss')}, accuracy "
              f"{last.get('accuracy')}, {result.seconds:.0f} s)")
    return 0


def run_refiner(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.refining import fit_refiner
    from models.errors import ModelError

    paths = [ctx.cwd / p for p in args.predictions]
    try:
        result, meta = fit_refiner(paths, args.model, steps=args.steps, width=args.width,
                                   layers=args.layers, offset=args.offset, seed=args.seed)
    except ModelError as e:
        raise InputError(str(e)) from None
    from models.refiner import save_refiner

    out = save_refiner(result.refiner, ctx.cwd / args.output, meta=meta)
    ctx.print(f"refiner trained on {result.videos} videos of {meta['model']} "
              f"({100 * result.positive_share:.0f} % of instants bleeding, "
              f"{meta['rate_hz']:g} predictions a second): {out} (loss "
              f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}, {result.seconds:.0f} s)")
    return 0


def run_probe(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.modelspec import resolve_device
    from amagi_plugin.probe_training import fit_probe
    from models.patchnet import save_patchnet

    device = resolve_device(args.device)
    _check_precision(args, device)

    def said(line: str) -> None:
        print(line, file=ctx.stderr, flush=True)

    net, meta = fit_probe([ctx.cwd / d for d in args.data], args.arch, ctx.cwd / args.seg_checkpoint,
                          epochs=args.epochs, candidates=args.candidates, step_s=args.step_s,
                          frames=args.frames, align=args.align, stabilise=args.stabilise,
                          pool=args.pool, norm=args.norm, rand_neg=args.rand_neg,
                          extra_pos=args.extra_pos, look_jitter=args.look_jitter,
                          reversed_negatives=args.reversed_negatives,
                          sliding_negatives=args.sliding_negatives,
                          view_negatives=args.view_negatives,
                          hinged_negatives=args.hinged_negatives,
                          after_end_s=args.after_end_negatives,
                          lookalike_neg=args.lookalike_negatives, seed=args.seed,
                          threads=args.threads, device=device,
                          input_size=args.input_size, scale=args.scale,
                          precision=args.precision,
                          progress=None if args.no_progress else said)
    out = save_patchnet(net, ctx.cwd / args.output, meta=meta)
    ex = meta["extraction"]
    ctx.print(f"probe trained on {ex['neighbourhoods']} neighbourhoods ({ex['positive']} "
              f"positive) of {ex['cases']} cases at {net.cfg.candidates} map peaks of "
              f"{args.arch}: {out} (loss {meta['losses'][0]:.3f} -> {meta['losses'][-1]:.3f}, "
              f"{meta['seconds']:.0f} s)")
    return 0


def run_demo(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.demo_model import DemoConfig, build_demo, default_work_dir
    from amagi_plugin.modelspec import DEMO_DIR

    if "WORLD_SIZE" in ctx.environ:
        raise InputError("'amagi train demo' runs in one process: start it without torchrun "
                         "(or run 'amagi train seg|clip' under torchrun)")

    cfg = DemoConfig.recipe(args.recipe, precision=args.precision)
    cfg = cfg.quick() if args.quick else cfg
    work = (ctx.cwd / args.work_dir if args.work_dir
            else default_work_dir(args.recipe, args.quick))  # as make demo-model
    dest = ctx.cwd / args.dest if args.dest else DEMO_DIR
    networks = ctx.cwd / args.networks_from if args.networks_from else None
    training = build_demo(work, cfg, dest, _device(args.demo_device), networks_from=networks)
    ctx.print(f"demo model written to {dest} ({json.dumps(training['seconds'])})")
    return 0
