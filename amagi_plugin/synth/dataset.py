"""Generate a whole dataset: many cases, optionally in several processes, with progress."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from amagi_plugin.synth.errors import OutputExistsError, SynthError
from amagi_plugin.synth.scene import SceneRanges
from amagi_plugin.synth.writer import CaseSpec, OutputOptions, plan_cases, write_case, write_index

log = logging.getLogger(__name__)


def generate_dataset(root: str | os.PathLike[str], n_cases: int, seed: int, *,
                     width: int = 224, height: int = 224, fps: float = 10.0,
                     duration_s: float = 60.0, ranges: SceneRanges | str = "train",
                     cases_per_patient: int = 1, options: OutputOptions | None = None,
                     only: Sequence[int] | None = None,
                     jobs: int = 1, progress: TextIO | None = None) -> Path:
    """Write ``n_cases`` cases and the dataset index under ``root``; returns ``cases.json``.

    Parameters
    ----------
    only
        0-based indices of the cases to write, each exactly as the whole set writes it (its
        seed, ids and dates depend only on ``seed`` and its index); ``None`` writes them all.
    jobs
        Worker processes (1 = in this process).
    progress
        Stream for the tqdm bar; ``None`` hides it.
    """
    options = options or OutputOptions()
    if jobs < 1:
        raise SynthError(f"jobs must be >= 1, got {jobs}")
    if only is not None:
        wrong = sorted({i for i in only if not 0 <= i < n_cases})
        if wrong or not only:
            raise SynthError(f"the cases to write must be indices 0-{n_cases - 1} of the "
                             f"{n_cases}, got {sorted(only) if only else 'none'}")
        only = sorted(set(only))
    root = Path(root)
    if (root / "cases.json").exists() and not options.overwrite:
        raise OutputExistsError(f"{root / 'cases.json'} already exists "
                                "(use --overwrite to replace the dataset)")
    root.mkdir(parents=True, exist_ok=True)
    specs = plan_cases(n_cases, seed, width=width, height=height, fps=fps,
                       duration_s=duration_s, ranges=ranges, cases_per_patient=cases_per_patient)
    if only is not None:
        specs = [s for s in specs if s.index in only]
    if not options.overwrite:
        clash = [s.case_id for s in specs if (root / s.case_id).exists()]
        if clash:
            raise OutputExistsError(f"{root / clash[0]} already exists "
                                    "(use --overwrite to replace it)")
    bar = tqdm(total=len(specs), unit="case", file=progress, disable=progress is None,
               desc="amagi synth")
    records: list[dict[str, Any]] = []
    try:
        if jobs == 1:
            for spec in specs:
                records.append(write_case(spec, root, options))
                bar.update()
        else:
            pool = ProcessPoolExecutor(max_workers=jobs)
            try:
                futures = [pool.submit(write_case, spec, root, options) for spec in specs]
                for fut in as_completed(futures):
                    records.append(fut.result())
                    bar.update()
            finally:
                # On a failed case or an interrupt the cases not yet started are dropped, not
                # rendered before the error is reported (a plain ``with`` waits for all of them).
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    settings = {"n_cases": n_cases, "width": width, "height": height, "fps": fps,
                "duration_s": duration_s, "cases_per_patient": cases_per_patient}
    if only is not None:
        settings["only"] = only
    plan = ranges if isinstance(ranges, SceneRanges) else None
    if plan is not None and plan.video_format is not None:
        settings["per_case_format"] = ("width, height and fps are base values; each case "
                                       "record gives its own")
    return write_index(root, records, seed=seed, ranges=ranges, options=options,
                       settings=settings)


__all__ = ["CaseSpec", "generate_dataset"]
