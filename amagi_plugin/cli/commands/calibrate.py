"""``amagi calibrate``: choose each model's operating point on validation cases."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from amagi_plugin.cli.commands.evaluate import (
    add_run_arguments,
    check_run_arguments,
    run_backend,
)
from amagi_plugin.errors import InputError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "calibrate", parents=parents, help="choose each model's operating point",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Run the models of --model-dir (its model.json: the main model and its "
        "baseline) over the annotated validation cases of --data (as 'amagi synth' writes "
        "them; never the held-out cases you report on), and choose for each the threshold, "
        "smoothing length and hold threshold (hysteresis: an event that began at the "
        "threshold lasts while the probability stays above the hold; none is tried too) that "
        "give the best event F1 at IoU 0.5 among those with at most 1 false alarm an hour "
        "on the bleeding-free cases (ties: the lower count error, then no hold, then the "
        "point nearest the authors' 0.5 and 1 s). Prints each choice, writes "
        "every candidate's score to OUTPUT/calibration.json, and with --write stores each "
        "point in model.json, where 'amagi process', 'serve' and 'evaluate' read it (an "
        "[analysis] key that is set still wins).")
    p.add_argument("--data", required=True, nargs="+", metavar="DIR",
                   help="validation cases (several folders are pooled; include bleeding-free "
                   "cases, e.g. 'amagi synth --domain randomised-static', and only points "
                   "with at most 1 false alarm an hour on them compete)")
    p.add_argument("--model-dir", required=True, metavar="DIR",
                   help="a folder with model.json and its checkpoints")
    p.add_argument("-od", "--output-directory", required=True, metavar="DIR")
    p.add_argument("--write", action="store_true",
                   help="store each model's point in model.json (replaced atomically)")
    p.add_argument("--probe-fusion", action="store_true",
                   help="for a model with a neighbourhood probe, choose the probe's weight "
                   "against the clip network (0.5-1) and the length of its scores' moving "
                   "mean (0.5, 1, 2 s) together with the point, by the same rule; the "
                   "model.json's own pair stays unless another beats its event F1 by 0.05 "
                   "(validation's noise); with --write they are stored in its 'probe' entry")
    add_run_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx) -> int:
    from models.threads import torch_threads

    with torch_threads(args.threads):
        return _run(args, ctx)


def _data_records(folders: list[tuple[Path, int]]) -> tuple[dict[str, Any], str]:
    """What the validation data is, as recorded and in words: one folder's record, or the
    records of several (``sets``) with their descriptions joined."""
    records = [_data_record(d, n) for d, n in folders]
    if len(records) == 1:
        return records[0]
    return ({"sets": [r for r, _ in records], "cases": sum(n for _, n in folders)},
            " + ".join(w for _, w in records))


def _data_record(data: Path, n_cases: int) -> tuple[dict[str, Any], str]:
    """What the validation data is (from its ``cases.json`` when present), as recorded and
    in words."""
    from amagi_plugin.evaluation.cases import synth_index

    meta, domain = synth_index(data)
    settings = meta.get("settings", {})
    record = {"name": data.name, "cases": n_cases, "seed": meta.get("seed"), "domain": domain,
              "duration_s": settings.get("duration_s")}
    if meta.get("seed") is None:
        return record, f"{n_cases} validation cases in {data.name}"
    return record, (f"amagi synth --seed {meta['seed']} --domain {record['domain']}, "
                    f"{n_cases} cases x {settings.get('duration_s', 0):g} s")


def _run(args: argparse.Namespace, ctx) -> int:
    from amagi_plugin.analysis import OperatingPoint
    from amagi_plugin.evaluation.calibrate import calibration_record
    from amagi_plugin.evaluation.cases import load_cases
    from amagi_plugin.evaluation.run import evaluate_models
    from amagi_plugin.fastpath import checked_bf16
    from amagi_plugin.modelspec import model_dir_specs, resolve_device
    from amagi_plugin.pipeline import AnalysisOptions

    cfg = ctx.config
    folders, model_dir = [ctx.cwd / d for d in args.data], ctx.cwd / args.model_dir
    per_folder = [(d, load_cases(d)) for d in folders]
    cases = [c for _, found in per_folder for c in found]
    if len({c.case_id for c in cases}) != len(cases):
        raise InputError("the validation folders share case names: pool folders of "
                         "different seeds")
    if not any(c.events for c in cases):
        raise InputError(f"no validation case under {', '.join(map(str, folders))} has a "
                         "bleeding event: no operating point can be chosen on them")
    check_run_arguments(args)
    specs, _ = model_dir_specs(model_dir)
    target = ctx.cwd / args.output_directory / "calibration.json"
    try:  # before the long part: a folder that cannot be made fails at once
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot write {target}: {e.strerror or e}") from None
    names: dict[str, str] = {}  # label -> checkpoint, as model.json names it
    for spec in specs:
        label = spec.arch if spec.arch not in names else f"{spec.arch} (main)"
        names[label] = _entry_name(spec.checkpoint, model_dir)  # type: ignore[arg-type]
    specs = [replace(s, name=label) for s, label in zip(specs, names, strict=True)]
    fusion = {s.name: s.probe_use for s in specs
              if s.probe and s.probe_use is not None and s.refiner is None}
    if args.probe_fusion and not fusion:
        raise InputError(f"--probe-fusion: no model of {model_dir / 'model.json'} has a probe "
                         "(without a refiner) whose fusion could be chosen")
    hz = args.prediction_hz or cfg.model.prediction_hz
    # The probabilities do not depend on the post-processing: one run serves every candidate.
    device = resolve_device(args.device or cfg.model.device)
    options = AnalysisOptions(prediction_hz=hz,
                              batch_size=args.batch_size or cfg.model.batch_size,
                              device=device, bf16=checked_bf16(cfg.model.bf16, device),
                              key_frame_masks=False, backend=run_backend(args, cfg, device))
    _, preds = evaluate_models(specs, options, cases, folds=1, jobs=args.jobs,
                               threads=args.threads,
                               progress=None if args.no_progress else ctx.stderr)
    record_data, chosen_on = _data_records([(d, len(found)) for d, found in per_folder])
    try:
        record = calibration_record(preds, {c.case_id: c for c in cases}, hz, names,
                                    record_data, chosen_on,
                                    fusion if args.probe_fusion else None)
    except ValueError as e:
        raise InputError(f"cannot calibrate: {e}") from None
    try:
        target.write_text(json.dumps(record, indent=1) + "\n")
    except OSError as e:
        raise InputError(f"cannot write {target}: {e.strerror or e}") from None
    for checkpoint, m in record["models"].items():
        c, a = m["chosen_score"], m["authors_score"]
        point = OperatingPoint.from_json(m["chosen"])
        ctx.print(f"{m['label']} ({checkpoint}): {point.describe()}: event F1@0.5 "
                  f"{c['event_f1']:.3f}, "
                  f"{c['pred_events']} events for {c['true_events']}"
                  + (f" (the authors' point: {a['event_f1']:.3f}, {a['pred_events']} events)"
                     if a else ""))
        if "probe" in m:
            ctx.print(f"{m['label']}: probe weight {m['probe']['weight']:g}, its scores' "
                      f"moving mean {m['probe']['smooth_s']:g} s (of "
                      f"{len(m['probe_candidates'])} pairs tried)")
    if args.write:
        _write_points(model_dir / "model.json", record["models"])
        ctx.print(f"wrote each model's operating point to {model_dir / 'model.json'}")
    ctx.print(f"wrote {target}")
    return 0


def _entry_name(checkpoint: str | Path, model_dir: Path) -> str:
    """A checkpoint as its model.json entry names it (relative to the folder), normalised."""
    return os.path.normpath(os.path.relpath(model_dir / checkpoint, model_dir))


def _write_points(path: Path, models: dict[str, Any]) -> None:
    """Store each chosen point in its entry of ``path`` (a ``model.json``): written beside
    it, then moved over it, so a reader never sees half a file."""
    manifest = json.loads(path.read_text())
    for entry in (manifest, manifest.get("baseline")):
        name = entry and _entry_name(entry["checkpoint"], path.parent)
        if name in models:
            entry["operating_point"] = models[name]["chosen"]
            if "probe" in models[name]:
                probe = entry["probe"]
                entry["probe"] = {**({"file": probe} if isinstance(probe, str) else probe),
                                  **models[name]["probe"]}
    try:
        fd, tmp = tempfile.mkstemp(prefix=".model.json.", dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write beside {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
