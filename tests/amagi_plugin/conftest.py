"""Fixtures shared by the plugin tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An ``amagi_tiny`` checkpoint with deterministic random weights, in the authors' layout."""
    from models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "amagi_tiny_test.pth"
    torch.save({"meta": {}, "state_dict": build_model("amagi_tiny").state_dict()}, path)
    return path
