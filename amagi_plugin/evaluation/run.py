"""The whole evaluation: several models on the same cases, patient-level folds, outputs."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from amagi_plugin.evaluation.cases import CasePrediction, TruthCase, predict_case
from amagi_plugin.evaluation.metrics import false_alarms, index_errors, onset_latencies
from amagi_plugin.evaluation.report import IOUS, markdown_report, plot_fold, summarize
from amagi_plugin.modelspec import ModelSpec

__all__ = ["build_analyzer", "evaluate_models", "metrics_document",
           "write_outputs"]

log = logging.getLogger(__name__)


def _folds(cases: Sequence[TruthCase], k: int, seed: int) -> list[int]:
    if k <= 1:
        return [0] * len(cases)
    from models.training.splits import patient_folds

    return patient_folds([c.patient_id for c in cases], k, seed)


def build_analyzer(spec: ModelSpec, options: Any) -> Any:
    """Build ``spec``'s model, load its checkpoint (strict), wrap it in an analyzer."""
    from amagi_plugin.runtime import load_analyzer

    return load_analyzer(spec, options)


_WORKER: dict[str, Any] = {}


def _options_of(options: Any, name: str) -> Any:
    """One model's analysis options: ``options`` itself, or its entry when it maps model
    names to options."""
    return options[name] if isinstance(options, Mapping) else options


def _init_worker(specs: Sequence[ModelSpec], options: Any, threads: int) -> None:
    """Set up one worker process of :func:`evaluate_models` (its own spawned process, so
    its torch thread count is its own: nothing else runs torch there)."""
    import torch

    _stop_with_parent()
    torch.set_num_threads(threads)
    _WORKER.update({s.name: build_analyzer(s, _options_of(options, s.name)) for s in specs})


def _stop_with_parent() -> None:
    """End this worker process as soon as the process that started it is gone (killed
    before it could close its pool): a worker would otherwise finish its case for nobody,
    holding its cores. The parent's sentinel is the documented signal
    (:func:`multiprocessing.parent_process`)."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        log.warning("the evaluating process is gone: worker %d stops", os.getpid())
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _work(case: TruthCase, label: str) -> CasePrediction:
    return predict_case(_WORKER[label], case, label)


def evaluate_models(specs: Sequence[ModelSpec], options: Any, cases: Sequence[TruthCase], *,
                    folds: int = 3, fold_seed: int = 0, ious: Sequence[float] = IOUS,
                    jobs: int = 1, threads: int | None = None,
                    progress: TextIO | None = None) -> tuple[dict[str, Any],
                                                             list[CasePrediction]]:
    """Run every model on every case; returns the metrics document and the predictions.

    Parameters
    ----------
    specs
        The models; each one's ``name`` is its display label in the outputs.
    options
        :class:`~amagi_plugin.pipeline.AnalysisOptions`, the same for every model, or a
        mapping of each model's ``name`` to its own (its operating point).
    folds
        Patient-level folds of the cases (1 = one group).
    jobs
        Worker processes (1 = this process, with the caller's torch threads); each uses
        ``threads // jobs`` torch threads (``threads`` defaults to the caller's count).
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    fold_of = _folds(cases, folds, fold_seed)
    models = [s.name for s in specs]
    bar = tqdm(total=len(cases) * len(models), unit="run", desc="amagi evaluate",
               file=progress, disable=progress is None)
    tasks = [(case, m) for case in cases for m in models]
    results: list[CasePrediction] = []
    if jobs <= 1:
        analyzers = {s.name: build_analyzer(s, _options_of(options, s.name)) for s in specs}
        for case, m in tasks:
            results.append(predict_case(analyzers[m], case, m))
            bar.update()
    else:
        import torch

        per = max(1, (threads or torch.get_num_threads()) // jobs)
        # spawn, not fork: the caller may hold CUDA (a forked child cannot use it) or threads
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker,
                                 initargs=(list(specs), options, per)) as pool:
            for pred in pool.map(_work, *zip(*tasks, strict=True)):
                results.append(pred)
                bar.update()
    bar.close()
    doc = metrics_document(models, cases, results, fold_of, ious, folds=max(1, folds),
                           fold_seed=fold_seed)
    return doc, [p for m in models for p in results if p.model == m]


def metrics_document(models: Sequence[str], cases: Sequence[TruthCase],
                     results: Sequence[CasePrediction], fold_of: Sequence[int],
                     ious: Sequence[float] = IOUS, *, folds: int | None = None,
                     fold_seed: int = 0) -> dict[str, Any]:
    """The metrics document of finished predictions (one per model and case).

    ``fold_of`` gives each case's fold (0-based, in the order of ``cases``); ``folds``
    defaults to the number of distinct folds.

    Keys: ``models``, ``folds``, ``fold_seed``, ``ious``, ``pooled`` (model → summary),
    ``per_fold`` (fold index as a string → model → summary), ``per_tag`` (tag name → tag
    value → model → summary, over the cases whose labels.json carries that tag; empty when
    no case has tags) and ``cases`` (one row per case, with each model's figures).
    """
    truth = {c.case_id: c for c in cases}
    preds: dict[str, list[CasePrediction]] = {
        m: [p for p in results if p.model == m] for m in models}
    doc: dict[str, Any] = {"models": list(models),
                           "folds": folds if folds is not None else len(set(fold_of)) or 1,
                           "fold_seed": fold_seed, "ious": list(ious)}
    doc["pooled"] = {m: summarize(preds[m], truth, ious) for m in models}
    doc["per_fold"] = {}
    for k in sorted(set(fold_of)):
        ids = {c.case_id for c, f in zip(cases, fold_of, strict=True) if f == k}
        doc["per_fold"][str(k)] = {m: summarize([p for p in preds[m] if p.case_id in ids],
                                                truth, ious) for m in models}
    doc["per_tag"] = {}
    for tag, groups in _tag_groups(cases).items():
        doc["per_tag"][tag] = {value: {m: summarize([p for p in preds[m] if p.case_id in ids],
                                                    truth, ious) for m in models}
                               for value, ids in groups.items()}
    rows = []
    for c, f in zip(cases, fold_of, strict=True):
        row: dict[str, Any] = {"case_id": c.case_id, "patient_id": c.patient_id, "fold": f,
                               "true_count": len(c.events),
                               "true_duration_s": round(sum(b - a for a, b in c.events), 3),
                               "true_events": [[round(a, 3), round(b, 3)] for a, b in c.events],
                               "bleeding_free": c.bleeding_free,
                               "duration_s": round(c.duration_s, 3), "tags": dict(c.tags),
                               "models": {}}
        for m in models:
            p = next(p for p in preds[m] if p.case_id == c.case_id)
            row["models"][m] = _case_figures(p, c)
        rows.append(row)
    doc["cases"] = rows
    return doc


def _case_figures(p: CasePrediction, c: TruthCase) -> dict[str, Any]:
    e = index_errors(p.events, c.events)
    return {"pred_count": e.pred_count,
            "pred_duration_s": round(e.pred_duration_s, 3),
            "count_error": e.count_error,
            "duration_error_s": round(e.duration_error_s, 3),
            "events": [[round(a, 3), round(b, 3)] for a, b in p.events],
            "mean_probability": round(float(p.probabilities.mean()), 6),
            "count_error_rel": _round(e.count_error_rel),
            "duration_error_rel": _round(e.duration_error_rel),
            "false_alarms": false_alarms(p.events, c.events, c.duration_s).count,
            "onset_latencies_s": [_round(x, 3) for x in onset_latencies(
                c.events, p.times_s, p.decisions, p.events)]}


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def _tag_groups(cases: Sequence[TruthCase]) -> dict[str, dict[str, set[str]]]:
    """Tag name -> tag value -> ids of the cases carrying it (cases without a tag skip it)."""
    groups: dict[str, dict[str, set[str]]] = {}
    for c in cases:
        for tag, value in c.tags.items():
            groups.setdefault(tag, {}).setdefault(value, set()).add(c.case_id)
    return {t: dict(sorted(v.items())) for t, v in sorted(groups.items())}


def write_outputs(doc: dict[str, Any], preds: Sequence[CasePrediction], out: Path,
                  title: str = "Evaluation") -> list[Path]:
    """``metrics.json``, ``metrics.md``, ``predictions.json`` and ``fold<k>.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    p = out / "metrics.json"
    p.write_text(json.dumps(doc, indent=1) + "\n")
    written.append(p)
    p = out / "metrics.md"
    p.write_text(markdown_report(doc, title))
    written.append(p)
    p = out / "predictions.json"
    p.write_text(json.dumps([x.to_dict() for x in preds]) + "\n")
    written.append(p)
    for k in sorted({c["fold"] for c in doc["cases"]}):
        written.append(plot_fold(doc, k, out / f"fold{k + 1}.png"))
    return written
