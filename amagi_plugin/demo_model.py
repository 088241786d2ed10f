"""``make demo-model``: build the bundled demo model end to end on the CPU.

Stages (each skipped when its output already exists, so an interrupted run continues; the
work directory records the configuration and a changed one is refused rather than mixed):

1. ``amagi synth``: the training set (domain ``train``) and a held-out evaluation set drawn
   from other seeds and the ``shifted`` scene ranges (palette families, event sizes, camera
   speeds, smoke and instrument counts outside the training ranges), as DICOM videos;
2. ``amagi train seg``-equivalent: the bleeding segmenter (HRNet-W8-OCR) on the mask PNGs;
3. AMAGI (``amagi_tiny``) with that segmenter frozen inside, and the plain SlowFast
   baseline (``slowfast_tiny``) with the same data, epochs, batch and schedule;
4. with ``probe_epochs``, a neighbourhood probe (:mod:`amagi_plugin.probing`) trained on
   the training set (and ``probe_extra_cases`` more) where the segmenter's map peaks
   (``amagi train probe``) and named in ``model.json`` with its weight against the clip
   network;
   with ``refiner_sets`` (other seeds of the training looks, with and without bleeding),
   the main model runs over them and a temporal refiner (:mod:`models.refiner`) is trained
   on its predictions (``amagi train refiner``) and named in ``model.json``;
5. with validation cases (``val_cases``: other seeds and patients of the training domain,
   and ``val_static_cases`` bleeding-free ones), each model's operating point (threshold and
   smoothing, :mod:`amagi_plugin.evaluation.calibrate`), chosen on them and written to
   ``model.json``;
6. ``amagi evaluate``: 3-fold patient-level tables and plots on the held-out cases, each
   model read at its operating point;
7. copies the weights (without optimizer state), ``model.json``, the training
   configuration with its seeds, and the metrics into ``models/weights/demo/``.

The result is a demo trained on synthetic data, not for clinical use.
Run: ``python -m amagi_plugin.demo_model [--recipe NAME] [--device DEV] [--work-dir DIR]
[--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amagi_plugin.analysis import OperatingPoint
from amagi_plugin.errors import AmagiError, ConfigError, ExitCode, exit_code_for
from amagi_plugin.logsetup import setup_logging
from amagi_plugin.modelspec import DEMO_DIR
from dicom_io.results import DEMO_DISCLAIMER

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent


class DemoBuildError(AmagiError):
    """A stage of the demo build failed, or its work directory holds another build."""

DEFAULT_WORK = REPO / "var" / "demo-model"


def default_work_dir(recipe: str = "shipped", quick: bool = False) -> Path:
    """Where a recipe's build keeps its intermediate files unless told otherwise: one folder
    per recipe (and for its quick run), so builds of different recipes never collide."""
    name = DEFAULT_WORK.name + ("" if recipe == "shipped" else f"-{recipe}")
    return DEFAULT_WORK.with_name(name + ("-quick" if quick else ""))
_AMAGI = (sys.executable, "-m", "amagi_plugin.cli")  # each stage runs as its own process


@dataclass(frozen=True)
class DemoConfig:
    """Every knob of the demo build (recorded in ``training.json``)."""

    # training data (amagi synth)
    train_seed: int = 101
    train_domain: str = "train"
    train_cases: int = 48
    train_duration_s: float = 30.0
    train_cases_per_patient: int = 2
    # the training sets' frames: rendered, or decoded from each case's H.264 video (what an
    # analysis reads; amagi synth --frames-from)
    train_frames_from: str = "render"
    # the blood textures the training-look sets (training, the probe's, validation and the
    # refiner's) draw each case's from (amagi synth --flow-textures); () = the preset's own
    train_flow_textures: tuple[str, ...] = ()
    size: tuple[int, int] = (160, 128)
    fps: float = 30.0
    clip_stride: int = 12
    # validation cases for the operating point (the training domain, other seeds and
    # patients); 0 = none: the authors' post-processing
    val_seed: int = 5555
    val_cases: int = 0
    val_duration_s: float = 120.0
    # bleeding-free validation cases of the training looks (false alarms bound the point)
    val_static_seed: int = 160003
    val_static_cases: int = 0
    val_static_duration_s: float = 60.0
    # the temporal refiner's training videos: (domain, seed, cases) sets of the training
    # looks, never trained on by the clip model; () = no refiner
    refiner_sets: tuple[tuple[str, int, int], ...] = ()
    refiner_duration_s: float = 60.0
    refiner_steps: int = 400
    refiner_width: int = 8
    refiner_layers: int = 8
    refiner_offset: float = 1.0
    # the neighbourhood probe at the segmenter's map peaks (amagi_plugin.probing), trained on
    # the training set and the sets below; 0 epochs = no probe
    probe_epochs: int = 0
    probe_candidates: int = 8
    probe_step_s: float = 0.2  # seconds between the probe's frames (amagi train probe --step-s)
    probe_frames: int = 8  # frames it reads around each instant (amagi train probe --frames)
    probe_pool: str = "avg"  # how it pools its feature map (amagi train probe --pool)
    # each frame's neighbourhood taken where the view's motion carried the place (amagi
    # train probe --stabilise)
    probe_stabilise: bool = False
    # the probe read so all the same, however it was trained: its model-folder copy records
    # it (session 52: the 9.3 probe, trained unstabilised, read so found more held-out events)
    probe_read_stabilise: bool = False
    probe_look_jitter: float = 1.0
    # one frame of each positive slid rigidly across the frames, as a negative of this weight
    # (amagi train probe --sliding-negatives; 0 = none)
    probe_sliding_negatives: float = 0.0
    # one frame of each positive held under a zooming view and drifting light, as a negative
    # of this weight (amagi train probe --view-negatives; 0 = none)
    probe_view_negatives: float = 0.0
    # one frame of each positive cut in two, its halves turning like an instrument's jaws, as
    # a negative of this weight (amagi train probe --hinged-negatives; 0 = none)
    probe_hinged_negatives: float = 0.0
    # per masked frame, this many negatives on blood that is not bleeding (still pools,
    # stained jaws, lens blood), from the renderer's look-alike masks, whether or not the
    # segmenter peaks there (amagi train probe --lookalike-negatives; 0 = none)
    probe_lookalike_neg: int = 0
    # the frames these seconds after each bleeding's end read too, every map peak there a
    # negative: the blood it left (amagi train probe --after-end-negatives; () = none)
    probe_after_end_s: tuple[float, ...] = ()
    probe_weight: float = 0.75  # against the clip network's probability (1: the probe alone)
    probe_smooth_s: float = 1.0
    # how long the probe looks again where it found bleeding (amagi_plugin.probing); 0 = never
    probe_memory_s: float = 0.0
    # the probe's scores over probe_smooth_s read by their mean (None) or this quantile
    probe_smooth_q: float | None = None
    # probes trained alike but for their seeds (train_seed_model, +1, ...), read as one in
    # analysis: the mean of their probabilities (models.patchnet.ProbeEnsemble)
    probe_seeds: int = 1
    # more rawframes cases for the probe alone (its data are cheap, its network small):
    # training-domain cases and bleeding-free ones full of still blood (other seeds)
    probe_seed: int = 180001
    probe_extra_cases: int = 0
    probe_static_seed: int = 180002
    probe_static_cases: int = 0
    # the probe reads its neighbourhoods on frames this many times the model's scale (amagi
    # train probe --scale); above 1 every set is drawn at size x probe_scale, which the
    # segmenter and clip networks read scaled down to their own scale, as they read video
    probe_scale: int = 1
    # held-out evaluation data (other seeds and scene ranges)
    eval_seed: int = 9001
    eval_cases: int = 9
    eval_duration_s: float = 30.0
    eval_domain: str = "shifted"
    # bleeding-free held-out cases full of still blood (false alarms per hour); 0 = none
    static_seed: int = 9101
    static_cases: int = 0
    static_duration_s: float = 180.0
    # the first held-out set (v1-v3), evaluated besides another main set; 0 = none
    shifted_seed: int = 9001
    shifted_cases: int = 0
    shifted_duration_s: float = 30.0
    folds: int = 3
    fold_seed: int = 0
    # models and optimisation
    arch: str = "amagi_tiny"
    baseline_arch: str = "slowfast_tiny"
    seg_epochs: int = 30
    seg_crop: int = 64
    seg_lr: float = 0.05
    seg_pos_fraction: float = 0.75
    # share of seg crops centred on the net's own false peaks, mined every N epochs (0: off)
    seg_peak_negatives: float = 0.0
    seg_mine_every: int = 1
    clip_epochs: int = 10
    batch_size: int = 8
    clip_lr: float = 0.002  # at the authors' 0.01 the tiny nets stay on a plateau for most epochs
    warmup_epochs: float = 1.0
    still_negatives: float = 0.0  # fraction of bleeding clips replaced by their still centre
    clip_look_jitter: float = 0.0  # strength of the per-clip look change in clip training
    # bleeding clips whose labelled frame shows fewer pixels of bleeding are left out
    clip_min_visible_px: int = 0
    train_seed_model: int = 7
    threads: int = 2
    workers: int = 0  # data-loading processes per training run
    #: the networks' training arithmetic (``amagi train seg|clip|probe --precision``: fp32,
    #: or bf16 autocast where the device computes it natively)
    train_precision: str = "fp32"
    prediction_hz: float = 10.0
    version: str = "3.0"

    def __post_init__(self) -> None:
        from amagi_plugin.synth.writer import FRAME_SOURCES

        if self.train_frames_from not in FRAME_SOURCES:
            raise ConfigError(f"train_frames_from must be one of {', '.join(FRAME_SOURCES)}, "
                              f"got {self.train_frames_from!r}")
        from amagi_plugin.synth.scene import FLOW_TEXTURES

        if unknown := [t for t in self.train_flow_textures if t not in FLOW_TEXTURES]:
            raise ConfigError(f"train_flow_textures must be among {', '.join(FLOW_TEXTURES)}, "
                              f"got {', '.join(unknown)}")
        from models.training.loops import PRECISIONS

        if self.train_precision not in PRECISIONS:
            raise ConfigError(f"train_precision must be one of {', '.join(PRECISIONS)}, got "
                              f"{self.train_precision!r}")
        if self.probe_seeds < 1:
            raise ConfigError(f"probe_seeds must be at least 1, got {self.probe_seeds}")
        if not (isinstance(self.probe_scale, int) and self.probe_scale >= 1):
            raise ConfigError(f"probe_scale must be a whole number >= 1, got {self.probe_scale!r}")
        if self.probe_epochs and self.refiner_sets:
            # the refiner's videos are read by the clip network alone: it would learn
            # probabilities that the probe's fusion changes
            raise ConfigError("a demo recipe takes a probe or a refiner, not both")

    @property
    def render_size(self) -> tuple[int, int]:
        """The frame size every set is drawn at: ``size``, times ``probe_scale``."""
        return self.size[0] * self.probe_scale, self.size[1] * self.probe_scale

    def to_json(self) -> dict[str, Any]:
        """The configuration as recorded in ``training.json`` (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def recipe(cls, name: str, precision: str | None = None) -> DemoConfig:
        """A named recipe of :data:`RECIPES`; ``precision``: its networks' training
        arithmetic instead of the recipe's (``train_precision``)."""
        if name not in RECIPES:
            raise ConfigError(f"unknown demo recipe {name!r}; choose one of {', '.join(RECIPES)}")
        extra = {} if precision is None else {"train_precision": precision}
        return cls(**{**RECIPES[name], **extra})

    def quick(self) -> DemoConfig:
        """This recipe at minute scale: every stage runs (for trying it, not for use)."""
        small = {"train_cases": 4, "train_duration_s": 12.0, "eval_cases": 2,
                 "eval_duration_s": 8.0, "seg_epochs": 1, "clip_epochs": 1, "clip_stride": 45}
        if self.seg_peak_negatives:  # mining starts before the second epoch
            small.update(seg_epochs=2)
        if self.static_cases:
            small.update(static_cases=1, static_duration_s=8.0)
        if self.shifted_cases:
            small.update(shifted_cases=1, shifted_duration_s=8.0)
        if self.val_cases:
            small.update(val_cases=2, val_duration_s=12.0)
        if self.val_static_cases:
            small.update(val_static_cases=1, val_static_duration_s=8.0)
        if self.probe_epochs:
            small.update(probe_epochs=1, probe_extra_cases=min(self.probe_extra_cases, 1),
                         probe_static_cases=min(self.probe_static_cases, 1),
                         probe_seeds=min(self.probe_seeds, 2))
        if self.refiner_sets:  # the first set of each domain: 2 videos, 1 bleeding-free
            first: dict[str, int] = {}
            for domain, seed, _ in self.refiner_sets:
                first.setdefault(domain, seed)
            small.update(refiner_sets=tuple((d, seed, 1 if d.endswith("static") else 2)
                                            for d, seed in first.items()),
                         refiner_duration_s=8.0, refiner_steps=5)
        return dataclasses.replace(self, **small)


_RANDOMISED: dict[str, Any] = {
    "train_domain": "randomised", "eval_duration_s": 180.0, "eval_domain": "heldout",
    "static_cases": 3, "shifted_cases": 9, "still_negatives": 0.35, "val_cases": 4,
    "version": "4.0"}

#: Named demo recipes (overrides of :class:`DemoConfig`'s defaults, which are ``v3``'s: the
#: model bundled until session 29, trained on the first training looks and evaluated on the
#: first held-out set). ``shipped`` is the bundled model's recipe, ``evidence-probe-gpu``
#: (below).
#: ``randomised`` trains on domain-randomised looks with still negatives
#: and evaluates on held-out looks, bleeding-free video and the first held-out set; built on
#: 2 CPU cores it stayed at chance on held-out looks (models/weights/demo/heldout-looks/).
#: ``temporal`` is ``randomised`` with temporal guidance (``amagi_tiny_tg``: the segmenter
#: sees the 5 clip frames around the centre, so its map marks flowing blood, not all blood).
#: ``evidence`` is ``temporal`` whose head also reads the map's peak and area
#: (``amagi_tiny_tge``), its clip networks trained with look jitter (every clip's white
#: balance, exposure, gamma, saturation, blur and noise changed, so that no look predicts
#: the label; the segmenter is trained as in ``temporal``).
#: ``randomised-gpu`` is the evidence-refined recipe (below) with the budget of one lent GPU
#: machine (16 cores, two calls of a session: ``_GPU_BUDGET``): twice the cases, 1.6 times
#: the clip epochs (the clip stage is bound by data loading, 8 processes per network), batch
#: 32 at a proportionally higher learning rate; the refiner and its videos as in
#: evidence-refined.
_TEMPORAL: dict[str, Any] = {**_RANDOMISED, "arch": "amagi_tiny_tg", "version": "5.0"}
_EVIDENCE: dict[str, Any] = {**_TEMPORAL, "arch": "amagi_tiny_tge", "clip_look_jitter": 1.0,
                             "version": "6.0"}
#: ``evidence-peaks`` is ``evidence`` whose segmenter centres 30 % of its crops on its own
#: false peaks (``amagi train seg --peak-negatives 0.3 --mine-every 2``), and whose clip
#: networks leave out bleeding clips showing fewer than 10 pixels of bleeding, read at the
#: authors' operating point: no validation set chooses one, because on the development sets
#: the point chosen on training-look validation lost events and raised more still-blood
#: alarms on held-out looks than the authors' (sessions 19-20 in
#: models/weights/demo/heldout-looks/README.md).
_PEAKS: dict[str, Any] = {**_EVIDENCE, "seg_peak_negatives": 0.3, "seg_mine_every": 2,
                          "clip_min_visible_px": 10, "val_cases": 0, "version": "8.0"}
#: ``evidence-refined`` is ``evidence`` with a temporal refiner trained on the main model's
#: predictions of 70 training-look videos (about one in ten without bleeding) and 22
#: bleeding-free ones (other seeds), and its operating point bounded by bleeding-free
#: validation video (at most 1 false alarm an hour there).
_REFINED: dict[str, Any] = {
    **_EVIDENCE, "version": "7.0", "val_static_cases": 4,
    "refiner_sets": (("randomised", 160001, 30), ("randomised", 160004, 40),
                     ("randomised-static", 160002, 10), ("randomised-static", 160005, 12))}
#: ``evidence-probe`` is ``evidence-peaks`` with the neighbourhood probe at the segmenter's
#: 8 map peaks, trained on the training set and 96 more cases of its domain, weighed 0.75
#: against the clip network, and its operating point chosen on training-look validation with
#: bleeding-free cases (session 26 in models/weights/demo/heldout-looks/README.md: on the
#: development sets a probe trained on 144 cases ranked held-out-look bleeding at AUROC 0.72,
#: one on 48 at 0.68, the clip network at 0.65). One frame of each positive slid rigidly is a
#: negative (red that moves without growing, as the stained instrument tips that fool the
#: probe on training-look still blood): at the point ``amagi calibrate`` chooses on
#: validation it raised event F1@0.5 on held-out looks in 8 of 9 probe-weight pairs measured
#: (144 cases at weight 0.75: 0.14 to 0.33), with no false alarm on held-out still blood; with
#: the probe's frames 0.3 s apart (a 2.1 s span) as well, three seeds of 48 cases found 7-12
#: of 24 events there (F1@0.5 0.39-0.46; at most 1 alarm; the plain probe 3-7) (session 27).
#: Version 9.2 (session 32) is 9.1 whose calibration also tries hold thresholds
#: (:mod:`amagi_plugin.evaluation.calibrate`); the bundled 9.2 is 9.1's networks at that point.
_PROBE: dict[str, Any] = {**_PEAKS, "probe_epochs": 8, "probe_extra_cases": 96,
                          "probe_sliding_negatives": 1.0, "probe_step_s": 0.3, "val_cases": 4,
                          "val_static_cases": 3, "version": "9.2"}
#: The budget of one lent GPU machine (see ``randomised-gpu`` above), shared by the GPU recipes.
#: ``evidence-probe-gpu`` is ``evidence-probe`` (9.2, bundled until session 42) at that
#: budget (session 29). Run once on the lent H200 (session 40): synthesis 138 s, segmenter
#: 212 s, clip networks 34 s an epoch (their loading, since made faster): its training needs
#: two calls; ``--stop-after trained`` leaves calibration and evaluation to the CPU
#: (scripts/device/README.md, "First GPU run"). Trained there in session 41 at the budget
#: below (synthesis 121 s, segmenter 89 s, clip networks 21.5 s an epoch) but for the probe,
#: which the session's time did not reach: ``--stop-after clip`` leaves it to the CPU too
#: ("Second GPU run"); that build, calibrated and evaluated here, is the bundled 9.3
#: (session 42).
#: ``evidence-peaks-gpu`` is ``evidence-peaks`` (the best held-out-look candidate of the CPU
#: builds, sessions 19-24) at that budget, without the refiner stage.
#: Cut in session 40 from the first run's measurements to fit a lent session's ~14 minutes
#: in two calls (was: false peaks mined every 2 segmenter epochs, 20 clip epochs, 7 loaders
#: each): about 27 s wheels, 138 s synthesis, ~150 s segmenter, 16 x ~22 s clip networks, the
#: probe (unmeasured) and ~40 s for the second call's start. The segmenter keeps its 20
#: epochs: the one that run trained ranks held-out-look bleeding better than 9.2's.
_GPU_BUDGET: dict[str, Any] = {"train_cases": 96, "seg_epochs": 20, "seg_mine_every": 4,
                               "clip_epochs": 16, "batch_size": 32, "clip_lr": 0.008,
                               "threads": 2, "workers": 8}
#: ``evidence-probe`` at a GPU's budget: the bundled 9.3 (session 42; its networks trained on
#: the lent H200 in session 41, its probe on the CPU).
_PROBE_GPU: dict[str, Any] = {**_PROBE, **_GPU_BUDGET, "version": "9.3"}
#: ``evidence-probe-gpu`` with the probe reading frames at twice the model's scale (every
#: set drawn at 320 x 256). Measured on 2 CPU cores with 64 probe cases (session 46,
#: models/weights/demo/heldout-looks/README.md): against a probe of the same data at the
#: model's scale, higher at sources of 11-100 map pixels, not at the smallest. At 9.3's
#: probe budget (192 cases, session 47) even with the bundled probe on held-out looks and
#: worse on another renderer (frame AUROC 0.66 against 0.77, still blood up to 0.83): kept
#: for measuring on real video, not recommended for the demo.
_PROBE_GPU_X2: dict[str, Any] = {**_PROBE_GPU, "probe_scale": 2, "version": "9.5"}
#: ``evidence-probe-gpu`` whose training-look sets draw each case's blood texture from the
#: presets' sinusoidal waves and an irregular texture carried with the flow (``amagi synth
#: --flow-textures waves,advected``). Session 49 (models/weights/demo/heldout-looks/README.md)
#: found the bundled probe blind to another renderer's welling blood, whose texture has no
#: period, while it finds the places; every network of this recipe learns from both
#: textures. For the next GPU build.
_PROBE_GPU_FLOW: dict[str, Any] = {**_PROBE_GPU, "train_flow_textures": ("waves", "advected"),
                                   "version": "9.6"}
#: ``evidence-probe-gpu`` whose probe takes each frame's neighbourhood where the view's
#: motion carried the place (``amagi train probe --stabilise``). Session 52
#: (models/weights/demo/heldout-looks/README.md): the bundled 9.3 probe read that way, not
#: retrained, found more held-out events on ``amagi synth``'s looks, still and swaying, and
#: on another renderer, with no more alarms on still blood. For the next build.
_PROBE_GPU_STAB: dict[str, Any] = {**_PROBE_GPU, "probe_stabilise": True, "version": "9.8"}
#: ``evidence-probe-gpu`` whose probe, trained as there, is read stabilised (its model-folder
#: copy says so): the 9.3 probe read that way (session 52). Built in session 53 from the
#: bundled 9.3's networks, not trained again (``--networks-from models/weights/demo``;
#: calibrated and evaluated on 2 CPU cores in 30 minutes): more held-out events than 9.3 on
#: its build's sets, but its calibration, kept from any alarm on the validation still blood
#: (1 at 9.3's point), chose threshold 0.85, and on issue #14's gate cases it found 7 of 24
#: events (9.3: 14; the gate asks 8): not shipped (models/weights/demo/heldout-looks/).
_PROBE_GPU_READ_STAB: dict[str, Any] = {**_PROBE_GPU, "probe_read_stabilise": True,
                                        "version": "9.7"}
RECIPES: dict[str, dict[str, Any]] = {
    "shipped": _PROBE_GPU,
    "v3": {},
    "randomised": _RANDOMISED,
    "temporal": _TEMPORAL,
    "evidence": _EVIDENCE,
    "evidence-peaks": _PEAKS,
    "evidence-refined": _REFINED,
    "evidence-probe": _PROBE,
    "randomised-gpu": {**_REFINED, **_GPU_BUDGET},
    "evidence-peaks-gpu": {**_PEAKS, **_GPU_BUDGET},
    "evidence-probe-gpu": _PROBE_GPU,
    "evidence-probe-gpu-decoded": {**_PROBE_GPU, "train_frames_from": "video", "version": "9.4"},
    "evidence-probe-gpu-x2": _PROBE_GPU_X2,
    "evidence-probe-gpu-flow": _PROBE_GPU_FLOW,
    "evidence-probe-gpu-stab": _PROBE_GPU_STAB,
    "evidence-probe-gpu-read-stab": _PROBE_GPU_READ_STAB,
}

#: The recipes sized for a GPU (the whole of :data:`_GPU_BUDGET`): on 2 CPU cores they take
#: many hours, so a CPU build of one is warned about.
GPU_RECIPES = frozenset(name for name, r in RECIPES.items()
                        if all(r.get(k) == v for k, v in _GPU_BUDGET.items()))

#: The recipes in a sentence, for ``--recipe``'s help (``amagi train demo`` and this module).
RECIPE_HELP = ("shipped: the bundled model's recipe (evidence-probe-gpu, 9.3: meant for "
               "a GPU; on 2 CPU cores evidence-probe, 9.2, is the smaller build); v3: an "
               "early model; randomised: domain-randomised training, "
               "held-out looks; temporal: randomised with temporal guidance (amagi_tiny_tg); "
               "evidence: temporal, the map's peak and area read by the head, look jitter "
               "(amagi_tiny_tge); evidence-peaks: evidence, the segmenter trained on its own "
               "false peaks; evidence-probe: evidence-peaks with the neighbourhood probe at the "
               "map's peaks; evidence-refined: evidence with a temporal refiner and "
               "bleeding-free validation; randomised-gpu: evidence-refined with a GPU's budget; "
               "evidence-peaks-gpu: evidence-peaks with a GPU's budget; evidence-probe-gpu: "
               "evidence-probe with a GPU's budget; evidence-probe-gpu-decoded: that, "
               "trained on frames decoded from each case's H.264 video; evidence-probe-gpu-x2: "
               "evidence-probe-gpu with the probe at twice the model's scale (measured no "
               "better); evidence-probe-gpu-flow: evidence-probe-gpu whose training looks draw "
               "two blood textures (waves, advected); evidence-probe-gpu-stab: "
               "evidence-probe-gpu with the probe stabilised against the view's motion; "
               "evidence-probe-gpu-read-stab: evidence-probe-gpu's probe read so (with "
               "--networks-from models/weights/demo: 9.3's networks, not trained again; "
               "measured short of issue #14's gate)")


def _cli(argv: list[str]) -> None:
    """``amagi ARGV`` in a fresh process (no CUDA or thread state carried between stages)."""
    code = subprocess.run([*_AMAGI, *argv]).returncode
    if code != 0:
        raise DemoBuildError(f"amagi {' '.join(argv[:2])} failed with exit code {code}")


def _synth(root: Path, cases: int, seed: int, duration: float, cfg: DemoConfig, domain: str,
           formats: str, per_patient: int, jobs: int, frames_from: str = "render") -> bool:
    """Generate a data set unless it is already there; True if it was generated now. A set
    of the training looks (``cfg.train_domain`` or ``randomised-static``) draws its blood
    textures from ``cfg.train_flow_textures`` when given; a held-out set never does."""
    if (root / "cases.json").is_file():
        log.info("reusing %s", root)
        return False
    textures = (["--flow-textures", ",".join(cfg.train_flow_textures)]
                if cfg.train_flow_textures and domain in (cfg.train_domain, "randomised-static")
                else [])
    _cli(["synth", "-od", str(root), "--cases", str(cases), "--seed", str(seed),
          "--duration-s", str(duration), "--size", "x".join(map(str, cfg.render_size)),
          "--fps", str(cfg.fps), "--formats", formats, "--clip-stride", str(cfg.clip_stride),
          "--domain", domain, "--cases-per-patient", str(per_patient), "--overwrite",
          "--jobs", str(jobs), "--no-progress", "--frames-from", frames_from, *textures])
    return True


class StageTimes:
    """Wall time of each build stage, kept in ``<work>/timings.json``.

    A resumed build skips the stages it finds done; it reports how long each took when it
    ran, not the moment it took to skip it. A stage skipped but never timed (a work
    directory from before this record existed) is reported as ``None``. A training stage
    interrupted and continued counts the run that finished it (the epochs it trained).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float | None] = (json.loads(path.read_text())
                                                 if path.is_file() else {})

    def record(self, stage: str, started: float, ran: bool) -> None:
        """Store the time since ``started`` (``time.perf_counter``) if the stage ran now."""
        if ran or stage not in self.seconds:
            self.seconds[stage] = time.perf_counter() - started if ran else None
            self.path.write_text(json.dumps(self.seconds, indent=1) + "\n")

    def report(self) -> dict[str, float | None]:
        """Rounded stage times plus their total (``None`` if a stage was never timed)."""
        out = {k: None if v is None else round(v, 1) for k, v in self.seconds.items()}
        known = list(out.values())
        out["total"] = None if None in known else round(sum(known), 1)
        return out


def _check_work_dir(work: Path, cfg: DemoConfig, networks_from: Path | None = None) -> None:
    """Resume only a build of the same configuration (and the same networks given it):
    stages reuse whatever they find."""
    record = work / "config.json"
    wanted = cfg.to_json()
    if networks_from is not None:
        wanted["networks_from"] = str(networks_from)
    if record.is_file():
        found = json.loads(record.read_text())
        if found != wanted:
            changed = sorted(k for k in wanted.keys() | found.keys()
                             if wanted.get(k) != found.get(k))
            raise DemoBuildError(f"{work} holds a build with another configuration "
                             f"({', '.join(changed)} differ); remove it or pass --work-dir")
    elif any(work.iterdir()):
        raise DemoBuildError(f"{work} is not empty and records no configuration; remove it or "
                         "pass --work-dir")
    record.write_text(json.dumps(wanted, indent=1) + "\n")


#: The :class:`DemoConfig` fields that change how the trained networks are read and measured,
#: not their weights: a build given another folder's networks (``build_demo(networks_from=)``)
#: may differ from that folder's configuration in these alone.
READ_FIELDS = frozenset({
    "version", "probe_read_stabilise", "probe_weight", "probe_smooth_s", "probe_memory_s",
    "probe_smooth_q", "val_seed", "val_cases", "val_duration_s", "val_static_seed",
    "val_static_cases", "val_static_duration_s", "eval_seed", "eval_cases", "eval_duration_s",
    "eval_domain", "static_seed", "static_cases", "static_duration_s", "shifted_seed",
    "shifted_cases", "shifted_duration_s", "folds", "fold_seed"})
#: What a build given another folder's networks keeps of it, in ``<work>/`` this file.
NETWORKS_RECORD = "networks.json"
#: What ``training.json`` records of the networks' own build (``networks_from``).
ADOPTED_KEYS = ("from", "version", "trained", "device", "seconds")


def _clip_files(cfg: DemoConfig) -> tuple[str, str]:
    """The main clip network's and the baseline's file names in the model folder."""
    return f"{cfg.arch}_demo.pth", f"{cfg.baseline_arch}_demo.pth"


def _weights_files(cfg: DemoConfig) -> list[str]:
    """Every network file a build of ``cfg`` writes into its model folder."""
    return [*_clip_files(cfg), *(probe_files(cfg) if cfg.probe_epochs else []),
            *([REFINER_FILE] if cfg.refiner_sets else [])]


def _adoptable(source: Path, cfg: DemoConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``model.json`` and ``training.json`` of the model folder ``source``, if a build of
    ``cfg`` may take its networks (:data:`READ_FIELDS`); a :class:`DemoBuildError` naming
    what differs otherwise."""
    docs = []
    for name in ("model.json", "training.json"):
        try:
            doc = json.loads((source / name).read_text())
        except (OSError, ValueError) as e:
            raise DemoBuildError(f"{source} is not a demo model folder: cannot read {name} "
                                 f"({e})") from None
        if not isinstance(doc, dict):
            raise DemoBuildError(f"{source}/{name} is not a JSON object")
        docs.append(doc)
    manifest, training = docs
    theirs, ours = training.get("config"), cfg.to_json()
    if not isinstance(theirs, dict):
        raise DemoBuildError(f"{source}/training.json records no build configuration")
    if unknown := sorted(set(theirs) - set(ours)):
        raise DemoBuildError(f"{source} was built with settings this version does not know: "
                             f"{', '.join(unknown)}")
    # a field the folder's build did not know yet had the default, which changes nothing
    theirs = {**DemoConfig().to_json(), **theirs}
    if differ := [k for k in ours if k not in READ_FIELDS and theirs[k] != ours[k]]:
        raise DemoBuildError(
            f"{source} holds networks trained otherwise than this recipe says: "
            + "; ".join(f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in differ)
            + " (a build may take another's networks only where the two differ in how they "
            "are read or measured)")
    if missing := [f for f in _weights_files(cfg) if not (source / f).is_file()]:
        raise DemoBuildError(f"{source} lacks {', '.join(missing)}")
    return manifest, training


def _adopt(source: Path, work: Path, stage: Path, cfg: DemoConfig,
           docs: tuple[dict[str, Any], dict[str, Any]] | None) -> tuple[float, dict[str, Any]]:
    """The networks of the model folder ``source`` copied into ``<work>/networks/`` (once:
    a resumed build reads its copies, whatever the folder holds since) and from there into
    ``stage``, the probe as :func:`_stage_probe` says. ``docs``: the folder's documents as
    :func:`_adoptable` read them (needed until the copy is made). Returns the time of the
    copy and its record (:data:`NETWORKS_RECORD`)."""
    record = work / NETWORKS_RECORD
    copies = work / "networks"
    if not record.is_file():
        manifest, training = docs or _adoptable(source, cfg)
        copies.mkdir(exist_ok=True)
        for f in _weights_files(cfg):
            shutil.copyfile(source / f, copies / f)
        shown = source.relative_to(REPO) if source.is_relative_to(REPO) else source
        doc = {"from": str(shown), "version": manifest.get("version"),
               "trained": manifest.get("trained"), "device": training.get("device"),
               "seconds": training.get("seconds"), "history": training.get("history", {}),
               "files": _weights_files(cfg)}
        record.write_text(json.dumps(doc, indent=1) + "\n")  # written last: the copy is done
        log.info("took the trained networks of %s (version %s): nothing is trained",
                 source, doc["version"])
    adopted = json.loads(record.read_text())
    probes = set(probe_files(cfg)) if cfg.probe_epochs else set()
    for f in adopted["files"]:
        if f in probes:
            _stage_probe(copies / f, stage / f, cfg)
        else:
            shutil.copyfile(copies / f, stage / f)
    return record.stat().st_mtime, adopted


def _stage_probe(record: Path, target: Path, cfg: DemoConfig) -> None:
    """A probe's model-folder copy: the trained file, or, when ``cfg.probe_read_stabilise``
    and the probe was trained without, its weights re-saved stabilised (what it was trained
    on kept in its meta as ``trained_stabilised``)."""
    if cfg.probe_read_stabilise:
        from models.checkpoint import read_checkpoint
        from models.patchnet import load_patchnet, save_patchnet

        net = load_patchnet(record)
        if not net.cfg.stabilise:
            meta = {k: v for k, v in read_checkpoint(record)["meta"].items()
                    if k not in ("arch", "patchnet")}
            net.cfg = dataclasses.replace(net.cfg, stabilise=True)
            save_patchnet(net, target, meta={**meta, "trained_stabilised": False})
            return
    shutil.copyfile(record, target)


#: Where ``build_demo(stop_after=)`` may stop: after every network, or after the segmenter and
#: the clip networks (before the probe's training cases are made).
STOP_AFTER = ("trained", "clip")


def _train_networks(work: Path, stage: Path, cfg: DemoConfig, device: str,
                    stop_after: str | None, timings: StageTimes, jobs: int) -> float | None:
    """The build's training stages (each skipped when done): its training data, the
    segmenter, the clip networks, the probe or the refiner, their weights exported into
    ``stage``. Returns the time of the newest network, or ``None`` where ``stop_after`` ended
    the build."""
    gpu = device != "cpu"
    train_root = work / "data" / "train"
    seg_dir, amagi_dir, sf_dir = work / "seg", work / "amagi", work / "slowfast"
    probe_sets = [train_root]
    extra_sets = [(work / "data" / name, seed, cases, domain) for name, seed, cases, domain in (
        ("probe-extra", cfg.probe_seed, cfg.probe_extra_cases, cfg.train_domain),
        ("probe-static", cfg.probe_static_seed, cfg.probe_static_cases, "randomised-static"))
        if cfg.probe_epochs and cases]
    probe_sets += [root for root, *_ in extra_sets]
    # the training data, unless every network that reads them is trained already (or, when
    # the build stops after the clip networks, every one of those)
    clip_trained = all((d / "done").is_file() for d in (seg_dir, amagi_dir, sf_dir))
    trained = clip_trained and not (cfg.probe_epochs and _probe_pending(work, seg_dir, cfg))
    before_probe = stop_after == "clip"
    # nothing this build still trains reads the training data
    needless = trained or (before_probe and clip_trained)
    t0 = time.perf_counter()
    ran = False
    if needless:
        log.info("%s trained: their training data are not made again",
                 "every network is" if trained else "the segmenter and the clip networks are")
    else:
        ran |= _synth(train_root, cfg.train_cases, cfg.train_seed, cfg.train_duration_s, cfg,
                      cfg.train_domain, "rawframes", cfg.train_cases_per_patient, jobs,
                      cfg.train_frames_from)
    for root, seed, cases, domain in [] if trained or before_probe else extra_sets:
        ran |= _synth(root, cases, seed, cfg.train_duration_s, cfg, domain, "rawframes",
                      cfg.train_cases_per_patient, jobs, cfg.train_frames_from)
    for i, (domain, seed, cases) in enumerate([] if before_probe else cfg.refiner_sets):
        ran |= _synth(work / "data" / f"refiner-{i}", cases, seed, cfg.refiner_duration_s,
                      cfg, domain, "dicom", 1, jobs)
    timings.record("synth", t0, ran)

    common = ["--threads", str(cfg.threads), "--device", device,
              "--batch-size", str(cfg.batch_size),
              "--warmup-epochs", str(cfg.warmup_epochs), "--seed", str(cfg.train_seed_model),
              "--workers", str(cfg.workers), "--precision", cfg.train_precision,
              "--resume", "--no-progress"]
    t0 = time.perf_counter()
    ran = not (seg_dir / "done").is_file()
    if ran:
        _cli(["train", "seg", "--data", str(train_root), "-od", str(seg_dir),
              "--arch", cfg.arch, "--epochs", str(cfg.seg_epochs), "--crop", str(cfg.seg_crop),
              "--pos-fraction", str(cfg.seg_pos_fraction),
              "--lr", str(cfg.seg_lr), *common,
              *(["--peak-negatives", str(cfg.seg_peak_negatives),
                 "--mine-every", str(cfg.seg_mine_every)] if cfg.seg_peak_negatives else [])])
        (seg_dir / "done").write_text("ok\n")
    timings.record("train_seg", t0, ran)
    clip_args = ["--annotations", str(train_root / "annotations.txt"),
                 "--epochs", str(cfg.clip_epochs), "--lr", str(cfg.clip_lr),
                 "--class-weights", "balanced", "--still-negatives", str(cfg.still_negatives),
                 "--look-jitter", str(cfg.clip_look_jitter), *common]
    if cfg.clip_min_visible_px:
        clip_args += ["--min-visible-px", str(cfg.clip_min_visible_px)]
    nets = [("amagi", cfg.arch, amagi_dir, ["--seg-checkpoint", str(seg_dir / "latest.pth")]),
            ("slowfast", cfg.baseline_arch, sf_dir, [])]
    # AMAGI and the baseline train side by side, the threads split between them (one each
    # on 2 cores; all of them for the one left when the other is done): same data, epochs,
    # batch, schedule and seed, so the same budget.
    t0 = time.perf_counter()
    procs = []
    todo = [net for net in nets if not (net[2] / "done").is_file()]
    for name, arch, out, extra in todo:
        out.mkdir(parents=True, exist_ok=True)
        argv = ["train", "clip", "--arch", arch, "-od", str(out), *clip_args, *extra,
                "--threads", str(max(1, cfg.threads // len(todo)))]
        log_file = (out / "stdout.log").open("a")
        procs.append((name, out, log_file, subprocess.Popen(
            [*_AMAGI, *argv], stdout=log_file,
            stderr=subprocess.STDOUT, cwd=REPO)))
    for name, out, log_file, proc in procs:
        code = proc.wait()
        log_file.close()
        if code != 0:
            raise DemoBuildError(f"training {name} failed (exit {code}); see {out}/stdout.log")
        (out / "done").write_text("ok\n")
    timings.record("train_clip_models", t0, bool(procs))
    if before_probe:
        log.info("the segmenter and the clip networks are trained; stopping before the probe, "
                 "validation and evaluation (resume the work directory %s to finish the "
                 "build)", work)
        return None

    from models.training.loops import export_weights

    main_ckpt, base_ckpt = _clip_files(cfg)
    note = {"notice": DEMO_DISCLAIMER, "version": cfg.version}
    export_weights(amagi_dir / "latest.pth", stage / main_ckpt, meta=note)
    export_weights(sf_dir / "latest.pth", stage / base_ckpt, meta=note)
    newest = max((d / "latest.pth").stat().st_mtime for d in (amagi_dir, sf_dir))
    if cfg.probe_epochs:
        t0 = time.perf_counter()
        ran = _probe(work, seg_dir, probe_sets, stage, cfg, device)
        timings.record("probe", t0, ran)
        newest = max(newest, *((work / f).stat().st_mtime for f in probe_files(cfg)))
    if cfg.refiner_sets:
        t0 = time.perf_counter()
        ran = _refiner(work, stage / main_ckpt, cfg, device, gpu, newest)
        timings.record("refiner", t0, ran)
        newest = max(newest, (work / REFINER_FILE).stat().st_mtime)  # the stage's own copy
    if stop_after == "trained":
        log.info("every network is trained; stopping before validation and evaluation "
                 "(resume the work directory %s to finish the build)", work)
        return None
    return newest


def build_demo(work: Path, cfg: DemoConfig, dest: Path = DEMO_DIR,
               device: str = "cpu", stop_after: str | None = None,
               networks_from: Path | None = None) -> dict[str, Any]:
    """Run every stage; returns the ``training.json`` document.

    ``device`` (``cpu``, ``cuda``, ``cuda:N``) is where the networks train and evaluate. On
    the CPU everything uses ``cfg.threads`` cores; on a GPU the synthesis uses every core of
    the host. The configuration, and so the recipe, is the same on both.

    ``stop_after="trained"`` ends the build once every network is trained, before the
    validation and evaluation sets are made (a lent GPU's minutes go to training; the same
    work directory, resumed anywhere, calibrates and evaluates). ``stop_after="clip"`` ends
    it sooner, once the segmenter and the clip networks are trained: the probe's own
    training cases are not made, and the probe and the refiner are left to the resumed build
    too. Nothing is written to ``dest`` then, and the returned document holds only
    ``stopped_after`` and ``seconds``. A resumed build whose networks are all trained does
    not make their training data again.

    ``networks_from`` (a model folder this module wrote, the bundled one for instance) gives
    the build its trained networks instead: no training data are made and nothing is
    trained; their copies are read as ``cfg`` says (``probe_read_stabilise``, the probe's
    weight and smoothing), calibrated on the validation cases and evaluated, as any build.
    Its configuration must be ``cfg``'s in every field that shapes a network's weights
    (all but :data:`READ_FIELDS`); ``training.json`` records where they came from.
    """
    if networks_from is not None and stop_after is not None:
        raise ConfigError("a build given its networks (networks_from) trains nothing: it "
                          "cannot stop after training")
    if stop_after is not None and stop_after not in STOP_AFTER:
        raise ConfigError(f"stop_after must be one of {', '.join(map(repr, STOP_AFTER))} "
                          f"or None, got {stop_after!r}")
    from amagi_plugin.modelspec import emulated_bf16

    if cfg.train_precision == "bf16" and networks_from is None and (
            why := emulated_bf16(device)):
        raise ConfigError(f"train_precision bf16: {why}: train in fp32 there")
    import os

    work, dest = work.resolve(), dest.resolve()
    gpu = device != "cpu"
    jobs = (os.cpu_count() or cfg.threads) if gpu else cfg.threads
    docs = None
    if networks_from is not None:
        networks_from = networks_from.resolve()
        if not (work / NETWORKS_RECORD).is_file():  # a resumed build reads its own copies
            docs = _adoptable(networks_from, cfg)  # refused before the work dir is made
    work.mkdir(parents=True, exist_ok=True)
    _check_work_dir(work, cfg, networks_from)
    timings = StageTimes(work / "timings.json")
    eval_sets = {  # name -> (seed, cases, duration, domain); the main set first
        "heldout": (cfg.eval_seed, cfg.eval_cases, cfg.eval_duration_s, cfg.eval_domain),
        "static": (cfg.static_seed, cfg.static_cases, cfg.static_duration_s, "static"),
        "shifted": (cfg.shifted_seed, cfg.shifted_cases, cfg.shifted_duration_s, "shifted"),
    }
    eval_sets = {k: v for k, v in eval_sets.items() if k == "heldout" or v[1] > 0}

    stage = work / "export"
    stage.mkdir(exist_ok=True)
    if networks_from is None:
        newest = _train_networks(work, stage, cfg, device, stop_after, timings, jobs)
        if newest is None:
            return {"stopped_after": stop_after, "seconds": timings.report()}
        adopted, trained_on = None, _dt.date.today().isoformat()
    else:
        newest, adopted = _adopt(networks_from, work, stage, cfg, docs)
        trained_on = adopted["trained"]
    main_ckpt, base_ckpt = _clip_files(cfg)
    manifest = {
        "arch": cfg.arch, "checkpoint": main_ckpt, "version": cfg.version,
        "description": f"AMAGI demo model ({cfg.arch}) trained on synthetic data generated by "
                       "'amagi synth'; not for clinical use.",
        "build": {},
        "baseline": {"arch": cfg.baseline_arch, "checkpoint": base_ckpt, "build": {}},
        "training": "training.json", "metrics": "metrics.json",
        "trained": trained_on,
    }
    if cfg.probe_epochs:
        files = probe_files(cfg)
        manifest["probe"] = {"file": files[0] if len(files) == 1 else files,
                             "weight": cfg.probe_weight, "smooth_s": cfg.probe_smooth_s,
                             "memory_s": cfg.probe_memory_s,
                             **({} if cfg.probe_smooth_q is None
                                else {"smooth_q": cfg.probe_smooth_q})}
    if cfg.refiner_sets:
        manifest["refiner"] = REFINER_FILE

    # the validation and held-out sets, made once the networks are trained
    t0 = time.perf_counter()
    ran = False
    for name, (seed, cases, duration, domain) in eval_sets.items():
        ran |= _synth(work / "data" / name, cases, seed, duration, cfg, domain, "dicom", 1,
                      jobs)
    if cfg.val_cases:
        ran |= _synth(work / "data" / "validation", cfg.val_cases, cfg.val_seed,
                      cfg.val_duration_s, cfg, cfg.train_domain, "dicom", 1, jobs)
    if cfg.val_static_cases:
        ran |= _synth(work / "data" / "validation-static", cfg.val_static_cases,
                      cfg.val_static_seed, cfg.val_static_duration_s, cfg,
                      "randomised-static", "dicom", 1, jobs)
    timings.record("synth_eval", t0, ran)
    calibration = None
    if cfg.val_cases:
        t0 = time.perf_counter()
        (stage / "model.json").write_text(json.dumps(manifest, indent=1) + "\n")
        calibration, ran = _calibrate(work, stage, cfg, device, newest)
        timings.record("calibrate", t0, ran)
        for entry in (manifest, manifest["baseline"]):
            entry["operating_point"] = calibration["models"][entry["checkpoint"]]["chosen"]
        newest = max(newest, (work / "calibration.json").stat().st_mtime)
    (stage / "model.json").write_text(json.dumps(manifest, indent=1) + "\n")

    t0 = time.perf_counter()
    ran = False
    for name, (_, cases, _, _) in eval_sets.items():
        evaluated = work / "evaluation" / name / "metrics.json"
        if evaluated.is_file() and evaluated.stat().st_mtime >= newest:
            continue
        ran = True
        _cli(["evaluate", "--data", str(work / "data" / name), "--model-dir", str(stage),
              "-od", str(evaluated.parent), "--folds", str(min(cfg.folds, cases)),
              "--fold-seed", str(cfg.fold_seed), "--prediction-hz", str(cfg.prediction_hz),
              "--threads", str(cfg.threads), "--jobs", str(min(4, cases) if gpu else cfg.threads),
              "--device", device, "--no-progress"])
    timings.record("evaluate", t0, ran)

    if adopted is None:
        from models.checkpoint import read_checkpoint

        histories = {name: read_checkpoint(work / name / "latest.pth")["meta"].get("history", [])
                     for name in ("seg", "amagi", "slowfast")}
    else:
        histories = adopted["history"]
    training = {
        "notice": DEMO_DISCLAIMER,
        "command": "make demo-model  (python -m amagi_plugin.demo_model)",
        "config": cfg.to_json(),
        "train_data": {"generator": "amagi synth", "seed": cfg.train_seed,
                       "domain": cfg.train_domain, "cases": cfg.train_cases,
                       "duration_s": cfg.train_duration_s},
        "eval_data": {"generator": "amagi synth", "seed": cfg.eval_seed,
                      "domain": cfg.eval_domain, "cases": cfg.eval_cases,
                      "duration_s": cfg.eval_duration_s, "size": list(cfg.render_size),
                      "fps": cfg.fps, "folds": cfg.folds, "fold_seed": cfg.fold_seed},
        "other_eval_data": {
            name: {"generator": "amagi synth", "seed": seed, "domain": domain, "cases": cases,
                   "duration_s": duration, "metrics": f"metrics_{name}.json"}
            for name, (seed, cases, duration, domain) in eval_sets.items() if name != "heldout"},
        "history": histories,
        **({"networks_from": {k: adopted[k] for k in ADOPTED_KEYS}} if adopted else {}),
        **({"calibration": calibration} if calibration else {}),
        "device": device,
        "seconds": timings.report(),
    }
    (stage / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    for name in eval_sets:
        suffix = "" if name == "heldout" else f"_{name}"
        for f in ("metrics.json", "metrics.md"):
            stem, ext = f.split(".")
            shutil.copyfile(work / "evaluation" / name / f, stage / f"{stem}{suffix}.{ext}")
        for png in sorted((work / "evaluation" / name).glob("*.png")):
            shutil.copyfile(png, stage / f"{png.stem}{suffix}.png")
    (stage / "README.md").write_text(readme(
        manifest, training, (stage / "metrics.md").read_text(),
        {name: (stage / f"metrics_{name}.md").read_text() for name in eval_sets
         if name != "heldout"}))
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(stage.iterdir()):
        shutil.copyfile(f, dest / f.name)
    written = {f.name for f in stage.iterdir()}
    # an earlier build's weights that this one does not name (a probe seed, a refiner): only
    # the names a build writes, never another file of the folder
    for f in sorted({*dest.glob("*_demo.pth"), *dest.glob("probe_demo_seed*.pth")}):
        if f.name not in written:
            log.info("removing %s: weights of an earlier build that this one does not name", f)
            f.unlink()
    log.info("demo model written to %s; stage times (s): %s", dest, training["seconds"])
    return training


#: The refiner's file name in the model folder.
REFINER_FILE = "refiner_demo.pth"
#: The probe's file name in the model folder (the first seed's, when there are several).
PROBE_FILE = "probe_demo.pth"


def probe_files(cfg: DemoConfig) -> list[str]:
    """The probes' file names in the model folder: :data:`PROBE_FILE` for the first seed
    (``train_seed_model``), ``probe_demo_seed<S>.pth`` for the others."""
    return [PROBE_FILE] + [f"probe_demo_seed{cfg.train_seed_model + k}.pth"
                           for k in range(1, cfg.probe_seeds)]


def _probe_stale(record: Path, seg_dir: Path) -> bool:
    """Whether a probe's stage copy is missing or older than the segmenter it reads."""
    return (not record.is_file()
            or record.stat().st_mtime < (seg_dir / "latest.pth").stat().st_mtime)


def _probe_pending(work: Path, seg_dir: Path, cfg: DemoConfig) -> bool:
    """Whether :func:`_probe` would train a probe (the segmenter is trained)."""
    return any(_probe_stale(work / name, seg_dir) for name in probe_files(cfg))


def _probe(work: Path, seg_dir: Path, data: list[Path], stage: Path, cfg: DemoConfig,
           device: str) -> bool:
    """``amagi train probe`` on the rawframes sets ``data`` (the training set first) at the
    segmenter's map peaks into ``<stage>/``:func:`probe_files`, one a seed (each redone when
    the segmenter is newer). Returns whether any ran."""
    ran = False
    for k, name in enumerate(probe_files(cfg)):
        record = work / name  # the stage's own copy: the stage folder is rewritten
        if _probe_stale(record, seg_dir):
            ran = True
            _cli(["train", "probe", "--data", *map(str, data), "--arch", cfg.arch,
                  "--seg-checkpoint", str(seg_dir / "latest.pth"), "-o", str(record),
                  "--epochs", str(cfg.probe_epochs), "--candidates", str(cfg.probe_candidates),
                  "--step-s", str(cfg.probe_step_s), "--frames", str(cfg.probe_frames),
                  "--pool", cfg.probe_pool, "--scale", str(cfg.probe_scale),
                  *(["--stabilise"] if cfg.probe_stabilise else []),
                  "--look-jitter", str(cfg.probe_look_jitter),
                  "--sliding-negatives", str(cfg.probe_sliding_negatives),
                  "--view-negatives", str(cfg.probe_view_negatives),
                  "--hinged-negatives", str(cfg.probe_hinged_negatives),
                  "--lookalike-negatives", str(cfg.probe_lookalike_neg),
                  *(["--after-end-negatives", ",".join(map(str, cfg.probe_after_end_s))]
                    if cfg.probe_after_end_s else []),
                  "--seed", str(cfg.train_seed_model + k), "--precision", cfg.train_precision,
                  "--threads", str(cfg.threads), "--device", device, "--no-progress"])
        _stage_probe(record, stage / name, cfg)
    return ran


def _refiner(work: Path, main_ckpt: Path, cfg: DemoConfig, device: str, gpu: bool,
             newest: float) -> bool:
    """The main model over the refiner's videos, then ``amagi train refiner`` on its
    predictions into ``<stage>/refiner_demo.pth`` (each step redone when what it reads is
    newer). Returns whether anything ran now."""
    ran, predictions = False, []
    for i, (_, _, cases) in enumerate(cfg.refiner_sets):
        out = work / "evaluation" / f"refiner-{i}"
        done = out / "predictions.json"
        predictions.append(str(done))
        if done.is_file() and done.stat().st_mtime >= newest:
            continue
        ran = True
        _cli(["evaluate", "--data", str(work / "data" / f"refiner-{i}"), "-od", str(out),
              "--checkpoint", f"AMAGI={cfg.arch}:{main_ckpt}", "--folds", "1",
              "--prediction-hz", str(cfg.prediction_hz), "--threads", str(cfg.threads),
              "--jobs", str(min(4, cases) if gpu else cfg.threads), "--device", device,
              "--no-progress"])
    target = main_ckpt.parent / REFINER_FILE
    record = work / REFINER_FILE  # the stage's own copy: the stage folder is rewritten
    if ran or not record.is_file() or record.stat().st_mtime < newest:
        ran = True
        _cli(["train", "refiner", "--predictions", *predictions, "--model", "AMAGI",
              "-o", str(record), "--steps", str(cfg.refiner_steps),
              "--width", str(cfg.refiner_width), "--layers", str(cfg.refiner_layers),
              "--offset", str(cfg.refiner_offset), "--seed", str(cfg.train_seed_model)])
    shutil.copyfile(record, target)
    return ran


def _calibrate(work: Path, stage: Path, cfg: DemoConfig, device: str, newest: float
               ) -> tuple[dict[str, Any], bool]:
    """``amagi calibrate`` on the validation cases: each model's operating point, cached in
    ``<work>/calibration.json`` (redone when a checkpoint is newer). Returns the record and
    whether it ran now."""
    record = work / "calibration.json"
    if record.is_file() and record.stat().st_mtime >= newest:
        return json.loads(record.read_text()), False
    out = work / "evaluation" / "validation"
    folders = [str(work / "data" / "validation")]
    if cfg.val_static_cases:
        folders.append(str(work / "data" / "validation-static"))
    _cli(["calibrate", "--data", *folders, "--model-dir", str(stage),
          "-od", str(out), "--prediction-hz", str(cfg.prediction_hz),
          "--threads", str(cfg.threads), "--jobs", str(min(cfg.threads, cfg.val_cases)),
          "--device", device, "--no-progress"])
    shutil.copyfile(out / "calibration.json", record)  # copied last: the stage is done
    return json.loads(record.read_text()), True


_HELDOUT_TEXT = {
    "shifted": "other seeds and scene ranges (palette families, event sizes, camera speeds, "
               "smoke, instrument and red-patch counts) outside the training ranges",
    "heldout": "other seeds, palette families, a field-stop family, a bleeding form, lens "
               "blood and lens distortions stronger than any seen in training, wider "
               "camera-chain ranges, at least 4 events a case",
}


def _seg_net(arch: str) -> str:
    """The segmentation net of a demo arch, in words."""
    from models import model_cfg

    frames = model_cfg(arch).seg_frames
    return f"FlowSeg ({frames} frames)" if frames > 1 else "HRNet-W8-OCR"


def _pathway_dropout(arch: str) -> float | None:
    """The head's pathway dropout if it reads the map's evidence, else None."""
    from models.registry import variant_spec

    spec = variant_spec(arch)
    return spec.pathway_dropout if spec.map_evidence else None


#: the build README's words for a probe's pooling (models.patchnet.PatchNetConfig.pool)
_POOL_WORDS = {"avg": "its mean", "max": "its largest value per channel",
               "avgmax": "its mean and its largest value per channel side by side"}


def _drawn_size(cfg: dict[str, Any]) -> str:
    """``WxH`` of a recorded configuration's sets (``probe_scale`` times ``size``), and the
    networks' scale when that differs."""
    k = cfg.get("probe_scale", 1)
    w, h = cfg["size"]
    return (f"{w}x{h}" if k == 1 else
            f"{w * k}x{h * k} (the networks read them at {w}x{h}, the probe at full size)")


def _probe_names(files: str | list[str]) -> str:
    """The README's name of a model.json probe entry's ``file`` (one name or several)."""
    if isinstance(files, str):
        return f"`{files}`"
    return (f"of {len(files)} networks trained alike but for their seeds ("
            + ", ".join(f"`{f}`" for f in files) + "; it reads the mean of their probabilities)")


def readme(manifest: dict[str, Any], training: dict[str, Any], metrics_md: str,
           others: dict[str, str] | None = None) -> str:
    """The demo folder's README: what the model is, how it was made, what it scores.

    ``metrics_md`` is the main held-out report; ``others`` maps the name of each further
    evaluation set (``static``, ``shifted``) to its report.
    """
    from models.training.patchnet import HINGE_DEG

    cfg = training["config"]
    tr, ev = training["train_data"], training["eval_data"]
    secs = training["seconds"]
    dropped = _pathway_dropout(cfg["arch"])
    lines = [
        "# Bundled demo model", "",
        f"**{DEMO_DISCLAIMER.capitalize()}.** {manifest['description']}", "",
        f"- main model: `{manifest['arch']}` → `{manifest['checkpoint']}` (used by default by "
        "`amagi process` and `amagi serve`)",
        f"- baseline with the same budget: `{manifest['baseline']['arch']}` → "
        f"`{manifest['baseline']['checkpoint']}`",
        "- built by `make demo-model` (`python -m amagi_plugin.demo_model`); configuration, "
        "seeds and loss curves in `training.json`, metrics in `metrics.json`/`metrics.md`, "
        "per-fold plots `fold*.png`",
        *([f"- networks: version {nf['version']}'s (`{nf['from']}`, built {nf['trained']}), "
           "not trained again: this build reads them as described below, chose the operating "
           "point and evaluated them; that build's stage times (s), as its `training.json` "
           "recorded them: " + ", ".join(f"{k} {'not timed' if v is None else f'{v:.0f}'}"
                                         for k, v in (nf.get("seconds") or {}).items())]
          if (nf := training.get("networks_from")) else []), "",
        "## Data", "",
        f"- training: `amagi synth --seed {tr['seed']} --domain {tr['domain']}`, "
        f"{tr['cases']} cases × {tr['duration_s']:g} s ({cfg['train_cases_per_patient']} per "
        f"synthetic patient), {_drawn_size(cfg)} at {cfg['fps']:g} fps"
        + ("; every network trained on the frames decoded from each case's H.264 video "
           "(`--frames-from video`: the encoder's I/P/B frame quality, as in analysis)"
           if cfg.get("train_frames_from", "render") == "video" else "")
        + (f"; each case's blood texture drawn from "
           f"{', '.join(cfg['train_flow_textures'])} "
           f"(`--flow-textures {','.join(cfg['train_flow_textures'])}`, as every set of the "
           "training looks)" if cfg.get("train_flow_textures") else ""),
        f"- held-out evaluation: `amagi synth --seed {ev['seed']} --domain {ev['domain']}`, "
        f"{ev['cases']} cases × {ev['duration_s']:g} s: "
        + _HELDOUT_TEXT.get(ev["domain"], "other seeds and scene ranges")
        + f"; {ev['folds']}-fold patient-level tables",
        *[f"- {name}: `amagi synth --seed {o['seed']} --domain {o['domain']}`, {o['cases']} "
          f"cases × {o['duration_s']:g} s (`{o['metrics']}`)"
          for name, o in training.get("other_eval_data", {}).items()], "",
        "## Training", "",
        f"- segmentation: {_seg_net(cfg['arch'])}, {cfg['seg_epochs']} epochs, "
        f"{cfg['seg_crop']}-pixel "
        f"crops ({cfg['seg_pos_fraction']:.0%} centred on bleeding), class weights [0.4, 1], "
        f"SGD lr {cfg['seg_lr']}"
        + (f"; {cfg['seg_peak_negatives']:.0%} of the crops centred instead on the net's own "
           "false peak in each frame (its highest bleeding probability away from any "
           f"bleeding), mined from epoch 2 on, every {cfg.get('seg_mine_every', 1)} epochs"
           if cfg.get("seg_peak_negatives") else ""),
        f"- clips: {cfg['clip_epochs']} epochs, batch {cfg['batch_size']}, SGD lr "
        f"{cfg['clip_lr']} momentum 0.9 wd 4e-5, grad clip 40, linear warm-up "
        f"{cfg['warmup_epochs']} epoch then cosine, weighted CE N/(2·N_c) (the authors' "
        "formula, on the labels after still negatives); the segmentation net frozen inside "
        f"AMAGI; still negatives {cfg.get('still_negatives', 0):.0%} (a bleeding clip replaced "
        "by its centre frame held still under camera motion, labelled not bleeding: the pair "
        "differs only over time)"
        + (f"; look jitter {cfg['clip_look_jitter']:g} (white balance, exposure, gamma, "
           "saturation, blur and noise changed per clip, all its frames alike)"
           if cfg.get("clip_look_jitter") else "")
        + (f"; bleeding clips whose labelled frame shows fewer than "
           f"{cfg['clip_min_visible_px']} pixels of bleeding left out"
           if cfg.get("clip_min_visible_px") else ""),
        *([f"- AMAGI's head also reads the map's peak and area (`AmagiHead(map_evidence=True)`"
           f"); in training the pathway logits are left out of {dropped:.0%} of the samples, "
           "which the map's evidence decides alone; in analysis they weigh "
           f"{1 - dropped:.0%}"] if dropped is not None else []),
        *([f"- neighbourhood probe {_probe_names(manifest['probe']['file'])} (PatchNet: "
           f"{cfg.get('probe_frames', 8)} frames {cfg['probe_step_s']:g} s apart of a 32-pixel neighbourhood"
           + (f" on frames {cfg['probe_scale']}× the model's scale"
              if cfg.get("probe_scale", 1) > 1 else "") + ", the "
           "frame-to-frame changes given explicitly"
           + (f", its feature map pooled by {_POOL_WORDS[cfg['probe_pool']]}"
              if cfg.get("probe_pool", "avg") != "avg" else "")
           + (", each frame's neighbourhood where the view's motion carried it"
              if cfg.get("probe_stabilise") or cfg.get("probe_read_stabilise") else "")
           + (" (so read in analysis only: trained on each frame's neighbourhood at the "
              "same place)" if cfg.get("probe_read_stabilise")
              and not cfg.get("probe_stabilise") else "") + "), "
           f"{cfg['probe_epochs']} epochs on the masked frames of the training set"
           + (f" and {cfg['probe_extra_cases']} more "
              f"{'case' if cfg['probe_extra_cases'] == 1 else 'cases'} of its domain (`--seed "
              f"{cfg['probe_seed']}`)" if cfg.get("probe_extra_cases") else "")
           + (f" and {cfg['probe_static_cases']} bleeding-free "
              f"{'one' if cfg['probe_static_cases'] == 1 else 'ones'} full of still blood "
              f"(`--domain randomised-static --seed {cfg['probe_static_seed']}`)"
              if cfg.get("probe_static_cases") else "")
           + f", at the bleeding and at the segmenter's {cfg['probe_candidates']} highest "
           "map peaks (its false peaks the negatives)"
           + (f", and one frame of each positive slid rigidly across the frames as a "
              f"negative (weight {cfg['probe_sliding_negatives']:g})"
              if cfg.get("probe_sliding_negatives") else "")
           + (", and one frame of each positive held while the view zooms (up to ×1.35) and "
              f"the light drifts (up to ×1.3) as a negative (weight "
              f"{cfg['probe_view_negatives']:g})" if cfg.get("probe_view_negatives") else "")
           + (", and one frame of each positive cut in two, its halves turning about a pivot "
              f"and back like an instrument's jaws (up to {HINGE_DEG:g}° each way), as a "
              f"negative (weight {cfg['probe_hinged_negatives']:g})"
              if cfg.get("probe_hinged_negatives") else "")
           + (", and negatives on blood that is not bleeding (still pools, stained instrument "
              "jaws, blood on the lens: the renderer's look-alike masks), up to "
              f"{cfg['probe_lookalike_neg']} a masked frame" if cfg.get("probe_lookalike_neg")
              else "")
           + (", and every map peak of the frames "
              + ", ".join(f"{v:g}" for v in cfg["probe_after_end_s"])
              + " s after each bleeding's end (where none is active) as a negative: the "
              "blood it left" if cfg.get("probe_after_end_s") else "")
           + f", look jitter {cfg['probe_look_jitter']:g}; in analysis it looks where the map of each "
           "prediction's frame peaks, and its score, "
           + ("averaged" if manifest["probe"].get("smooth_q") is None
              else f"its {manifest['probe']['smooth_q']:g}-quantile")
           + f" over {manifest['probe']['smooth_s']:g} s, weighs "
           f"{manifest['probe']['weight']:g} against the clip network's probability"]
          if manifest.get("probe") else []),
        *([f"- temporal refiner `{manifest['refiner']}` ({cfg['refiner_layers']} dilated "
           f"layers of {cfg['refiner_width']} channels, {cfg['refiner_steps']} steps): "
           "re-reads the main model's probabilities over the whole video, each video's "
           "median as its baseline; trained on the main model's predictions of "
           + ", ".join(f"`amagi synth --seed {seed} --domain {d}` ({n} × "
                       f"{cfg['refiner_duration_s']:g} s)" for d, seed, n in cfg["refiner_sets"])
           ] if manifest.get("refiner") else []),
        *[f"- {who} operating point: {OperatingPoint.from_json(op).describe()}, chosen on "
          f"validation cases ({op['chosen_on']}); "
          "`amagi process`, `amagi serve` and `amagi evaluate` read its probabilities there "
          "unless `[analysis]` is set"
          for who, op in (("main model's", manifest.get("operating_point")),
                          ("baseline's", manifest["baseline"].get("operating_point")))
          if op],
        "- wall time (s): " + ", ".join(f"{k} {'not timed' if v is None else f'{v:.0f}'}"
                                         for k, v in secs.items()), "",
    ]
    titles = {"static": "Bleeding-free held-out cases full of still blood",
              "shifted": "The first held-out set (v1-v3), for comparison"}

    def section(title: str, md: str) -> str:
        body = md.split("\n", 1)[1] if md.startswith("#") else md
        return f"\n## {title}\n" + body.replace("\n## ", "\n### ")

    return ("\n".join(lines) + section("Held-out metrics", metrics_md)
            + "".join(section(titles.get(k, k), v) for k, v in (others or {}).items()))


def main(argv: list[str] | None = None) -> int:
    from models.training.loops import PRECISIONS

    p = argparse.ArgumentParser(prog="python -m amagi_plugin.demo_model",
                                description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", type=Path, default=None,
                   help="intermediate data and checkpoints (resumable; default "
                   "var/demo-model[-RECIPE][-quick])")
    p.add_argument("--dest", type=Path, default=DEMO_DIR, help="where the demo model goes")
    p.add_argument("--quick", action="store_true", help="tiny run of every stage")
    p.add_argument("--recipe", default="shipped", choices=sorted(RECIPES),
                   help=RECIPE_HELP)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (train and evaluate)")
    p.add_argument("--stop-after", choices=STOP_AFTER, default=None,
                   help="trained: stop once every network is trained, before the validation "
                   "and held-out sets; clip: once the segmenter and the clip networks are, "
                   "before the probe's own cases (resume the work directory to finish)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the networks' training arithmetic instead of the recipe's (fp32): "
                   "bf16 autocast where the device computes it natively (a GPU, a CPU with "
                   "AMX: about 1.7x faster training steps on 2 AMX cores)")
    p.add_argument("--networks-from", type=Path, default=None, metavar="DIR",
                   help="take the trained networks of this model folder (e.g. "
                   "models/weights/demo) instead of training: the recipe must match its "
                   "build in every setting but how they are read and measured")
    args = p.parse_args(argv)
    setup_logging("info", "text")  # the program's one logging setup
    try:
        cfg = DemoConfig.recipe(args.recipe, precision=args.precision)
        if (args.recipe in GPU_RECIPES and not args.quick and args.device == "cpu"
                and args.networks_from is None):
            log.warning("recipe %s is sized for a GPU (%d training cases, %d clip epochs at "
                        "batch %d): on a few CPU cores it takes many hours; --device cuda, "
                        "or --recipe evidence-probe for the CPU's budget", args.recipe,
                        cfg.train_cases, cfg.clip_epochs, cfg.batch_size)
        work = args.work_dir or default_work_dir(args.recipe, args.quick)
        training = build_demo(work, cfg.quick() if args.quick else cfg, args.dest, args.device,
                              args.stop_after, args.networks_from)
    except Exception as e:  # the CLI's one table of exit codes; bugs keep their traceback
        code = exit_code_for(e)
        if code == ExitCode.INTERNAL:
            raise
        print(f"demo-model: error: {e}", file=sys.stderr)
        return int(code)
    print(json.dumps(training["seconds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
