"""Procedural surgical-looking video with active bleeding events and hard negatives.

``scene`` (parameters and their seeded sampler) → ``textures`` (static tissue canvas) +
``events`` (bleeding dynamics) → ``render`` (frames and masks) → ``writer`` / ``dataset``
(DICOM, MP4, labels, masks, the authors' rawframe layout). Command line: ``amagi synth``.
"""

from __future__ import annotations

from amagi_plugin.synth.dataset import generate_dataset
from amagi_plugin.synth.errors import OutputExistsError, SynthError
from amagi_plugin.synth.render import RenderedFrame, Renderer
from amagi_plugin.synth.scene import DOMAINS, SceneParams, SceneRanges, sample_scene
from amagi_plugin.synth.writer import FORMATS, OutputOptions, case_seed, plan_cases, write_case

__all__ = [
    "DOMAINS",
    "FORMATS",
    "OutputExistsError",
    "OutputOptions",
    "RenderedFrame",
    "Renderer",
    "SceneParams",
    "SceneRanges",
    "SynthError",
    "case_seed",
    "generate_dataset",
    "plan_cases",
    "sample_scene",
    "write_case",
]
