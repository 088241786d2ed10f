"""A temporal refiner fitted to a clip model's predictions (``amagi train refiner`` and the
demo build's refiner stage).

The data are ``amagi evaluate``'s ``predictions.json`` files: each entry is one model's
probability per prediction instant of one video, with the truth label of the instant. The
refiner (:mod:`models.refiner`) is trained at their prediction rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amagi_plugin.errors import InputError
from amagi_plugin.evaluation.cases import read_predictions
from models.refiner import RefinerConfig
from models.training.refiner import RefinerTrainConfig, RefinerTrainResult, train_refiner

__all__ = ["fit_refiner"]


def _rate_hz(times_s: np.ndarray, where: str) -> float:
    steps = np.diff(times_s)
    if steps.size == 0 or not (steps > 0).all():
        raise InputError(f"{where}: its prediction times must increase (at least 2 instants)")
    return float(round(1.0 / float(np.median(steps)), 6))


def fit_refiner(paths: Sequence[Path], model: str | None = None, *, steps: int | None = None,
                width: int | None = None, layers: int | None = None,
                offset: float | None = None, seed: int = 0
                ) -> tuple[RefinerTrainResult, dict[str, Any]]:
    """A refiner trained on ``model``'s predictions in ``paths`` and the record to keep with
    it (``meta`` of its file: data, model, rate, settings, losses). A setting left ``None``
    is :class:`RefinerTrainConfig`'s or :class:`RefinerConfig`'s default."""
    videos, rates, label = [], set(), model
    for path in paths:
        preds, label = read_predictions(path, label)
        for p in preds:
            rates.add(_rate_hz(p.times_s, f"{path}: {p.case_id}"))
            videos.append((p.probabilities, p.labels.astype(np.float64)))
    if len(rates) > 1:
        raise InputError(f"the predictions come at different rates ({sorted(rates)} per "
                         "second): evaluate every video at one --prediction-hz")
    given = {k: v for k, v in (("width", width), ("layers", layers)) if v is not None}
    if rates:
        given["rate_hz"] = rates.pop()
    architecture = RefinerConfig(**given)
    cfg = RefinerTrainConfig(seed=seed, architecture=architecture, **{
        k: v for k, v in (("steps", steps), ("offset", offset)) if v is not None})
    result = train_refiner(videos, cfg)
    meta = {"model": label, "trained_on": [str(p) for p in paths],
            "rate_hz": architecture.rate_hz, "videos": result.videos,
            "positive_share": round(result.positive_share, 4),
            "steps": cfg.steps, "offset": cfg.offset, "seed": seed,
            "losses": [round(x, 4) for x in result.losses], "seconds": round(result.seconds, 1)}
    return result, meta
