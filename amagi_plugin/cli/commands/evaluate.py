"""``amagi evaluate``: compare bleeding detectors on annotated videos, patient-level folds."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amagi_plugin.errors import InputError

if TYPE_CHECKING:
    from amagi_plugin.modelspec import ModelSpec


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate", parents=parents, help="evaluate models on annotated videos",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Run each model over every case of --data (folders with labels.json and "
        "video.dcm/video.mp4, as 'amagi synth' writes them) with the same post-processing as "
        "'amagi process', and write metrics.json, metrics.md (pooled, per-fold and per-case "
        "tables: frame P/R/F1, AUROC, AP, event F1 at IoU 0.1/0.25/0.5, count and duration "
        "errors over the cases with events, false alarms per hour on bleeding-free cases and "
        "per hour of non-bleeding time, onset latency; per tag value too when labels.json "
        "carries 'tags'; frame AUROC and recall by visible bleeding size when it carries "
        "'active_pixels'), predictions.json and one fold<k>.png per fold.")
    p.add_argument("--data", required=True, metavar="DIR", help="evaluation cases")
    p.add_argument("-od", "--output-directory", required=True, metavar="DIR")
    p.add_argument("--model-dir", metavar="DIR",
                   help="a folder with model.json (main model and its baseline); default: the "
                   "bundled demo model unless --checkpoint is given")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=[ARCH:]PATH",
                   help="a model to evaluate (repeatable); ARCH defaults to the 'arch' in the "
                   "checkpoint's meta")
    p.add_argument("--no-baseline", action="store_true",
                   help="of --model-dir, evaluate the main model only, not its baseline")
    p.add_argument("--folds", type=int, default=3, help="patient-level folds (1 = none)")
    p.add_argument("--fold-seed", type=int, default=0)
    add_run_arguments(p)
    p.set_defaults(handler=run)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """How the models run over the cases (``amagi evaluate`` and ``amagi calibrate``)."""
    p.add_argument("--prediction-hz", type=float, default=None,
                   help="predictions per second (default: model.prediction_hz)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None, help="auto, cpu, cuda (default: model.device)")
    from amagi_plugin.config import BACKENDS

    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="what runs the clip networks (default: model.backend)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (in all)")
    p.add_argument("-j", "--jobs", type=int, default=1,
                   help="worker processes (cases and models are spread over them)")
    p.add_argument("--no-progress", action="store_true")


def run_backend(args: argparse.Namespace, cfg, device: str) -> str:
    """The backend a run's clip networks use (``--backend``, else ``model.backend``),
    checked against ``device``."""
    from amagi_plugin.backends import check_backend

    backend = args.backend or cfg.model.backend
    check_backend(backend, device)
    return backend


def check_run_arguments(args: argparse.Namespace) -> None:
    """Refuse run options no run can use (those of :func:`add_run_arguments`)."""
    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {args.jobs}")


def _from_flag(text: str, cwd: Path) -> ModelSpec:
    from amagi_plugin.modelspec import checkpoint_spec
    from models import CheckpointError, read_checkpoint

    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise InputError(f"--checkpoint expects NAME=[ARCH:]PATH, got {text!r}")
    arch, _, path = rest.rpartition(":") if ":" in rest else ("", "", rest)
    p = Path(path) if Path(path).is_absolute() else cwd / path
    build: dict[str, Any] = {}
    if not arch:
        try:
            meta = read_checkpoint(p).get("meta", {})
        except CheckpointError as e:
            raise InputError(str(e)) from None
        arch, build = meta.get("arch", ""), dict(meta.get("build", {}))
        if not arch:
            raise InputError(f"{p} records no architecture; use NAME=ARCH:PATH")
    return checkpoint_spec(name, arch, p, build)


def _display(arch: str, has_seg: bool, taken: set[str]) -> str:
    name = "AMAGI" if has_seg else "SlowFast"
    return name if name not in taken else f"{name} ({arch})"


def run(args: argparse.Namespace, ctx) -> int:
    from models.threads import torch_threads

    with torch_threads(args.threads):  # this command's torch threads, restored after it
        return _run(args, ctx)


def _run(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.analysis import OperatingPoint
    from amagi_plugin.evaluation.cases import load_cases, synth_index
    from amagi_plugin.evaluation.run import evaluate_models, write_outputs
    from amagi_plugin.fastpath import checked_bf16
    from amagi_plugin.modelspec import DEMO_DIR, load_model, model_dir_specs, resolve_device
    from amagi_plugin.pipeline import AnalysisOptions
    from amagi_plugin.runtime import at_model_point
    from dicom_io.results import DEMO_DISCLAIMER
    from models import CheckpointError

    cfg = ctx.config
    data = ctx.cwd / args.data
    cases = load_cases(data)
    specs = [_from_flag(t, ctx.cwd) for t in args.checkpoint]
    model_dir = ctx.cwd / args.model_dir if args.model_dir else (None if specs else DEMO_DIR)
    demo = False
    if model_dir is not None:
        bundled, demo = model_dir_specs(model_dir)
        specs = (bundled[-1:] if args.no_baseline else bundled) + specs  # the main one last
    device = resolve_device(args.device or cfg.model.device)
    options = AnalysisOptions(
        prediction_hz=args.prediction_hz or cfg.model.prediction_hz,
        batch_size=args.batch_size or cfg.model.batch_size, device=device,
        bf16=checked_bf16(cfg.model.bf16, device), threshold=cfg.analysis.threshold,
        smoothing=cfg.analysis.smoothing, smoothing_s=cfg.analysis.smoothing_s,
        hold_threshold=cfg.analysis.hold_threshold, key_frame_masks=False,
        backend=run_backend(args, cfg, device))
    models: list[ModelSpec] = []
    info: dict[str, Any] = {}
    for spec in specs:
        try:  # fail early, in this process, on a checkpoint that does not fit
            model = load_model(spec)
        except CheckpointError as e:
            raise InputError(str(e)) from None
        label = spec.name or _display(spec.arch, model.default_cfg.has_segmentation, set(info))
        if label in info:
            raise InputError(f"two models are named {label!r}")
        models.append(replace(spec, name=label))
        info[label] = {"arch": spec.arch, "checkpoint": spec.checkpoint.name,  # type: ignore[union-attr]
                       "build": dict(spec.build)}
    meta, preset = synth_index(data)
    settings = meta.get("settings", {})
    ranges = meta.get("ranges")
    domain = preset or "custom ranges"
    description = (f"{len(cases)} case(s) from {data.name}"
                   + (f", amagi synth seed {meta['seed']}, domain {domain}, "
                      f"{settings.get('duration_s')} s at {settings.get('fps')} fps, "
                      f"{settings.get('width')}x{settings.get('height')}" if meta else ""))
    if args.folds > 1 and len({c.patient_id for c in cases}) < args.folds:
        raise InputError(f"{len({c.patient_id for c in cases})} patient(s) cannot make "
                         f"{args.folds} folds (use --folds 1)")
    check_run_arguments(args)
    per_model = {m.name: at_model_point(options, m, cfg) for m in models}
    points = {name: OperatingPoint.of(o).to_json() for name, o in per_model.items()}
    first = next(iter(points.values()))
    shared = first if all(v == first for v in points.values()) else None
    doc, preds = evaluate_models(models, per_model, cases, folds=args.folds,
                                 fold_seed=args.fold_seed, jobs=args.jobs, threads=args.threads,
                                 progress=None if args.no_progress else ctx.stderr)
    doc = {"notice": DEMO_DISCLAIMER if demo else None,
           "data": {"root": str(data), "description": description, "seed": meta.get("seed"),
                    "ranges": ranges, "settings": settings,
                    "case_seeds": [c.get("seed") for c in meta.get("cases", [])]},
           "model_info": info,
           # one table when every model is read alike (the configured or a shared point),
           # else each model's own (a model.json's operating point)
           "post_processing": ({**shared, "prediction_hz": options.prediction_hz} if shared
                               else {"prediction_hz": options.prediction_hz,
                                     "by_model": points}),
           **doc}
    out = ctx.cwd / args.output_directory
    write_outputs(doc, preds, out, title="Held-out evaluation" + (" (demo model)" if demo else ""))
    for m in doc["models"]:
        s = doc["pooled"][m]
        ctx.print(f"{m}: frame F1 {s['frame']['f1']:.3f}, AUROC {s['frame']['auroc']}, "
                  f"event F1@0.5 {s['events']['iou_0.5']['f1']:.3f}, count error "
                  f"{_pct(s['index']['count_error_rel'])}, duration error "
                  f"{_pct(s['index']['duration_error_rel'])}, false alarms/h on bleeding-free "
                  f"cases {_num(s['false_alarms']['per_hour_bleeding_free'])}, median onset "
                  f"latency {_num(s['onset']['median_s'])} s ({s['onset']['missed']} of "
                  f"{s['onset']['events']} events missed)")
    ctx.print(f"wrote {out}/metrics.json, metrics.md, predictions.json and fold plots")
    return 0


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"
