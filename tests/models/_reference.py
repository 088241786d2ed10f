"""Access to the reference data in ``tests/models/reference/`` (copied from the shared
reference folder: manifests, outputs of the authors' code, ``synth_weights.py``)."""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@cache
def manifest(name: str) -> dict[str, Any]:
    """A reference JSON (``amagi_sf50``, ``amagi_sf152``, ``slowfast_r50_k400``)."""
    return json.loads((REFERENCE_DIR / f"{name}.json").read_text())


@cache
def synth() -> ModuleType:
    """The reference folder's ``synth_weights`` module, imported from its file."""
    spec = importlib.util.spec_from_file_location("_amagi_synth_weights",
                                                  REFERENCE_DIR / "synth_weights.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
