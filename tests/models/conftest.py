"""Shared setup of the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _two_threads() -> None:
    """The target machine has 2 cores; the references were computed with 2 threads."""
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def looks(tmp_path_factory) -> Path:
    """One held-out-look case of 8 s with masks every 5 frames (``amagi synth`` output with
    bleeding and frames where none is active), for the scripts that read a model at the
    bleeding."""
    from amagi_plugin.synth import OutputOptions, generate_dataset

    root = tmp_path_factory.mktemp("masked") / "looks"
    generate_dataset(root, n_cases=1, seed=5, width=160, height=128, fps=10.0,
                     duration_s=8.0, ranges="heldout", options=OutputOptions(
                         formats=("dicom",), mask_every=5))
    return root
