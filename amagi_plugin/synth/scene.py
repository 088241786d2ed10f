"""Scene parameters of one synthetic case, and the seeded sampler that draws them.

A case is fully determined by a :class:`SceneParams` (which carries its own ``seed`` for the
textures and sensor noise): the renderer reads nothing else. :func:`sample_scene` draws a
``SceneParams`` from a seed inside the ranges of a :class:`SceneRanges`; the named presets in
:data:`DOMAINS` let evaluation use looks never seen in training (``"train"`` vs ``"shifted"``:
other palette families, event sizes, camera speeds, more smoke and instruments).

Units: positions of world objects (events, pools, patches) are canvas pixels; sizes are
canvas pixels; times are frame indices (``start_frame`` inclusive, ``end_frame`` exclusive)
or seconds where the name says ``_s``/``_hz``; colours are RGB in 0–1.

Sampler (what :func:`sample_scene` does, in order, all from ``numpy.random.default_rng(seed)``):

1. palette family uniformly from ``ranges.palettes``, each base colour jittered by ±0.04;
2. texture scale, fat fraction, vessel density, vignette, sensor noise;
3. camera: a speed ``s`` uniform in ``ranges.camera_speed`` scales pan amplitude, frequencies,
   zoom and rotation amplitudes and shake;
4. events: count ``round(rate · minutes)`` with ``rate`` uniform in ``ranges.events_per_minute``,
   at least ``ranges.min_events``, reduced until they fit with ``ranges.min_gap_s`` between them;
   durations uniform in ``ranges.event_duration_s`` (at most half the video); the free time is
   split at random (Dirichlet) between the gaps. Each event's maximal pool radius is
   log-uniform in ``ranges.event_size`` × the shorter view side; its source is a point of the
   central 70 % of the view at the event's middle frame;
5. hard negatives: static pools of old (sometimes fresh-looking) blood, round or elongated
   like a dried trail, and red tissue patches, placed where the camera looks at a random time;
6. instruments and smoke episodes.

Presets that randomise (``randomised``, ``heldout``, ``static``) then draw, from a second
stream ``default_rng([seed, 7])``, bleeding forms, palette shifts, still look-alikes of active
blood and the camera chain (:class:`~amagi_plugin.synth.look.Look`, lens distortion drawn
last), and from a third, ``default_rng([seed, 13])``, the distractors of
:data:`DISTRACTOR_KINDS`. An opted-in :class:`VideoFormatRanges` draws the case's frame rate
and size first, from ``default_rng([seed, 11])``. Each stream only adds to what the earlier
ones drew, so the ``train`` and ``shifted`` presets give exactly the scenes they always gave.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from amagi_plugin.synth.camera import CameraMotion, screen_to_world, world_to_screen
from amagi_plugin.synth.errors import SynthError
from amagi_plugin.synth.look import Look, LookRanges, sample_look

RGB = tuple[float, float, float]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Palette:
    """Tissue colours of a case (RGB, 0–1)."""

    name: str
    tissue_light: RGB
    tissue_dark: RGB
    fat: RGB
    vessel: RGB
    red_patch: RGB


#: Base colours of each palette family; "pale" and "dark" are kept out of the training domain.
PALETTE_FAMILIES: dict[str, Palette] = {
    "pink": Palette("pink", (0.86, 0.52, 0.50), (0.62, 0.26, 0.26), (0.93, 0.80, 0.45),
                    (0.50, 0.10, 0.14), (0.72, 0.22, 0.22)),
    "red": Palette("red", (0.74, 0.32, 0.28), (0.46, 0.14, 0.13), (0.90, 0.74, 0.40),
                   (0.38, 0.06, 0.08), (0.64, 0.13, 0.12)),
    "yellow": Palette("yellow", (0.92, 0.74, 0.52), (0.72, 0.44, 0.32), (0.96, 0.86, 0.50),
                      (0.55, 0.12, 0.12), (0.72, 0.25, 0.20)),
    "pale": Palette("pale", (0.92, 0.72, 0.68), (0.72, 0.50, 0.48), (0.95, 0.90, 0.72),
                    (0.60, 0.25, 0.25), (0.76, 0.30, 0.28)),
    "dark": Palette("dark", (0.58, 0.27, 0.23), (0.32, 0.11, 0.10), (0.72, 0.58, 0.30),
                    (0.26, 0.04, 0.05), (0.48, 0.10, 0.09)),
}


@dataclass(frozen=True)
class Instrument:
    """A laparoscopic/robotic instrument: a shaft entering from the border, jaws at the tip.

    Screen space: ``tip(t) = (tip_home + tip_amplitude · sin(2π tip_hz t + tip_phases)) · (W, H)``;
    the shaft runs from the tip in direction ``entry_angle`` (radians, 0 = +x, π/2 = down).
    """

    entry_angle: float
    tip_home: tuple[float, float]
    tip_amplitude: tuple[float, float]
    tip_hz: tuple[float, float]
    tip_phases: tuple[float, float]
    width_frac: float  # shaft diameter / shorter view side
    tone: float  # grey level of the metal, 0-1
    dark_shaft: bool  # black insulated shaft with metallic jaws
    jaw_length_frac: float
    jaw_hz: float
    wobble: float  # radians of slow shaft-angle change
    stain: StillBlood | None = None  # fresh-looking blood on the jaws (see below)


@dataclass(frozen=True)
class SmokeEpisode:
    """Electrocautery smoke between two frames; ``density`` is the peak opacity (≤ 0.45)."""

    start_frame: int
    end_frame: int
    density: float
    drift: tuple[float, float]  # screen pixels per second


@dataclass(frozen=True)
class SynthBleed:
    """Ground truth of one synthetic active bleeding: a pool growing from ``source`` plus a
    flowing streak (what the generator draws, not a detected event: those are
    :class:`dicom_io.results.BleedingEvent`, with 1-based inclusive frame numbers).

    Frames here are 0-based indices: active (labelled 1) for ``start_frame <= k < end_frame``;
    afterwards the blood stays as a residual that no longer grows, flows or pulses and darkens
    over ``darken_s`` seconds.
    """

    start_frame: int
    end_frame: int
    source: tuple[float, float]  # world pixels
    max_radius: float  # world pixels
    initial_radius: float
    growth_tau_s: float
    flow_angle: float  # radians, world frame
    streak_length: float  # world pixels
    streak_width: float
    flow_speed: float  # world pixels / s at which the streak front advances
    meander: float  # world pixels of lateral streak wiggle
    ripple_speed: float  # world pixels / s of the texture moving along the flow
    ripple_wavelength: float
    pulse_hz: float
    pulse_depth: float  # 0-1
    colour: RGB  # fresh blood
    old_colour: RGB  # colour the residual darkens to
    darken_s: float
    irregularity: float
    size_class: str  # "small" or "large"
    form: str = "ooze"  # one of BLEEDING_FORMS
    dynamics: str = "saturating"  # one of BLEEDING_DYNAMICS
    flow_texture: str = "waves"  # one of FLOW_TEXTURES
    texture_seed: int = 0  # its "advected" texture's own plane waves
    #: the flow texture's contrast about its mean (1: the presets'; below 0.5 no glints)
    texture_depth: float = 1.0


#: How active bleeding looks over time (see :mod:`amagi_plugin.synth.events`): a pool spreading
#: from a point; a pulsatile jet; a thin stream running down the tissue with a small pool; a
#: tiny source of a few pixels; an ooze whose source lies under an instrument.
BLEEDING_FORMS = ("ooze", "spurt", "stream", "tiny", "occluded")

#: How an active bleeding changes over its active period (see
#: :func:`amagi_plugin.synth.events.event_state`): ``"saturating"`` (the first presets) grows
#: quickly and then mostly holds still while still labelled active; ``"sustained"`` keeps
#: welling and flowing until it ends, with flow texture that a clip's frames can resolve.
BLEEDING_DYNAMICS = ("saturating", "sustained")

#: What the blood's surface texture is (see :func:`amagi_plugin.synth.events.render_event`):
#: ``"waves"`` (the first presets) sinusoidal ripples travelling with the flow, rings from a
#: pool's source, with glints at their crests; ``"advected"`` an irregular texture (a sum of
#: plane waves of random directions and wavelengths, no period a frame can show) carried
#: outwards from the source and along a stream, as another renderer draws it (session 49).
#: One kind per case, for every blood of the case alike (active, still look-alikes, stains).
FLOW_TEXTURES = ("waves", "advected")

#: Hard negatives drawn with the active-blood model itself (same colours, texture and glints in
#: a single frame): frozen fresh-looking blood, and blood being sucked away (shrinking).
STILL_KINDS = ("fresh_still", "suction")


@dataclass(frozen=True)
class StillBlood:
    """A hard negative with the single-frame look of active bleeding but no bleeding dynamics.

    ``blood`` supplies the appearance (colour, shape, ripple texture) and the visible interval
    ``blood.start_frame <= k < blood.end_frame``; its state is frozen at ``frozen_s`` seconds of
    growth, so it neither grows, flows nor pulses. A ``"suction"`` one shrinks to nothing over
    ``vanish_s`` seconds from ``vanish_frame`` on (blood being removed, never added).
    """

    kind: str
    blood: SynthBleed
    frozen_s: float
    vanish_frame: int = -1
    vanish_s: float = 0.0


@dataclass(frozen=True)
class BloodPool:
    """A hard negative: static pooled/old blood (also trail-shaped), moving with the tissue."""

    centre: tuple[float, float]
    radius: float
    elongation: float  # 1 = round; > 1 stretched along ``angle``
    angle: float
    colour: RGB
    irregularity: float


@dataclass(frozen=True)
class RedPatch:
    """A hard negative: reddish tissue (inflamed mucosa, muscle) baked into the texture."""

    centre: tuple[float, float]
    radius: float
    colour: RGB


#: Still distractors that are not blood pools (off in the first presets; see
#: :func:`_sample_distractors`): blood-soaked gauze and blood-stained instrument jaws (fresh-
#: blood colour model, never growing or flowing), irrigation fluid (flows, is not blood) and
#: blood on the lens (fixed in screen space). None of them is ever in the active mask.
DISTRACTOR_KINDS = ("gauze", "stained_tip", "irrigation", "lens_blood")


@dataclass(frozen=True)
class Gauze:
    """A swab lying on the tissue, soaked with fresh-looking blood; static in the world.

    The woven white patch is a rotated rectangle (``half_size`` along ``angle`` and across,
    world pixels) with frayed edges; ``stain`` (kind ``"fresh_still"``) is drawn with the
    active-blood colour model at its frozen state and clipped to the patch.
    """

    centre: tuple[float, float]
    half_size: tuple[float, float]
    angle: float
    weave_px: float  # period of the weave, world pixels
    tone: RGB
    stain: StillBlood


@dataclass(frozen=True)
class Irrigation:
    """Clear, slightly pink irrigation fluid running over the tissue (not blood, never masked).

    Between ``start_frame`` and ``end_frame`` a film of width ``width`` spreads from
    ``source`` along ``flow_angle`` at ``speed`` (world pixels / s) up to ``length``; when the
    episode ends its tail drains along the same path. Ripples with specular highlights travel
    along the flow at ``ripple_speed``.
    """

    start_frame: int
    end_frame: int
    source: tuple[float, float]  # world pixels
    flow_angle: float
    width: float
    length: float
    speed: float
    tint: RGB
    opacity: float  # peak opacity of the tint (< 0.5)
    ripple_wavelength: float
    ripple_speed: float


@dataclass(frozen=True)
class LensBlood:
    """A blurred red smear on the lens: fixed in screen space for the whole case, not masked.

    An irregular ellipse at ``centre`` (fractions of the frame), radii ``radii`` (pixels of
    the output frame) along ``angle``, blurred by ``blur_px``; where its opacity is ≥ 0.5 it
    hides what lies behind, active blood included.
    """

    centre: tuple[float, float]
    radii: tuple[float, float]
    angle: float
    colour: RGB
    opacity: float
    blur_px: float
    irregularity: float


@dataclass(frozen=True)
class VideoFormatRanges:
    """Per-case frame rate and frame size, opted into with :attr:`SceneRanges.video_format`.

    Each case's frame rate is one of ``frame_rates``; its frame area is the requested
    ``width × height`` times ``scale²`` (``scale`` uniform in its range) with the aspect
    ``width / height`` uniform in ``aspect``; both sides are rounded to even pixels.
    """

    frame_rates: tuple[float, ...] = (25.0, 30.0, 50.0, 60.0)
    scale: tuple[float, float] = (0.75, 1.5)
    aspect: tuple[float, float] = (1.0, 16.0 / 9.0)

    def __post_init__(self) -> None:
        if not self.frame_rates or not all(1.0 <= f <= 120.0 for f in self.frame_rates):
            raise SynthError(f"frame_rates must be 1-120 fps, got {self.frame_rates}")
        for name in ("scale", "aspect"):
            lo, hi = getattr(self, name)
            if lo <= 0 or hi < lo:
                raise SynthError(f"{name} must be a range 0 < low <= high, got ({lo}, {hi})")

    def draw(self, seed: int, width: int, height: int, fps: float) -> tuple[int, int, float]:
        """``(width, height, fps)`` of case ``seed`` (its own stream: the scene is unchanged)."""
        rng = np.random.default_rng([seed, 11])
        rate = self.frame_rates[int(rng.integers(len(self.frame_rates)))]
        area = width * height * float(rng.uniform(*self.scale)) ** 2
        aspect = float(rng.uniform(*self.aspect))
        h = math.sqrt(area / aspect)
        return 2 * max(8, round(aspect * h / 2)), 2 * max(8, round(h / 2)), float(rate)


@dataclass(frozen=True)
class SceneParams:
    """Everything the renderer needs for one case (see the module docstring for units)."""

    seed: int
    width: int
    height: int
    fps: float
    n_frames: int
    domain: str
    palette: Palette
    canvas_size: tuple[int, int]  # (width, height) in world pixels
    texture_scale: float  # pixels of the largest tissue structures
    fat_fraction: float
    vessel_density: float
    vignette: float
    light_flicker: float
    noise_std: float
    camera: CameraMotion
    instruments: tuple[Instrument, ...] = ()
    smoke: tuple[SmokeEpisode, ...] = ()
    events: tuple[SynthBleed, ...] = ()
    pools: tuple[BloodPool, ...] = ()
    red_patches: tuple[RedPatch, ...] = ()
    format_version: int = FORMAT_VERSION
    still: tuple[StillBlood, ...] = ()
    look: Look | None = None
    gauze: tuple[Gauze, ...] = ()
    irrigation: tuple[Irrigation, ...] = ()
    lens_blood: tuple[LensBlood, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps

    @property
    def canvas_centre(self) -> tuple[float, float]:
        return self.canvas_size[0] / 2.0, self.canvas_size[1] / 2.0

    def pose(self, frame: int) -> tuple[float, float, float, float]:
        """Camera ``(cx, cy, zoom, theta)`` at frame ``frame``."""
        return self.camera.pose(frame / self.fps, self.canvas_centre)

    def frame_labels(self) -> np.ndarray:
        """Per-frame active-bleeding labels, ``uint8 (n_frames,)``: 1 inside an event."""
        labels = np.zeros(self.n_frames, np.uint8)
        for ev in self.events:
            labels[ev.start_frame:ev.end_frame] = 1
        return labels

    def tags(self) -> dict[str, str]:
        """The randomised families of this case (for per-family evaluation), ``name → value``."""
        forms = sorted({ev.form for ev in self.events})
        kinds = sorted({x.kind for x in self.still})
        present = {"gauze": bool(self.gauze), "irrigation": bool(self.irrigation),
                   "lens_blood": bool(self.lens_blood),
                   "stained_tip": any(i.stain is not None for i in self.instruments)}
        distractors = [k for k in DISTRACTOR_KINDS if present[k]]
        return {"palette": self.palette.name,
                "scope_mask": self.look.scope_mask if self.look else "none",
                "bleeding": "+".join(forms) if forms else "none",
                "still_blood": "+".join(kinds) if kinds else "none",
                "distractors": "+".join(distractors) if distractors else "none"}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists); inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SceneParams:
        """Rebuild from :meth:`to_dict` output (e.g. a case's ``labels.json['scene']``)."""
        d = {k: _tuplify(v) for k, v in data.items()}
        try:
            d["palette"] = Palette(**d["palette"])
            d["camera"] = CameraMotion(**d["camera"])
            d["instruments"] = tuple(
                Instrument(**{**x, "stain": _still(x["stain"]) if x.get("stain") else None})
                for x in d.get("instruments", ()))
            d["smoke"] = tuple(SmokeEpisode(**x) for x in d.get("smoke", ()))
            d["events"] = tuple(SynthBleed(**x) for x in d.get("events", ()))
            d["pools"] = tuple(BloodPool(**x) for x in d.get("pools", ()))
            d["red_patches"] = tuple(RedPatch(**x) for x in d.get("red_patches", ()))
            d["still"] = tuple(_still(x) for x in d.get("still", ()))
            d["look"] = Look(**d["look"]) if d.get("look") else None
            d["gauze"] = tuple(Gauze(**{**x, "stain": _still(x["stain"])})
                               for x in d.get("gauze", ()))
            d["irrigation"] = tuple(Irrigation(**x) for x in d.get("irrigation", ()))
            d["lens_blood"] = tuple(LensBlood(**x) for x in d.get("lens_blood", ()))
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise SynthError(f"not a valid scene description: {e}") from e


def _still(data: Mapping[str, Any]) -> StillBlood:
    return StillBlood(**{**data, "blood": SynthBleed(**data["blood"])})


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuplify(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class SceneRanges:
    """The knobs of :func:`sample_scene`: ranges ``(low, high)`` each scene is drawn from.

    The fields after ``fresh_looking_pool_probability`` are domain randomisation, off by
    default (:func:`_randomise` reads them only when one differs from its default);
    ``video_format`` is an opt-in of any preset (``amagi synth --vary-format``).
    """

    palettes: tuple[str, ...] = ("pink", "red", "yellow")
    events_per_minute: tuple[float, float] = (2.0, 4.0)
    min_events: int = 1
    event_duration_s: tuple[float, float] = (3.0, 12.0)
    min_gap_s: float = 2.0
    event_size: tuple[float, float] = (0.03, 0.14)  # max pool radius / shorter view side
    small_event_size: float = 0.06  # below this an event is "small"
    camera_speed: tuple[float, float] = (0.3, 1.0)
    instruments: tuple[int, int] = (1, 3)
    smoke_per_minute: tuple[float, float] = (0.0, 1.5)
    pools: tuple[int, int] = (1, 3)
    red_patches: tuple[int, int] = (0, 4)
    fresh_looking_pool_probability: float = 0.35
    # Domain randomisation (off in the first presets, so their scenes stay as they were).
    palette_jitter: float = 0.0  # extra ± jitter of every palette colour
    hue_shift_deg: tuple[float, float] = (0.0, 0.0)  # rotation of the tissue colours' hue
    saturation_scale: tuple[float, float] = (1.0, 1.0)
    forms: tuple[str, ...] = ("ooze",)
    still_blood: tuple[int, int] = (0, 0)  # StillBlood hard negatives per case
    still_kinds: tuple[str, ...] = ("fresh_still",)
    bleeding_free_probability: float = 0.0
    look: LookRanges | None = None
    distractors: tuple[int, int] = (0, 0)  # gauze, stained tips, irrigation, lens blood
    distractor_kinds: tuple[str, ...] = ("gauze",)
    sustained: bool = False  # active bleeding keeps welling and flowing (BLEEDING_DYNAMICS)
    flow_textures: tuple[str, ...] = ("waves",)  # each case's blood texture (FLOW_TEXTURES)
    # Cue dropout, per blood (active and still alike): without a heartbeat (spurts keep
    # theirs), with a texture that does not travel, with a fainter texture; what is left of
    # active bleeding then is its growth and spread.
    pulse_free_probability: float = 0.0
    still_texture_probability: float = 0.0
    texture_depth: tuple[float, float] = (1.0, 1.0)
    # Breathing: each case's view sways back and forth by a share of its short side drawn
    # from this range (none: (0, 0)), at 0.15-1.2 Hz (CameraMotion.wobble_*).
    wobble: tuple[float, float] = (0.0, 0.0)
    # Opt-in per-case frame rate and size (the requested ones are the base values).
    video_format: VideoFormatRanges | None = None

    def __post_init__(self) -> None:
        unknown = [p for p in self.palettes if p not in PALETTE_FAMILIES]
        if not self.palettes or unknown:
            raise SynthError(f"palettes must be among {', '.join(PALETTE_FAMILIES)}, "
                             f"got {', '.join(self.palettes) or 'none'}")
        for name in ("events_per_minute", "event_duration_s", "event_size", "camera_speed",
                     "instruments", "smoke_per_minute", "pools", "red_patches"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise SynthError(f"{name} must be a range 0 <= low <= high, got ({lo}, {hi})")
        if self.event_size[0] <= 0 or self.event_size[1] > 0.5:
            raise SynthError(f"event_size must lie in (0, 0.5], got {self.event_size}")
        if self.event_duration_s[0] <= 0:
            raise SynthError("event_duration_s must be positive")
        for name in ("fresh_looking_pool_probability", "bleeding_free_probability",
                     "pulse_free_probability", "still_texture_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SynthError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name, allowed in (("forms", BLEEDING_FORMS), ("still_kinds", STILL_KINDS),
                              ("distractor_kinds", DISTRACTOR_KINDS),
                              ("flow_textures", FLOW_TEXTURES)):
            values = getattr(self, name)
            bad = [v for v in values if v not in allowed]
            if not values or bad:
                raise SynthError(f"{name} must be among {', '.join(allowed)}, "
                                 f"got {', '.join(values) or 'none'}")
        for name in ("still_blood", "distractors"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise SynthError(f"{name} must be a range 0 <= low <= high, got ({lo}, {hi})")
        for name, top in (("texture_depth", 2.0), ("wobble", 0.1)):  # bounded ranges
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= top:
                raise SynthError(f"{name} must be a range 0 <= low <= high <= {top:g}, "
                                 f"got ({lo}, {hi})")
        if not 0.0 <= self.palette_jitter <= 0.3 or self.saturation_scale[0] <= 0:
            raise SynthError("palette_jitter must lie in [0, 0.3] and saturation_scale be "
                             "positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The domain-randomised training look: continuous palettes, camera chains, every bleeding
#: form but one, frozen look-alikes of active blood in every case, still distractors (soaked
#: gauze, stained instrument jaws) and irrigation fluid, some bleeding-free cases.
_RANDOMISED = SceneRanges(
    palettes=("pink", "red", "yellow"), events_per_minute=(2.0, 6.0), min_events=0,
    event_duration_s=(2.0, 12.0), min_gap_s=1.5, event_size=(0.015, 0.14),
    camera_speed=(0.2, 1.3), instruments=(1, 3), smoke_per_minute=(0.0, 2.0), pools=(1, 4),
    red_patches=(0, 5), fresh_looking_pool_probability=0.5, palette_jitter=0.08,
    hue_shift_deg=(-12.0, 18.0), saturation_scale=(0.7, 1.3),
    forms=("ooze", "stream", "tiny", "occluded"), still_blood=(1, 3),
    still_kinds=("fresh_still", "suction"), bleeding_free_probability=0.1,
    look=LookRanges(), distractors=(1, 3),
    distractor_kinds=("gauze", "stained_tip", "irrigation"), sustained=True)

#: Held-out looks: palette families, a field-stop family, a bleeding form and a distractor kind
#: (blood on the lens) never trained on, with wider camera-chain ranges (lens distortion too).
_HELDOUT = dataclasses.replace(
    _RANDOMISED, palettes=("pale", "dark"), events_per_minute=(1.5, 3.0), min_events=4,
    event_duration_s=(3.0, 10.0), min_gap_s=4.0, forms=("ooze", "stream", "tiny", "spurt"),
    bleeding_free_probability=0.0, distractor_kinds=DISTRACTOR_KINDS,
    look=LookRanges(scope_masks=("rounded_rect", "round"), white_balance=0.2,
                    gamma=(0.75, 1.35), blur_sigma=(0.3, 1.5), distortion=(-0.25, 0.45)))

#: Named presets: train on "train" or "randomised"; evaluate generalisation on "shifted" (the
#: first held-out set) or "heldout" (held-out looks, ≥ 4 events a case); "static" is
#: bleeding-free video full of still blood in the held-out looks (false alarms per hour),
#: "randomised-static" the same in the training looks (bleeding-free training and
#: validation video: a temporal refiner and an operating point must see some).
DOMAINS: dict[str, SceneRanges] = {
    "train": SceneRanges(),
    "shifted": SceneRanges(palettes=("pale", "dark"), event_size=(0.02, 0.18),
                           camera_speed=(1.0, 1.6), instruments=(2, 4),
                           smoke_per_minute=(1.0, 3.0), pools=(2, 5), red_patches=(2, 6),
                           fresh_looking_pool_probability=0.5),
    "randomised": _RANDOMISED,
    "heldout": _HELDOUT,
    "static": dataclasses.replace(_HELDOUT, min_events=0, bleeding_free_probability=1.0,
                                  still_blood=(2, 4), pools=(2, 5)),
    "randomised-static": dataclasses.replace(_RANDOMISED, min_events=0,
                                             bleeding_free_probability=1.0,
                                             still_blood=(2, 4), pools=(2, 5)),
}


#: The fields of :class:`SceneRanges` that only :func:`_randomise` reads.
_RANDOMISATION = tuple(f for f in dataclasses.fields(SceneRanges) if f.name in (
    "palette_jitter", "hue_shift_deg", "saturation_scale", "forms", "still_blood",
    "still_kinds", "bleeding_free_probability", "look", "distractors", "distractor_kinds",
    "sustained"))


@dataclass
class _Sampler:
    rng: np.random.Generator
    width: int
    height: int
    fps: float
    n_frames: int
    ranges: SceneRanges
    side: float = field(init=False)

    def __post_init__(self) -> None:
        self.side = float(min(self.width, self.height))

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def jitter(self, rgb: RGB, amount: float = 0.04) -> RGB:
        out = np.clip(np.asarray(rgb) + self.rng.uniform(-amount, amount, 3), 0.0, 1.0)
        return tuple(round(float(v), 4) for v in out)  # type: ignore[return-value]


def sample_scene(seed: int, *, width: int = 224, height: int = 224, fps: float = 10.0,
                 duration_s: float = 60.0, ranges: SceneRanges | str = "train") -> SceneParams:
    """Draw the scene of one case from ``seed`` (see the module docstring for the steps).

    Parameters
    ----------
    seed
        Non-negative integer; the same seed and arguments always give the same scene.
    width, height
        Frame size in pixels (16–4096 each).
    fps
        Frame rate in frames per second.
    duration_s
        Video length in seconds.
    ranges
        A :class:`SceneRanges` or the name of a preset in :data:`DOMAINS`.
    """
    if isinstance(ranges, str):
        if ranges not in DOMAINS:
            raise SynthError(f"unknown domain {ranges!r}; choose one of {', '.join(DOMAINS)}")
        domain, ranges = ranges, DOMAINS[ranges]
    else:  # a preset with an opted-in video format keeps the preset's name
        plain = dataclasses.replace(ranges, video_format=None)
        domain = next((k for k, v in DOMAINS.items() if v == plain), "custom")
    if seed < 0:
        raise SynthError(f"seed must be >= 0, got {seed}")
    if ranges.video_format is not None:
        width, height, fps = ranges.video_format.draw(seed, width, height, fps)
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise SynthError(f"frame size must be 16-4096 pixels per side, got {width}x{height}")
    if not 1.0 <= fps <= 120.0:
        raise SynthError(f"fps must be between 1 and 120, got {fps}")
    n_frames = round(duration_s * fps)
    if n_frames < 8:
        raise SynthError(f"duration {duration_s} s at {fps} fps gives {n_frames} frames; "
                         "at least 8 are needed")
    rng = np.random.default_rng(seed)
    s = _Sampler(rng, width, height, fps, n_frames, ranges)

    name = ranges.palettes[int(rng.integers(len(ranges.palettes)))]
    base = PALETTE_FAMILIES[name]
    palette = Palette(name, s.jitter(base.tissue_light), s.jitter(base.tissue_dark),
                      s.jitter(base.fat), s.jitter(base.vessel, 0.03),
                      s.jitter(base.red_patch, 0.03))

    speed = s.u(*ranges.camera_speed)
    camera = CameraMotion(
        pan_amplitude=(speed * s.u(0.12, 0.3) * width, speed * s.u(0.12, 0.3) * height),
        pan_hz=(speed * s.u(0.01, 0.03), speed * s.u(0.03, 0.08)),
        pan_phases=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, 4)),  # type: ignore[arg-type]
        zoom_base=s.u(0.95, 1.15), zoom_amplitude=speed * s.u(0.02, 0.12),
        zoom_hz=speed * s.u(0.02, 0.06), zoom_phase=s.u(0, 2 * math.pi),
        rotation_amplitude=speed * s.u(0.01, 0.08), rotation_hz=speed * s.u(0.01, 0.05),
        rotation_phase=s.u(0, 2 * math.pi),
        shake_amplitude=speed * s.u(0.0, 0.006) * s.side, shake_hz=s.u(0.8, 2.0),
    )
    camera = _wobbling(camera, ranges.wobble, seed, s.side)
    hx, hy = camera.max_extent(width, height)
    margin = 8
    canvas = (math.ceil(2 * hx) + 2 * margin, math.ceil(2 * hy) + 2 * margin)
    centre = (canvas[0] / 2.0, canvas[1] / 2.0)

    def world_at(frame: int, fx: float, fy: float) -> tuple[float, float]:
        """World point seen at view fraction (fx, fy) of frame ``frame``."""
        pose = camera.pose(frame / fps, centre)
        wx, wy = screen_to_world(pose, np.float64((fx - 0.5) * width),
                                 np.float64((fy - 0.5) * height))
        return round(float(wx), 3), round(float(wy), 3)

    def screen_of(frame: int, world: tuple[float, float]) -> tuple[float, float]:
        """Offset from the view centre (pixels) at which ``world`` is seen at ``frame``."""
        return world_to_screen(camera.pose(frame / fps, centre), *world)

    events = _sample_events(s, world_at, screen_of, camera.zoom_base)
    pools = []
    for _ in range(int(rng.integers(ranges.pools[0], ranges.pools[1] + 1))):
        fresh = rng.random() < ranges.fresh_looking_pool_probability
        colour = ((s.u(0.55, 0.78), s.u(0.03, 0.08), s.u(0.05, 0.10)) if fresh
                  else (s.u(0.25, 0.5), s.u(0.02, 0.06), s.u(0.03, 0.07)))
        elong = 1.0 if rng.random() < 0.5 else s.u(1.8, 4.0)
        pools.append(BloodPool(
            centre=world_at(int(rng.integers(n_frames)), s.u(0.1, 0.9), s.u(0.1, 0.9)),
            radius=s.side * camera.zoom_base * math.exp(s.u(math.log(0.03), math.log(0.13))),
            elongation=elong, angle=s.u(0, math.pi),
            colour=tuple(round(c, 4) for c in colour), irregularity=s.u(0.1, 0.35)))
    patches = [RedPatch(centre=world_at(int(rng.integers(n_frames)), s.u(0.1, 0.9),
                                        s.u(0.1, 0.9)),
                        radius=s.side * s.u(0.05, 0.2), colour=s.jitter(palette.red_patch, 0.05))
               for _ in range(int(rng.integers(ranges.red_patches[0],
                                               ranges.red_patches[1] + 1)))]

    instruments = []
    for _ in range(int(rng.integers(ranges.instruments[0], ranges.instruments[1] + 1))):
        a = s.u(-0.35 * math.pi, 1.35 * math.pi)  # shaft towards the sides or the bottom
        home = (0.5 - 0.12 * math.cos(a) + s.u(-0.15, 0.15),
                0.5 - 0.12 * math.sin(a) + s.u(-0.15, 0.15))
        instruments.append(Instrument(
            entry_angle=a, tip_home=home,
            tip_amplitude=(s.u(0.04, 0.18), s.u(0.04, 0.18)),
            tip_hz=(s.u(0.04, 0.25), s.u(0.04, 0.25)),
            tip_phases=(s.u(0, 2 * math.pi), s.u(0, 2 * math.pi)),
            width_frac=s.u(0.06, 0.11), tone=s.u(0.5, 0.8), dark_shaft=bool(rng.random() < 0.5),
            jaw_length_frac=s.u(0.08, 0.14), jaw_hz=s.u(0.1, 0.6), wobble=s.u(0.0, 0.25)))

    smoke = []
    minutes = n_frames / fps / 60.0
    n_smoke = int(rng.poisson(s.u(*ranges.smoke_per_minute) * minutes))
    for _ in range(n_smoke):
        length = round(s.u(2.0, 6.0) * fps)
        start = int(rng.integers(0, max(1, n_frames - length // 2)))
        smoke.append(SmokeEpisode(start, min(n_frames, start + length), s.u(0.2, 0.45),
                                  (s.u(-6, 6) * s.side / 224, -s.u(4, 14) * s.side / 224)))

    scene = SceneParams(
        seed=int(seed), width=width, height=height, fps=float(fps), n_frames=n_frames,
        domain=domain, palette=palette, canvas_size=canvas,
        texture_scale=s.side * s.u(0.18, 0.35), fat_fraction=s.u(0.1, 0.45),
        vessel_density=s.u(0.2, 1.0), vignette=s.u(0.25, 0.5), light_flicker=s.u(0.0, 0.04),
        noise_std=s.u(0.004, 0.018), camera=camera, instruments=tuple(instruments),
        smoke=tuple(smoke), events=tuple(events), pools=tuple(pools),
        red_patches=tuple(patches))
    if any(getattr(ranges, f.name) != f.default for f in _RANDOMISATION):
        s2 = _Sampler(np.random.default_rng([seed, 7]), width, height, fps, n_frames, ranges)
        scene = _randomise(s2, scene, world_at, screen_of)
    return _cue_dropout(_textured(scene, ranges.flow_textures), ranges)


def _wobbling(camera: CameraMotion, wobble: tuple[float, float], seed: int, side: int
              ) -> CameraMotion:
    """``camera`` swaying as with breathing (:class:`~amagi_plugin.synth.camera.CameraMotion`'s
    ``wobble_*``): an amplitude of ``wobble`` × ``side`` pixels at 0.15-1.2 Hz (breathing up
    to a heartbeat carried by tissue), along a random direction, across it by up to half that.
    The world and everything in it sway alike: blood that does not flow still does not grow.
    Its own stream: with ``(0, 0)`` nothing is drawn and the camera is unchanged."""
    if wobble == (0.0, 0.0):
        return camera
    rng = np.random.default_rng([seed, 23])
    amp, hz, angle, ratio, phase = (rng.uniform(*wobble), rng.uniform(0.15, 1.2),
                                    rng.uniform(0, math.pi), rng.uniform(0.0, 0.5),
                                    rng.uniform(0, 2 * math.pi))
    return dataclasses.replace(
        camera, wobble_amplitude=round(float(amp) * side, 4), wobble_hz=round(float(hz), 4),
        wobble_angle=round(float(angle), 4), wobble_ratio=round(float(ratio), 4),
        wobble_phase=round(float(phase), 4))


def _textured(scene: SceneParams, kinds: tuple[str, ...]) -> SceneParams:
    """``scene`` with one flow texture of ``kinds`` drawn for the case, for every blood in it
    alike (events, still look-alikes, stains), each with its own texture seed. Its own
    stream: with the default ``("waves",)`` nothing is drawn and the scene is unchanged."""
    if kinds == ("waves",):
        return scene
    rng = np.random.default_rng([scene.seed, 17])
    kind = kinds[int(rng.integers(len(kinds)))]

    def bleed(ev: SynthBleed) -> SynthBleed:
        return dataclasses.replace(ev, flow_texture=kind,
                                   texture_seed=int(rng.integers(2**31)))

    return _each_blood(scene, bleed)


def _each_blood(scene: SceneParams, bleed) -> SceneParams:
    """``scene`` with ``bleed`` applied to every blood in it, in a fixed order: the events,
    then the still look-alikes, the instruments' and the gauze's stains."""

    def still(x: StillBlood | None) -> StillBlood | None:
        return None if x is None else dataclasses.replace(x, blood=bleed(x.blood))

    return dataclasses.replace(
        scene, events=tuple(bleed(ev) for ev in scene.events),
        still=tuple(still(x) for x in scene.still),
        instruments=tuple(dataclasses.replace(i, stain=still(i.stain))
                          for i in scene.instruments),
        gauze=tuple(dataclasses.replace(g, stain=still(g.stain)) for g in scene.gauze))


def _cue_dropout(scene: SceneParams, r: SceneRanges) -> SceneParams:
    """``scene`` with some of each blood's temporal cues taken away, per blood and for active
    and still blood alike (so one frame still does not tell them apart): with chance
    ``r.pulse_free_probability`` no heartbeat (its pool neither swells nor brightens with the
    pulse, as venous ooze and a running stream; a spurt keeps its beat, which makes it one),
    with chance ``r.still_texture_probability`` a texture that does not travel (no ripples
    or glints moving out of the source or down the stream), and a texture contrast drawn from
    ``r.texture_depth``. What always stays of active bleeding is its growth and spread. Its
    own stream: with the defaults nothing is drawn and the scene is unchanged."""
    if (not r.pulse_free_probability and not r.still_texture_probability
            and r.texture_depth == (1.0, 1.0)):
        return scene
    rng = np.random.default_rng([scene.seed, 19])

    def bleed(ev: SynthBleed) -> SynthBleed:
        # all three drawn for every blood, so one's draws never move another's
        calm, still, depth = rng.random(), rng.random(), rng.uniform(*r.texture_depth)
        changes: dict[str, float] = {}
        if calm < r.pulse_free_probability and ev.form != "spurt":
            changes["pulse_depth"] = 0.0
        if still < r.still_texture_probability:
            changes["ripple_speed"] = 0.0
        if r.texture_depth != (1.0, 1.0):
            changes["texture_depth"] = round(float(depth), 4)
        return dataclasses.replace(ev, **changes) if changes else ev

    return _each_blood(scene, bleed)


def _sample_events(s: _Sampler, world_at, screen_of, zoom: float) -> list[SynthBleed]:
    r, rng, fps = s.ranges, s.rng, s.fps
    minutes = s.n_frames / fps / 60.0
    count = max(r.min_events, round(s.u(*r.events_per_minute) * minutes))
    gap = math.ceil(r.min_gap_s * fps)
    lo_d = max(2, round(r.event_duration_s[0] * fps))
    hi_d = max(lo_d, round(r.event_duration_s[1] * fps))
    cap = max(2, s.n_frames // 2)
    lead = max(round(0.5 * fps), 1)  # no event in the first half second
    wanted = count
    durations: list[int] = []
    free = 0
    while count > 0:
        durations = [min(cap, int(rng.integers(lo_d, hi_d + 1))) for _ in range(count)]
        free = s.n_frames - sum(durations) - lead - (count - 1) * gap - 1
        if free >= 0:
            break
        count -= 1
    if count == 0 and wanted > 0:  # too short even for one event: a short one in the middle
        durations, count = [max(2, s.n_frames // 3)], 1
        lead = s.n_frames // 3
        free = max(0, s.n_frames - durations[0] - lead - 1)
    if count == 0:
        return []
    shares = rng.dirichlet(np.ones(count + 1)) * free
    extra = np.floor(shares).astype(int)
    events = []
    t = lead + int(extra[0])
    for i, d in enumerate(durations):
        start, end = t, t + d
        events.append(_draw_event(
            s, start, end, r.event_size,
            lambda start=start, end=end: _visible_source(s, world_at, screen_of, start, end),
            zoom))
        t = end + gap + int(extra[i + 1])
    return events



def _draw_event(s: _Sampler, start: int, end: int, size_range: tuple[float, float], source,
                zoom: float) -> SynthBleed:
    """One ooze-form event's appearance and dynamics (``source()`` draws its source point)."""
    size_frac = math.exp(s.u(math.log(size_range[0]), math.log(size_range[1])))
    radius = size_frac * s.side * zoom
    duration_s = (end - start) / s.fps
    streak_len = radius * s.u(0.3, 3.5)
    colour = (s.u(0.62, 0.86), s.u(0.02, 0.08), s.u(0.04, 0.11))
    return SynthBleed(
        start_frame=int(start), end_frame=int(end), source=source(),
        max_radius=round(radius, 3), initial_radius=round(max(1.5, 0.25 * radius), 3),
        growth_tau_s=duration_s * s.u(0.15, 0.5), flow_angle=math.pi / 2 + s.u(-1.1, 1.1),
        streak_length=streak_len, streak_width=max(1.2, radius * s.u(0.25, 0.5)),
        flow_speed=streak_len / (duration_s * s.u(0.3, 0.8)),
        meander=radius * s.u(0.05, 0.3),
        ripple_speed=s.side * s.u(0.05, 0.12), ripple_wavelength=max(3.0, radius * s.u(0.4, 0.9)),
        pulse_hz=s.u(0.8, 1.6), pulse_depth=s.u(0.3, 1.0),
        colour=tuple(round(c, 4) for c in colour),  # type: ignore[arg-type]
        old_colour=(s.u(0.3, 0.45), s.u(0.02, 0.05), s.u(0.03, 0.06)),
        darken_s=s.u(2.0, 6.0), irregularity=s.u(0.1, 0.35),
        size_class="small" if size_frac < s.ranges.small_event_size else "large")


def _with_form(s: _Sampler, ev: SynthBleed, form: str, zoom: float) -> SynthBleed:
    """``ev`` reshaped into ``form`` (see :data:`BLEEDING_FORMS`)."""
    duration_s = (ev.end_frame - ev.start_frame) / s.fps
    if form == "stream":
        r = ev.max_radius * 0.45
        length = ev.max_radius * s.u(3.0, 6.0)
        return dataclasses.replace(
            ev, form=form, max_radius=round(r, 3), initial_radius=round(max(1.2, 0.4 * r), 3),
            streak_length=length, streak_width=max(1.2, r * s.u(0.5, 0.9)),
            flow_speed=length / (duration_s * s.u(0.2, 0.5)))
    if form == "tiny":
        r = s.side * zoom * s.u(0.012, 0.03)
        length = r * s.u(0.5, 2.5)
        return dataclasses.replace(
            ev, form=form, max_radius=round(r, 3), initial_radius=round(max(1.0, 0.3 * r), 3),
            streak_length=length, streak_width=max(1.0, 0.4 * r),
            flow_speed=length / (duration_s * s.u(0.3, 0.8)), meander=0.1 * r,
            ripple_wavelength=max(2.0, r * 0.8), size_class="small")
    if form == "spurt":
        return dataclasses.replace(ev, form=form, pulse_hz=s.u(1.0, 1.8),
                                   pulse_depth=s.u(0.8, 1.0),
                                   streak_length=ev.streak_length * s.u(1.2, 2.0))
    return dataclasses.replace(ev, form=form)


def _randomise(s: _Sampler, scene: SceneParams, world_at, screen_of) -> SceneParams:
    """Apply the domain randomisation of ``s.ranges`` (its own generator: the first presets,
    which enable none of it, keep exactly the scenes they always had)."""
    r, rng = s.ranges, s.rng
    zoom = scene.camera.zoom_base
    events = list(scene.events)
    if r.bleeding_free_probability and rng.random() < r.bleeding_free_probability:
        events = []
    instruments = list(scene.instruments)
    if r.forms != ("ooze",):
        for i, ev in enumerate(events):
            form = r.forms[int(rng.integers(len(r.forms)))]
            events[i] = _with_form(s, ev, form, zoom)
            if form == "occluded":  # an instrument parked over the source
                mid = (ev.start_frame + ev.end_frame) // 2
                qx, qy = screen_of(mid, ev.source)
                tip = (0.5 + qx / s.width, 0.5 + qy / s.height)
                a = s.u(-0.35 * math.pi, 1.35 * math.pi)
                back = 0.05  # the jaws lie just past the tip, over the source
                instruments.append(Instrument(
                    entry_angle=a, tip_home=(tip[0] + back * math.cos(a),
                                             tip[1] + back * math.sin(a)),
                    tip_amplitude=(s.u(0.0, 0.02), s.u(0.0, 0.02)),
                    tip_hz=(s.u(0.02, 0.08), s.u(0.02, 0.08)),
                    tip_phases=(s.u(0, 2 * math.pi), s.u(0, 2 * math.pi)),
                    width_frac=s.u(0.06, 0.1), tone=s.u(0.5, 0.8),
                    dark_shaft=bool(rng.random() < 0.5), jaw_length_frac=s.u(0.08, 0.12),
                    jaw_hz=s.u(0.05, 0.2), wobble=s.u(0.0, 0.05)))
    if r.sustained:
        events = [_sustain(s, ev) for ev in events]
    palette = scene.palette
    if r.palette_jitter or r.hue_shift_deg != (0.0, 0.0) or r.saturation_scale != (1.0, 1.0):
        hue = s.u(*r.hue_shift_deg) / 360.0
        sat = s.u(*r.saturation_scale)

        def shift(rgb: RGB, tissue: bool = True) -> RGB:
            h, l_, sa = colorsys.rgb_to_hls(*rgb)
            if tissue:
                h, sa = (h + hue) % 1.0, min(1.0, sa * sat)
            out = np.clip(np.asarray(colorsys.hls_to_rgb(h, l_, sa))
                          + rng.uniform(-r.palette_jitter, r.palette_jitter, 3), 0.0, 1.0)
            return tuple(round(float(v), 4) for v in out)  # type: ignore[return-value]

        palette = Palette(palette.name, shift(palette.tissue_light), shift(palette.tissue_dark),
                          shift(palette.fat), shift(palette.vessel, False),
                          shift(palette.red_patch, False))
    still = []
    n = scene.n_frames
    for _ in range(int(rng.integers(r.still_blood[0], r.still_blood[1] + 1))):
        kind = r.still_kinds[int(rng.integers(len(r.still_kinds)))]
        seen = int(rng.integers(n))
        look = _draw_event(s, 0, n, r.event_size,
                           lambda seen=seen: world_at(seen, s.u(0.15, 0.85), s.u(0.15, 0.85)),
                           zoom)
        form = r.forms[int(rng.integers(len(r.forms)))]
        look = _with_form(s, look, "ooze" if form == "occluded" else form, zoom)
        frozen = _frozen(s, look)
        if kind == "suction":
            start = int(rng.integers(0, max(1, n - 1)))
            frozen = dataclasses.replace(frozen, kind=kind, vanish_frame=start,
                                         vanish_s=s.u(1.0, 4.0))
        still.append(frozen)
    scene = dataclasses.replace(
        scene, events=tuple(events), instruments=tuple(instruments), palette=palette,
        still=tuple(still), look=sample_look(rng, r.look) if r.look is not None else None)
    if r.distractors[1] == 0:
        return scene
    # Their own stream, so that adding them leaves everything above as it was.
    s3 = _Sampler(np.random.default_rng([scene.seed, 13]), s.width, s.height, s.fps, n, r)
    return _sample_distractors(s3, scene, world_at)


def _sustain(s: _Sampler, ev: SynthBleed, duration_s: float | None = None) -> SynthBleed:
    """``ev`` with ``"sustained"`` dynamics: the pool and the streak grow until the event ends,
    and the flow texture (ripples, glints) is coarse enough to survive scaling and compression
    (wavelength ≥ 5 world pixels) and travels 2–3.5 wavelengths a second, so that frames a
    tenth of a second apart differ by about a quarter of a wavelength without aliasing.
    ``duration_s`` is the active period it grows over (default: the event's own)."""
    if duration_s is None:
        duration_s = max((ev.end_frame - ev.start_frame) / s.fps, 0.5)
    lam = max(5.0, ev.max_radius * s.u(0.5, 1.0))
    return dataclasses.replace(
        ev, dynamics="sustained", growth_tau_s=round(duration_s * s.u(0.8, 1.3), 4),
        flow_speed=ev.streak_length / (duration_s * s.u(0.6, 1.0)),
        ripple_wavelength=round(lam, 3), ripple_speed=round(lam * s.u(2.0, 3.5), 3))


def _frozen(s: _Sampler, look: SynthBleed) -> StillBlood:
    """``look`` held at one instant of its own growth (independent of the video's length).

    With ``ranges.sustained`` the look has the sustained texture and is held anywhere in its
    growth, as an active bleeding is seen at any point of its active period."""
    if s.ranges.sustained:  # an active period of 2-12 s, seen at any point of it
        period = s.u(2.0, 12.0)
        return StillBlood("fresh_still", _sustain(s, look, period), period * s.u(0.05, 1.0))
    tau = s.u(1.5, 5.0)
    look = dataclasses.replace(look, growth_tau_s=tau,
                               flow_speed=look.streak_length / (tau * s.u(1.0, 2.0)))
    return StillBlood("fresh_still", look, tau * s.u(0.6, 2.5))


def _sample_distractors(s: _Sampler, scene: SceneParams, world_at) -> SceneParams:
    """Add ``ranges.distractors`` distractors of ``ranges.distractor_kinds`` to ``scene``."""
    r, rng, n = s.ranges, s.rng, scene.n_frames
    zoom = scene.camera.zoom_base
    gauze: list[Gauze] = []
    irrigation: list[Irrigation] = []
    lens: list[LensBlood] = []
    instruments = list(scene.instruments)
    for _ in range(int(rng.integers(r.distractors[0], r.distractors[1] + 1))):
        kind = r.distractor_kinds[int(rng.integers(len(r.distractor_kinds)))]
        if kind == "gauze":
            centre = world_at(int(rng.integers(n)), s.u(0.2, 0.8), s.u(0.2, 0.8))
            half = (s.side * zoom * s.u(0.08, 0.16), s.side * zoom * s.u(0.06, 0.12))
            angle = s.u(0.0, math.pi)
            ox, oy = s.u(-0.3, 0.3) * half[0], s.u(-0.3, 0.3) * half[1]
            source = (round(centre[0] + ox * math.cos(angle) - oy * math.sin(angle), 3),
                      round(centre[1] + ox * math.sin(angle) + oy * math.cos(angle), 3))
            m = min(half) / (s.side * zoom)  # the stain covers much of the swab
            stain = _draw_event(s, 0, n, (0.5 * m, 0.9 * m), lambda source=source: source, zoom)
            gauze.append(Gauze(centre=centre, half_size=half, angle=angle,
                               weave_px=zoom * s.u(2.5, 4.5),
                               tone=(s.u(0.86, 0.96), s.u(0.84, 0.94), s.u(0.80, 0.92)),
                               stain=_frozen(s, stain)))
        elif kind == "stained_tip":
            free = [i for i, x in enumerate(instruments) if x.stain is None]
            if not free:
                continue
            i = free[int(rng.integers(len(free)))]
            inst = instruments[i]
            half = inst.width_frac * s.side / 2.0
            # Instrument-local pixels: (distance ahead of the tip, offset across the shaft).
            source = (inst.jaw_length_frac * s.side * s.u(0.1, 0.7), half * s.u(-0.4, 0.4))
            frac = half * s.u(0.6, 1.4) / s.side
            stain = _draw_event(s, 0, n, (frac, frac), lambda source=source: source, 1.0)
            instruments[i] = dataclasses.replace(inst, stain=_frozen(s, stain))
        elif kind == "irrigation":
            dur = max(2, round(s.u(2.0, 8.0) * s.fps))
            start = int(rng.integers(0, max(1, n - dur // 2)))
            length = s.side * zoom * s.u(0.3, 0.8)
            irrigation.append(Irrigation(
                start_frame=start, end_frame=min(n, start + dur),
                source=world_at(start, s.u(0.2, 0.8), s.u(0.1, 0.45)),
                flow_angle=math.pi / 2 + s.u(-0.8, 0.8), width=s.side * zoom * s.u(0.02, 0.06),
                length=length, speed=length / s.u(0.5, 1.5),
                tint=(s.u(0.92, 1.0), s.u(0.8, 0.95), s.u(0.8, 0.95)), opacity=s.u(0.15, 0.35),
                ripple_wavelength=s.side * zoom * s.u(0.02, 0.05),
                ripple_speed=s.side * zoom * s.u(0.1, 0.3)))
        else:  # lens_blood
            rx = s.side * s.u(0.04, 0.14)
            lens.append(LensBlood(
                centre=(s.u(0.15, 0.85), s.u(0.15, 0.85)), radii=(rx, rx * s.u(0.4, 1.0)),
                angle=s.u(0.0, math.pi),
                colour=(s.u(0.45, 0.75), s.u(0.02, 0.08), s.u(0.03, 0.09)),
                opacity=s.u(0.55, 0.9), blur_px=s.side * s.u(0.01, 0.03),
                irregularity=s.u(0.1, 0.4)))
    return dataclasses.replace(scene, instruments=tuple(instruments), gauze=tuple(gauze),
                               irrigation=tuple(irrigation), lens_blood=tuple(lens))


def _visible_source(s: _Sampler, world_at, screen_of, start: int, end: int,
                    ) -> tuple[float, float]:
    """A source point that stays inside the view for the whole event (best of 12 tries).

    Candidates are points of the central 70 % of the view at the middle frame; each is scored
    by its smallest distance to the view border (in view fractions) over 8 frames of the event.
    """
    frames = np.linspace(start, max(start, end - 1), 8).round().astype(int)
    best, best_margin = (0.0, 0.0), -math.inf
    for _ in range(12):
        cand = world_at((start + end) // 2, s.u(0.15, 0.85), s.u(0.15, 0.85))
        margin = math.inf
        for f in frames:
            qx, qy = screen_of(int(f), cand)
            margin = min(margin, 0.5 - abs(qx) / s.width, 0.5 - abs(qy) / s.height)
        if margin > best_margin:
            best, best_margin = cand, margin
        if margin > 0.15:
            break
    return best
