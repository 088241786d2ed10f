"""Procedural surgical-looking video with active bleeding events and hard negatives.

``scene`` (parameters and their seeded sampler) → ``textures`` (static tissue canvas) +
``events`` (bleeding dynamics) → ``render`` (frames and masks) → ``writer`` / ``dataset``
(DICOM, MP4, labels, masks, the authors' rawframe layout). Command line: ``amagi synth``.

The ``randomised`` preset varies per case, continuously, everything that must not predict the
label: palettes, camera chain (``look``: white balance, tone curve, blur, lens distortion,
field stop, compression), bleeding forms, still look-alikes of active blood, and distractors
(:data:`~amagi_plugin.synth.scene.DISTRACTOR_KINDS`: blood-soaked gauze and blood-stained
instrument jaws with the active-blood colour model that never grow or flow, irrigation fluid
that flows but is not blood, blood on the lens fixed in screen space). None of these is ever
in the active-bleeding mask. ``heldout`` keeps whole families out of training (palettes, a
field stop, the spurt form, lens blood, stronger distortion). Frame rate and size per case
(25/30/50/60 fps, scale and aspect) are an opt-in of any preset
(:class:`~amagi_plugin.synth.scene.VideoFormatRanges`, ``--vary-format``); labels, events
and masks always follow each case's own rate and size.
"""

from __future__ import annotations

from amagi_plugin.synth.dataset import generate_dataset
from amagi_plugin.synth.errors import OutputExistsError, SynthError
from amagi_plugin.synth.render import RenderedFrame, Renderer
from amagi_plugin.synth.scene import DOMAINS, SceneParams, SceneRanges, sample_scene
from amagi_plugin.synth.writer import (
    FORMATS,
    FRAME_SOURCES,
    OutputOptions,
    case_seed,
    plan_cases,
    write_case,
)

__all__ = [
    "DOMAINS",
    "FORMATS",
    "FRAME_SOURCES",
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
