"""Reading checkpoints and loading them into models, with every mismatch reported by name.

Accepted inputs (reference README, "Checkpoint key conventions"):

- the authors' mmcv files ``{'meta', 'state_dict', 'optimizer'}`` whose ``state_dict`` has
  mmaction2 keys (``backbone.slow_path...``, ``backbone.seg_model...``, ``cls_head...``);
- a flat ``{key: tensor}`` state dict with the same keys (a ``module.`` prefix from
  DistributedDataParallel is stripped);
- the authors' standalone per-fold segmentation file (``split12_ocr_best.pth`` ...), a flat
  dict with HRNet-OCR training keys: each key ``k`` becomes
  ``'backbone.seg_model.' + k.replace('last_layer', 'aux_head').replace('model.', '')`` and
  goes into the segmentation net only; keys of the training loss (``loss.*``) are ignored;
- an mmaction2 Kinetics SlowFast checkpoint as initialisation: ``strict=False`` loads every
  tensor whose name and shape match and reports the others (laterals of another kernel size,
  the head) in the returned :class:`LoadReport`.

Files are read with ``torch.load(weights_only=True)``; the mapping functions are pure.
"""

from __future__ import annotations

import enum
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.errors import CheckpointError

__all__ = [
    "CheckpointKind",
    "LoadReport",
    "compare_state_dicts",
    "extract_state_dict",
    "load_checkpoint",
    "map_seg_checkpoint_keys",
    "read_checkpoint",
    "save_checkpoint",
    "strip_prefix",
]

logger = logging.getLogger(__name__)

SEG_PREFIX = "backbone.seg_model."
_FULL_PREFIXES = ("backbone.", "cls_head.")
_SHOWN = 5


class CheckpointKind(str, enum.Enum):
    """Layout of a checkpoint's keys; ``AUTO`` decides from the keys."""

    AUTO = "auto"
    FULL = "full"
    SEGMENTATION = "segmentation"


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did, key by key (model-side key names).

    Attributes
    ----------
    loaded : list of str
        Tensors copied into the model.
    missing : list of str
        Model keys absent from the checkpoint (left unchanged).
    unexpected : list of str
        Checkpoint keys the model does not have.
    mismatched : list of (key, checkpoint shape, model shape)
        Keys present on both sides with different shapes (left unchanged).
    ignored : list of str
        Checkpoint keys deliberately skipped (the segmentation training loss).
    kind : CheckpointKind
        The layout the keys were read as.
    source : str
        File name or ``'<state dict>'``.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    kind: CheckpointKind = CheckpointKind.FULL
    source: str = "<state dict>"

    @property
    def ok(self) -> bool:
        """True when every model key was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line: counts and the first few keys of each problem."""
        parts = [f"{len(self.loaded)} loaded"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({_first(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({_first(self.unexpected)})")
        if self.mismatched:
            shown = [f"{k}: checkpoint {list(a)} vs model {list(b)}"
                     for k, a, b in self.mismatched[:_SHOWN]]
            more = f", +{len(self.mismatched) - _SHOWN} more" if len(self.mismatched) > _SHOWN else ""
            parts.append(f"{len(self.mismatched)} wrong shape ({'; '.join(shown)}{more})")
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored")
        return ", ".join(parts)


def _first(keys: list[str]) -> str:
    more = f", +{len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _safe_globals() -> list[Any]:
    """numpy scalar types that mmcv writes into ``meta`` (e.g. best scores)."""
    import numpy as np

    out: list[Any] = [np.dtype]
    core = np._core if hasattr(np, "_core") else np.core
    out.append(core.multiarray.scalar)
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return out


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Load a ``.pth`` file on the CPU with ``weights_only=True``.

    numpy scalars in mmcv's ``meta`` are allowed; anything else that needs arbitrary
    unpickling is refused.

    Raises
    ------
    CheckpointError
        If the file is missing or cannot be read safely.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {p}: {first}") from e


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The ``{key: tensor}`` dict inside a loaded checkpoint.

    Unwraps ``obj['state_dict']`` (mmcv) when present; otherwise ``obj`` must itself be a
    flat dict of tensors.

    Raises
    ------
    CheckpointError
        If no dict of tensors is found.
    """
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"checkpoint holds no state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        top = ", ".join(map(str, list(obj)[:5]))
        raise CheckpointError(
            f"checkpoint is not a flat {{key: tensor}} state dict: {len(bad)} non-tensor "
            f"entries (e.g. {bad[0]!s}); top-level keys: {top}")
    return dict(obj)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module."
                 ) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that starts with it (others are kept)."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def map_seg_checkpoint_keys(state_dict: Mapping[str, torch.Tensor]
                            ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an authors' segmentation checkpoint to full-model keys.

    Each key ``k`` becomes ``'backbone.seg_model.' + k.replace('last_layer', 'aux_head')
    .replace('model.', '')`` (str.replace: every occurrence, as the authors' ``init_weights``).
    Keys of the segmentation training loss (``loss.*``) are returned separately.

    Returns
    -------
    mapped : dict
        Full-model key -> tensor.
    ignored : list of str
        Original keys that were dropped.
    """
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for k, v in state_dict.items():
        if k.startswith("loss."):
            ignored.append(k)
            continue
        mapped[SEG_PREFIX + k.replace("last_layer", "aux_head").replace("model.", "")] = v
    return mapped, ignored


def compare_state_dicts(model_sd: Mapping[str, torch.Tensor],
                        ckpt_sd: Mapping[str, torch.Tensor]) -> LoadReport:
    """Classify keys as loadable, missing, unexpected or of the wrong shape (pure)."""
    report = LoadReport()
    for k, v in model_sd.items():
        if k not in ckpt_sd:
            report.missing.append(k)
        elif tuple(ckpt_sd[k].shape) != tuple(v.shape):
            report.mismatched.append((k, tuple(ckpt_sd[k].shape), tuple(v.shape)))
        else:
            report.loaded.append(k)
    report.unexpected = [k for k in ckpt_sd if k not in model_sd]
    return report


def _detect(sd: Mapping[str, torch.Tensor], has_seg: bool) -> CheckpointKind:
    if any(k.startswith(_FULL_PREFIXES) for k in sd):
        return CheckpointKind.FULL
    if has_seg:
        return CheckpointKind.SEGMENTATION
    raise CheckpointError(
        f"checkpoint keys are neither mmaction2 model keys (backbone.*, cls_head.*) nor a "
        f"segmentation checkpoint for a model with a segmentation net; first keys: "
        f"{', '.join(list(sd)[:3])}")


def load_checkpoint(model: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any],
                    strict: bool = True, kind: CheckpointKind | str = CheckpointKind.AUTO
                    ) -> LoadReport:
    """Load weights into ``model`` by key name and report what happened.

    Parameters
    ----------
    model : nn.Module
        A model from :func:`models.build_model` (keys ``backbone.*``, ``cls_head.*``).
    source : path or mapping
        A ``.pth`` file, or an already loaded checkpoint / state dict.
    strict : bool
        If True (default) every model key must be present with the right shape and no
        checkpoint key may be left over; otherwise nothing is loaded and
        :class:`CheckpointError` names the offending keys. For a segmentation checkpoint
        only the segmentation net's keys count (from a whole model's checkpoint, its
        ``backbone.seg_model.*`` keys; the rest is reported as ignored). If False, every
        tensor whose name and shape match is loaded and the rest is reported (and logged as
        a warning): use this for a Kinetics initialisation.
    kind : CheckpointKind or str
        ``'auto'`` (default), ``'full'`` or ``'segmentation'``.

    Returns
    -------
    LoadReport

    Raises
    ------
    CheckpointError
        Unreadable file, not a state dict, or (strict) keys that do not fit.
    """
    try:
        kind = CheckpointKind(kind)
    except ValueError:
        raise CheckpointError(f"kind must be one of {[k.value for k in CheckpointKind]}, "
                              f"got {kind!r}") from None
    if isinstance(source, Mapping):
        label, raw = "<state dict>", source
    else:
        label, raw = Path(source).name, read_checkpoint(source)
    sd = strip_prefix(extract_state_dict(raw), "module.")
    model_sd = model.state_dict()
    has_seg = any(k.startswith(SEG_PREFIX) for k in model_sd)
    if kind is CheckpointKind.AUTO:
        kind = _detect(sd, has_seg)
    ignored: list[str] = []
    if kind is CheckpointKind.SEGMENTATION:
        if not has_seg:
            raise CheckpointError(f"{label}: a segmentation checkpoint needs a model with a "
                                  f"segmentation net")
        if any(k.startswith(SEG_PREFIX) for k in sd):  # a whole model's: its segmenter
            ignored = [k for k in sd if not k.startswith(SEG_PREFIX)]
            sd = {k: v for k, v in sd.items() if k.startswith(SEG_PREFIX)}
        else:
            sd, ignored = map_seg_checkpoint_keys(sd)
        model_sd = {k: v for k, v in model_sd.items() if k.startswith(SEG_PREFIX)}
    report = compare_state_dicts(model_sd, sd)
    report.kind, report.source, report.ignored = kind, label, ignored
    if strict and not report.ok:
        raise CheckpointError(f"checkpoint {label} does not fit the model: {report.summary()}")
    to_load = {k: sd[k] for k in report.loaded}
    with torch.no_grad():
        result = model.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:  # cannot happen: keys come from model.state_dict()
        raise CheckpointError(f"internal error: unexpected keys {result.unexpected_keys[:3]}")
    level = logging.INFO if report.ok else logging.WARNING
    logger.log(level, "loaded %s (%s): %s", label, kind.value, report.summary())
    return report


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str],
                    meta: Mapping[str, Any] | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write ``{'meta', 'state_dict', 'optimizer'}`` (the authors' mmcv layout).

    ``meta`` must hold only plain Python values and tensors so the file stays loadable with
    ``weights_only=True``.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": dict(meta or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
    }
    tmp = p.with_name(p.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, p)
    return p
