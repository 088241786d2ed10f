"""Shared setup of the model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _two_threads() -> None:
    """The target machine has 2 cores; the references were computed with 2 threads."""
    torch.set_num_threads(2)
