"""Wiring below the command line: the configured model, loaded and wrapped for analysis.

Every command (``process``, ``serve``, ``explain``), the doctor, the benchmarks and the tests
build their analyzer here, so a configuration key means the same thing everywhere.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amagi_plugin.config import Config
    from amagi_plugin.modelspec import ModelSpec
    from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer

log = logging.getLogger(__name__)


def analyzer_from_config(cfg: Config, device: str | None = None,
                         ) -> tuple[BleedingAnalyzer, ModelSpec]:
    """The configured model, loaded, wrapped in a :class:`BleedingAnalyzer`, and its spec.

    ``device``: where this analyzer runs (a ``worker.devices`` entry); default ``model.device``.
    """
    from amagi_plugin.fastpath import checked_bf16, device_batch_size
    from amagi_plugin.modelspec import resolve_device, resolve_model
    from amagi_plugin.pipeline import AnalysisOptions

    spec = resolve_model(cfg.model)
    device = resolve_device(device or cfg.model.device)
    batch_size = cfg.model.batch_size
    if cfg.model.fast and cfg.sources.get("model.batch_size", "default") == "default":
        batch_size = device_batch_size(device, batch_size)
    options = AnalysisOptions(
        prediction_hz=cfg.model.prediction_hz, batch_size=batch_size, device=device,
        bf16=checked_bf16(cfg.model.bf16, device), fast=cfg.model.fast,
        backend=cfg.model.backend,
        threshold=cfg.analysis.threshold,
        smoothing=cfg.analysis.smoothing, smoothing_s=cfg.analysis.smoothing_s,
        hold_threshold=cfg.analysis.hold_threshold,
        decode_workers=cfg.model.decode_workers, mask_scale=cfg.analysis.mask_scale)
    return load_analyzer(spec, at_model_point(options, spec, cfg)), spec


def at_model_point(options: AnalysisOptions, spec: ModelSpec, cfg: Config) -> AnalysisOptions:
    """``options`` read at ``spec``'s operating point, except the post-processing knobs that
    ``cfg`` sets explicitly (:func:`~amagi_plugin.analysis.at_operating_point`). A hold
    threshold above the threshold they end with is a :class:`ConfigError`."""
    from amagi_plugin.analysis import OperatingPoint, at_operating_point
    from amagi_plugin.errors import ConfigError

    configured = configured_post_processing(cfg)
    out = at_operating_point(options, spec.operating_point, configured)
    try:  # the point they end with checks itself (a hold above its threshold)
        point = OperatingPoint.of(out)
    except ValueError as e:
        raise ConfigError(f"{spec.name or spec.arch}: {e} (analysis.threshold, "
                          "analysis.hold_threshold)") from None
    if spec.operating_point is not None:
        log.info("post-processing: %s (%s's operating point%s)", point.describe(), spec.name,
                 f"; configured: {', '.join(sorted(configured))}" if configured else "")
    return out


def load_analyzer(spec: ModelSpec, options: AnalysisOptions) -> BleedingAnalyzer:
    """``spec``'s model, its refiner and its probe, loaded on ``options.device`` and wrapped
    in a :class:`BleedingAnalyzer`: every analysis (commands, service, evaluation) builds it
    here."""
    from amagi_plugin.errors import InputError
    from amagi_plugin.modelspec import load_model
    from amagi_plugin.pipeline import BleedingAnalyzer
    from models.patchnet import load_probe
    from models.refiner import load_refiner

    refiner = None if spec.refiner is None else load_refiner(spec.refiner, options.device)
    probe = load_probe(list(spec.probe), options.device) if spec.probe else None
    model = load_model(spec, options.device)
    try:
        return BleedingAnalyzer.for_model(model, options, refiner=refiner, probe=probe,
                                          probe_use=spec.probe_use)
    except ValueError as e:
        if probe is None:
            raise
        # the probe does not fit this model
        raise InputError(f"{spec.name or spec.arch}: probe "
                         f"{', '.join(map(str, spec.probe))}: {e}") from None


def configured_post_processing(cfg: Config) -> frozenset[str]:
    """The post-processing knobs (``[analysis]`` keys) set explicitly, by a file, the
    environment or a flag: they win over a model's operating point."""
    from amagi_plugin.analysis import OperatingPoint

    return frozenset(k for k in OperatingPoint.KEYS
                     if cfg.sources.get(f"analysis.{k}", "default") != "default")
