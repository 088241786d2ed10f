"""A second renderer, written apart from ``amagi synth``: does a model find active bleeding
in video drawn by code it has never seen?

Every model of this project trained and was judged on ``amagi synth``'s video, its held-out
looks included: other palettes and field stops, but the same drawing code (its textures,
its blood model, its camera). This renderer shares none of that code. It draws, with torch
and numpy only, at 640 × 512 by default (four times the model's scale):

- tissue of a continuous random hue, lit by one spot with a falloff, fat and vessels from
  band-limited noise, wet glints, seen through a **round** endoscope field stop;
- **still blood that never flows**: 1-3 pools per case and, in every case, the blood each
  bleeding leaves when it stops. They have exactly the bleeding's colour and texture model
  and move only with the camera;
- **active bleeding** in four forms, each growing while it lasts and carrying a texture that
  moves with the blood: ``ooze`` (a pool welling from a point, texture expanding
  outwards), ``stream`` (a small pool with a rivulet running away from it, texture
  travelling along it), ``spurt`` (a pool pulsing at 1-1.6 Hz) and ``tiny`` (an ooze of at
  most 3 px radius at the model's scale);
- a camera that drifts, rotates and zooms a little, one or two instruments that move on
  their own, white balance, vignette and sensor noise per case;
- H.264 (CRF 23) at 30 fps.

Labels are the bleeding's active periods ``[start, end)``. Bleeding-free cases hold the same
still blood (more pools, and blood left by a bleeding before the video starts).

Each video goes through ``amagi process`` as a user runs it; the script prints per case and
pooled: events found at IoU 0.1 and 0.5, event F1@0.5, count and duration error (the
authors' surgical analysis index), false alarms (predicted events overlapping no true
event) and the highest fused probability on the bleeding-free cases.

Run: ``python scripts/model/other_renderer.py OUT [--cases 6] [--still-cases 3]
[--seconds 60] [--seed 0] [--size 640x512] [-- extra amagi process arguments]``
(e.g. ``-- --model-dir DIR`` for a candidate model folder). ``--render-only`` writes the
videos and ``truth.json`` without analysing them; ``--masks DIR`` also writes each case as
an ``amagi synth``-like folder (its video, active-bleeding masks once a second,
``labels.json``) for ``scripts/model/probe_at_source.py DIR``. ``--drawing NAME=VALUE,...``
moves one factor of the blood's drawing towards ``amagi synth``'s (:class:`Drawing`), for an
ablation of what a model misses here.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amagi_plugin.evaluation.metrics import auroc, event_counts, false_alarms, index_errors
from dicom_io.encode import encode_video

FORMS = ("ooze", "stream", "spurt", "tiny")
FPS = 30.0
MARGIN = 1.35  # the canvas is this much larger than the view, room for the camera


def noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, ...] = (4, 8, 16, 32),
          decay: float = 0.6) -> torch.Tensor:
    """Band-limited noise ``(h, w)``, zero mean, unit standard deviation: random grids of
    ``cells`` points across the width, upsampled bicubically, weighted ``decay`` per octave."""
    out = torch.zeros(1, 1, h, w)
    for k, cw in enumerate(cells):
        ch = max(2, round(cw * h / w))
        grid = torch.from_numpy(rng.standard_normal((1, 1, ch + 3, cw + 3))).float()
        up = F.interpolate(grid, size=(h * (ch + 3) // ch, w * (cw + 3) // cw), mode="bicubic",
                           align_corners=False)
        out += decay ** k * up[..., :h, :w]
    out = out[0, 0]
    return (out - out.mean()) / out.std().clamp_min(1e-6)


def hsv(h: float, s: float, v: float) -> torch.Tensor:
    """An RGB colour in [0, 1] from hue (degrees), saturation and value."""
    c = v * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return torch.tensor([r + v - c, g + v - c, b + v - c])


@dataclass(frozen=True)
class Drawing:
    """How this renderer draws its blood, active and still alike; the defaults are its own.
    Each field moves one factor towards ``amagi synth``'s blood, so that an ablation can ask
    which difference makes a model miss this renderer's bleeding (``--drawing
    NAME=VALUE,...``; ``models/weights/demo/heldout-looks/README.md``, session 50)."""

    growth: str = "sqrt"  # the pool's radius over its active period: sqrt (area ∝ time) or linear
    rim: str = "hard"  # the pool's edge: hard (1.5 px) or soft (a fifth of its radius)
    texture_gain: float = 0.16  # the texture's brightness per unit of its noise (std 1)
    glints: bool = True  # hard-edged glints where the texture peaks
    texture_speed: float = 1.0  # the texture's travel, a multiple of each bleed's own speed
    pulse: str = "spurt"  # which bleeding beats with the heart: spurts only, or all forms

    def __post_init__(self) -> None:
        for name, allowed in (("growth", ("sqrt", "linear")), ("rim", ("hard", "soft")),
                              ("pulse", ("spurt", "all"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"drawing {name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.texture_gain < 0 or self.texture_speed < 0:
            raise ValueError("drawing texture_gain and texture_speed must be >= 0")

    @classmethod
    def parse(cls, text: str) -> Drawing:
        """``NAME=VALUE,...`` (e.g. ``pulse=all,texture_speed=0``)."""
        values: dict[str, object] = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for item in filter(None, (x.strip() for x in text.split(","))):
            name, eq, value = item.partition("=")
            if not eq or name not in types:
                raise ValueError(f"drawing: expected NAME=VALUE with NAME one of "
                                 f"{', '.join(types)}, got {item!r}")
            kind = types[name]
            if kind == "bool":
                if value not in ("0", "1", "true", "false"):
                    raise ValueError(f"drawing {name} must be 0 or 1, got {value!r}")
                values[name] = value in ("1", "true")
            elif kind == "float":
                try:
                    values[name] = float(value)
                except ValueError as e:
                    raise ValueError(f"drawing {name} must be a number, got {value!r}") from e
            else:
                values[name] = value
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class Bleed:
    """One active bleeding on the canvas: where, how, when (seconds)."""

    form: str
    start: float
    end: float
    cx: float
    cy: float
    radius: float  # final radius of the pool, canvas pixels
    angle: float  # the stream's direction
    length: float  # the stream's final length
    width: float  # the stream's half width
    speed: float  # texture travel, pixels a second
    pulse_hz: float
    texture: torch.Tensor = field(repr=False)  # its own noise, for boundary and flow
    drawing: Drawing = field(default_factory=Drawing)

    def alpha_and_shade(self, ys: torch.Tensor, xs: torch.Tensor, t: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Coverage in [0, 1] and a brightness factor at canvas points ``(ys, xs)`` at time
        ``t`` (frozen at ``end`` afterwards: what a bleeding leaves is still)."""
        d = self.drawing
        tau = min(max(t - self.start, 0.0), self.end - self.start)
        frac = (tau + 0.3) / (self.end - self.start + 0.3)
        dx, dy = xs - self.cx, ys - self.cy
        th = self.texture.shape[0]
        pulse = 1.0
        beat = math.sin(2 * math.pi * self.pulse_hz * tau)
        beating = self.start <= t < self.end and d.pulse == "all" and self.form != "spurt"
        if self.form == "spurt":
            pulse = 1 + 0.18 * beat
        elif beating:  # a gentler beat, as amagi synth's ooze: the pool swells a little
            pulse = 1 + 0.06 * beat
        radius = self.radius * (math.sqrt(frac) if d.growth == "sqrt" else frac) * pulse
        # the boundary wobbles with the bleed's own noise, fixed to the canvas
        iy = ((ys - self.cy) * 0.5 + th / 2).long().clamp(0, th - 1)
        ix = ((xs - self.cx) * 0.5 + th / 2).long().clamp(0, th - 1)
        wobble = 0.22 * self.texture[iy, ix]
        rho = torch.sqrt(dx * dx + dy * dy)
        if d.rim == "hard":
            pool = ((1 + wobble) - rho / max(radius, 0.5)).mul(radius / 1.5).clamp(0, 1)
        else:  # a translucent rim a fifth of the radius wide
            soft = max(1.5, 0.2 * radius)
            pool = (((1 + wobble) * radius - rho) / soft + 0.5).clamp(0, 1)
        alpha = pool
        ux, uy = math.cos(self.angle), math.sin(self.angle)
        along, across = dx * ux + dy * uy, -dx * uy + dy * ux
        if self.form == "stream":
            reach = self.length * min(1.0, frac * 1.15)
            half = self.width * (1 + 0.35 * torch.sin(along / 9.0)) * (1 - 0.4 * along / max(
                self.length, 1.0)).clamp(0.3, 1)
            body = ((half - across.abs()).clamp(0, 1.5) / 1.5) * ((reach - along).clamp(0, 2) / 2)
            body = body * (along > -2)
            alpha = torch.maximum(alpha, body)
        # flowing texture: sampled where the blood was `tau` seconds ago
        speed = self.speed * d.texture_speed
        if self.form == "stream":
            sx, sy = along - speed * tau, across
        else:  # welling: rings of texture travel outwards from the source
            sx, sy = torch.atan2(dy, dx) * (th / (2 * math.pi)) * 2, rho - speed * tau
        jy = (sy * 0.5 + th / 2).long() % th
        jx = (sx * 0.5 + th / 2).long() % th
        flow = self.texture.flip(0)[jy, jx]
        # glints where the texture peaks: they move with it, and stop when ``tau`` does
        shade = 1 + d.texture_gain * flow
        if d.glints:
            shade = shade + 0.5 * (flow > 1.9)
        if beating:  # and brightens near its source with each beat
            near = torch.exp(-rho / max(0.5 * radius, 1.0))
            shade = shade * (1 + 0.15 * (1 + beat) * near)
        return alpha, shade


@dataclass
class Case:
    """Everything one case needs to be drawn, from its seed."""

    name: str
    seconds: float
    size: tuple[int, int]  # (width, height) of the video
    bleeds: list[Bleed]
    canvas: torch.Tensor  # (3, H, W) tissue and still pools, in [0, 1]
    blood: torch.Tensor  # the blood colour (3,)
    gains: torch.Tensor  # white balance (3,)
    sigma: float  # sensor noise, in 0-255 units
    stop: float  # the field stop's radius, a fraction of the height
    tools: list[tuple[float, float, float, float]]  # entry angle, depth, phase, width
    motion: tuple[float, ...]  # camera drift amplitudes and periods
    rng_seed: int

    def truth(self) -> list[tuple[float, float]]:
        return [(b.start, b.end) for b in self.bleeds]


def _schedule(rng: np.random.Generator, seconds: float) -> list[tuple[float, float]]:
    """3-4 active periods of 4-10 s (fewer where the video is too short), at least 5 s
    apart, none in the first 3 s."""
    n = int(rng.integers(3, 5))
    lengths = rng.uniform(4, 10, n)
    while n and seconds - 3 - lengths[:n].sum() - 5 * n < 0:
        n -= 1
    if not n:
        raise ValueError(f"no bleeding of 4-10 s fits in {seconds} s after 3 s")
    lengths = lengths[:n]
    room = seconds - 3 - lengths.sum() - 5 * n
    slack = np.diff(np.sort(rng.uniform(0, room, n)), prepend=0.0)  # spare time before each
    out, t = [], 3.0
    for k in range(n):
        start = t + slack[k]
        out.append((float(start), float(start + lengths[k])))
        t = start + lengths[k] + 5
    return out


def make_case(name: str, seed: int, seconds: float, size: tuple[int, int],
              bleeding: bool, drawing: Drawing = Drawing()) -> Case:
    """Draw one case's scene from ``seed`` (deterministic); its blood drawn as ``drawing``
    says (the scene itself does not depend on it)."""
    rng = np.random.default_rng(seed)
    w, h = size
    cw, ch = int(w * MARGIN), int(h * MARGIN)
    scale = w / 160  # render pixels per model pixel
    # tissue: a continuous hue from pink to orange-brown, two tones mixed by noise
    hue = float(rng.uniform(345, 385)) % 360
    base = hsv(hue, float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.55, 0.85)))
    other = hsv((hue + float(rng.uniform(-12, 18))) % 360, float(rng.uniform(0.3, 0.7)),
                float(rng.uniform(0.45, 0.8)))
    mix = torch.sigmoid(1.5 * noise(rng, ch, cw, (3, 6, 12, 24)))
    tissue = base[:, None, None] * mix + other[:, None, None] * (1 - mix)
    tissue = tissue * (1 + 0.08 * noise(rng, ch, cw, (24, 48, 96), 0.7))
    fat = torch.sigmoid(4 * (noise(rng, ch, cw, (3, 6, 12)) - float(rng.uniform(0.8, 1.6))))
    tissue = tissue * (1 - fat) + hsv(float(rng.uniform(40, 55)), 0.5, 0.9)[:, None, None] * fat
    vessel = torch.exp(-(noise(rng, ch, cw, (6, 12, 24)) / 0.06) ** 2) * float(rng.uniform(.3, .7))
    tissue = tissue * (1 - vessel) + torch.tensor([0.45, 0.05, 0.08])[:, None, None] * vessel
    glint = (noise(rng, ch, cw, (40, 80, 160), 0.8) > 2.6).float()
    glint = F.avg_pool2d(glint[None, None], 3, 1, 1)[0, 0].clamp(0, 1)
    tissue = tissue * (1 - glint) + glint
    # the blood: one colour model for active and still blood alike
    blood = hsv(float(rng.uniform(352, 362)) % 360, float(rng.uniform(0.82, 0.95)),
                float(rng.uniform(0.45, 0.75)))
    canvas = tissue.clamp(0, 1)
    ys, xs = torch.meshgrid(torch.arange(ch).float(), torch.arange(cw).float(), indexing="ij")
    bleeds: list[Bleed] = []

    def a_bleed(form: str, start: float, end: float) -> Bleed:
        tiny = form == "tiny"
        radius = float(rng.uniform(0.8, 2.5) if tiny else rng.uniform(3, 14)) * scale
        return Bleed(form, start, end, float(rng.uniform(0.3, 0.7) * cw),
                     float(rng.uniform(0.3, 0.7) * ch), radius, float(rng.uniform(0, 2 * math.pi)),
                     float(rng.uniform(12, 35) * scale), float(rng.uniform(1.0, 2.5) * scale),
                     float(rng.uniform(6, 16) * scale), float(rng.uniform(1.0, 1.6)),
                     noise(rng, 256, 256, (8, 16, 32, 64), 0.7), drawing)

    pools = int(rng.integers(1, 4)) + (0 if bleeding else 2)
    for _ in range(pools):  # still pools: a bleed's look, frozen from the start
        b = a_bleed(str(rng.choice(["ooze", "stream"])), -20.0, -10.0)
        b.radius *= float(rng.uniform(1.0, 2.0))
        alpha, shade = b.alpha_and_shade(ys, xs, 0.0)
        canvas = canvas * (1 - alpha) + (blood[:, None, None] * shade) * alpha
    if bleeding:
        for start, end in _schedule(rng, seconds):
            bleeds.append(a_bleed(FORMS[len(bleeds) % len(FORMS)] if rng.uniform() < 0.5 else
                                  str(rng.choice(FORMS)), start, end))
    tools = [(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.25, 0.55)),
              float(rng.uniform(0, 10)), float(rng.uniform(0.05, 0.09)))
             for _ in range(int(rng.integers(1, 3)))]
    motion = tuple(float(v) for v in (rng.uniform(0.02, 0.07), rng.uniform(5, 14),
                                      rng.uniform(0.02, 0.07), rng.uniform(6, 17),
                                      rng.uniform(0.0, 0.06), rng.uniform(0.01, 0.06)))
    return Case(name, seconds, size, bleeds, canvas.clamp(0, 1), blood,
                torch.tensor(rng.uniform(0.85, 1.15, 3)).float(), float(rng.uniform(1.5, 4.5)),
                float(rng.uniform(0.48, 0.62)), tools, motion, seed)


def _view_grid(case: Case, t: float) -> torch.Tensor:
    """Where each pixel of the view at time ``t`` reads the canvas (``F.grid_sample``'s grid,
    ``(1, h, w, 2)``): the camera's drift, slow turn and zoom, inside the canvas."""
    w, h = case.size
    ax, px, ay, py, zoom, turn = case.motion
    s = (1 / MARGIN) * (1 - zoom * (0.5 + 0.5 * math.sin(2 * math.pi * t / 11.0)))
    rot = turn * math.sin(2 * math.pi * t / 13.0)
    ox = ax * math.sin(2 * math.pi * t / px) + 0.5 * ax * math.sin(2 * math.pi * t / 2.7)
    oy = ay * math.sin(2 * math.pi * t / py + 1.0)
    theta = torch.tensor([[[s * math.cos(rot), -s * math.sin(rot) * h / w, ox],
                           [s * math.sin(rot) * w / h, s * math.cos(rot), oy]]])
    return F.affine_grid(theta, [1, 3, h, w], align_corners=False)


def _view_axes(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The view's coordinates in [-1, 1] (``yy``, ``xx``) and each pixel's distance ``r``
    from the centre in units of the half height (the field stop and the light fall off
    with it)."""
    w, h = case.size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return yy, xx, torch.sqrt((xx * w / h) ** 2 + yy ** 2)


def _tools_at(case: Case, t: float, yy: torch.Tensor, xx: torch.Tensor
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each instrument's coverage in the view at time ``t`` and its metal's brightness."""
    h = case.size[1]
    out = []
    for ang, depth, phase, width in case.tools:  # metal shafts from the edge
        d = depth + 0.12 * math.sin(2 * math.pi * (t + phase) / 7.0)
        a = ang + 0.15 * math.sin(2 * math.pi * (t + phase) / 9.0)
        ux, uy = math.cos(a), math.sin(a)
        along = -(xx * ux + yy * uy) + 1.4  # from the edge at angle a inwards
        across = (-xx * uy + yy * ux).abs()
        body = ((width - across) * h / 2).clamp(0, 1) * ((d * 2 - along) * h / 2).clamp(0, 1)
        out.append((body, 0.55 + 0.3 * (1 - across / width).clamp(0, 1)))
    return out


def _field_stop(case: Case, r: torch.Tensor) -> torch.Tensor:
    """The round, soft-edged field stop's transmission in the view."""
    return ((case.stop * 2 - r) * case.size[1] / 3).clamp(0, 1)


def _bleed_patch(b: Bleed, t: float, ch: int, cw: int
                 ) -> tuple[tuple[int, int, int, int], torch.Tensor, torch.Tensor]:
    """The canvas window ``(y0, y1, x0, x1)`` that bleed ``b`` can cover, and its coverage
    and shade there at time ``t``."""
    reach = b.radius * 1.3 + (b.length if b.form == "stream" else 0) + 4
    y0, y1 = max(0, int(b.cy - reach)), min(ch, int(b.cy + reach) + 1)
    x0, x1 = max(0, int(b.cx - reach)), min(cw, int(b.cx + reach) + 1)
    ys, xs = torch.meshgrid(torch.arange(y0, y1).float(), torch.arange(x0, x1).float(),
                            indexing="ij")
    alpha, shade = b.alpha_and_shade(ys, xs, t)
    return (y0, y1, x0, x1), alpha, shade


def render(case: Case) -> Iterator[np.ndarray]:
    """The case's frames, uint8 RGB ``(h, w, 3)``, in order."""
    w, h = case.size
    cw, ch = case.canvas.shape[2], case.canvas.shape[1]
    rng = np.random.default_rng(case.rng_seed + 1)
    yy, xx, r = _view_axes(case)
    field_stop = _field_stop(case, r)
    canvas = case.canvas.clone()
    settled: set[int] = set()
    for k in range(round(case.seconds * FPS)):
        t = k / FPS
        frame = canvas.clone()
        for i, b in enumerate(case.bleeds):
            if t < b.start:
                continue
            (y0, y1, x0, x1), alpha, shade = _bleed_patch(b, t, ch, cw)
            patch = frame[:, y0:y1, x0:x1]
            patch = patch * (1 - alpha) + (case.blood[:, None, None] * shade) * alpha
            if t >= b.end and i not in settled:  # what it leaves stays, still
                canvas[:, y0:y1, x0:x1] = patch
                settled.add(i)
            frame[:, y0:y1, x0:x1] = patch
        view = F.grid_sample(frame[None], _view_grid(case, t), mode="bilinear",
                             padding_mode="border", align_corners=False)[0]
        for body, metal in _tools_at(case, t, yy, xx):
            view = view * (1 - body) + metal * body
        light = 1 - 0.45 * r ** 2
        out = view * case.gains[:, None, None] * light * field_stop
        out = out * 255 + torch.from_numpy(rng.normal(0, case.sigma, (3, h, w))).float()
        yield out.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def active_mask(case: Case, k: int) -> np.ndarray:
    """Where frame ``k`` shows active bleeding: ``bool (h, w)``, the coverage (over 0.5) of
    every bleeding under way at its time, seen through the same camera, field stop and
    instruments as :func:`render` draws it (the blood a bleeding left is not active)."""
    w, h = case.size
    cw, ch = case.canvas.shape[2], case.canvas.shape[1]
    t = k / FPS
    cover = torch.zeros(1, ch, cw)
    for b in case.bleeds:
        if b.start <= t < b.end:
            (y0, y1, x0, x1), alpha, _shade = _bleed_patch(b, t, ch, cw)
            cover[0, y0:y1, x0:x1] = torch.maximum(cover[0, y0:y1, x0:x1], alpha)
    if not cover.any():
        return np.zeros((h, w), bool)
    yy, xx, r = _view_axes(case)
    view = F.grid_sample(cover[None], _view_grid(case, t), mode="bilinear",
                         padding_mode="border", align_corners=False)[0, 0]
    for body, _metal in _tools_at(case, t, yy, xx):
        view = view * (1 - body)
    return (view * _field_stop(case, r) > 0.5).numpy()


def write_case_set(case: Case, video: Path, root: Path, every_s: float = 1.0) -> Path:
    """``root/NAME``: ``case``'s video (a link to ``video``), its active-bleeding masks every
    ``every_s`` seconds as PNG and a ``labels.json`` listing them, laid out as ``amagi
    synth``'s cases are for ``scripts/model/probe_at_source.py``."""
    from PIL import Image

    folder = root / case.name
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    link = folder / "video.mp4"
    if not link.exists():
        link.symlink_to(video.resolve())
    step = max(1, round(every_s * FPS))
    masks = []
    for k in range(0, round(case.seconds * FPS), step):
        name = f"masks/{k:06d}.png"
        Image.fromarray(active_mask(case, k).astype(np.uint8) * 255).save(folder / name)
        masks.append({"frame": k, "mask": name})
    (folder / "labels.json").write_text(json.dumps({
        "renderer": "scripts/model/other_renderer.py", "seed": case.rng_seed,
        "events": [{"start_s": b.start, "end_s": b.end, "start_frame": math.ceil(b.start * FPS),
                    "end_frame": math.ceil(b.end * FPS), "form": b.form} for b in case.bleeds],
        "masks": masks}, indent=1))
    return folder


def process(video: Path, out: Path, extra: list[str], reuse: bool = False
            ) -> tuple[dict, list[tuple[float, float]]]:
    """``amagi process``'s summary of ``video`` and its (time, fused probability) pairs
    (an earlier analysis in ``out`` is read again when ``reuse``)."""
    if not (reuse and (out / "summary.json").is_file()):
        subprocess.run([sys.executable, "-m", "amagi_plugin", "process", str(video), "-od",
                        str(out), "--no-progress", *extra], check=True)
    with open(out / "predictions.csv", newline="") as fh:
        trace = [(float(row["time_s"]), float(row["bleeding_probability"]))
                 for row in csv.DictReader(fh)]
    return json.loads((out / "summary.json").read_text()), trace


def frame_auroc(truth: dict[str, list[tuple[float, float]]],
                traces: dict[str, list[tuple[float, float]]]) -> float | None:
    """AUROC of the probabilities at every prediction instant of every case against
    whether the instant lies in a true event."""
    labels, scores = [], []
    for name, trace in traces.items():
        for t, p in trace:
            labels.append(int(any(s <= t < e for s, e in truth[name])))
            scores.append(p)
    return auroc(labels, scores)


def score(truth: dict[str, list[tuple[float, float]]], pred: dict[str, list[tuple[float, float]]],
          seconds: dict[str, float]) -> dict:
    """Pooled event figures of predicted against true events, per case and in all."""
    rows, n10, n50, counts, durs, alarms, free_h = [], None, None, [], [], 0, 0.0
    for name in sorted(truth):
        t, p = truth[name], pred[name]
        e10, e50 = event_counts(p, t, 0.1), event_counts(p, t, 0.5)
        n10 = e10 if n10 is None else n10 + e10
        n50 = e50 if n50 is None else n50 + e50
        ix = index_errors(p, t)
        fa = false_alarms(p, t, seconds[name])
        alarms += fa.count
        if t:
            counts.append(ix.count_error_rel)
            durs.append(ix.duration_error_rel)
        else:
            free_h += seconds[name] / 3600
        rows.append({"case": name, "true": len(t), "predicted": len(p), "found_iou_0.1": e10.tp,
                     "found_iou_0.5": e50.tp, "false_alarms": fa.count,
                     "true_s": round(ix.true_duration_s, 2),
                     "predicted_s": round(ix.pred_duration_s, 2)})
    free_alarms = sum(r["predicted"] for r in rows if not r["true"])
    return {"cases": rows, "found_iou_0.1": n10.tp, "found_iou_0.5": n50.tp,
            "true_events": n10.n_true, "predicted_events": n10.n_pred, "f1_iou_0.5": n50.f1,
            "f1_iou_0.1": n10.f1,
            "count_error": float(np.mean(counts)) if counts else None,
            "duration_error": float(np.mean(durs)) if durs else None,
            "false_alarms": alarms, "bleeding_free_alarms": free_alarms,
            "bleeding_free_minutes": round(free_h * 60, 2)}


def _drawing(text: str) -> Drawing:
    try:
        return Drawing.parse(text)
    except ValueError as e:  # argparse shows this message, not its own
        raise argparse.ArgumentTypeError(str(e)) from e


def parse(argv: list[str]) -> argparse.Namespace:
    """The script's own arguments, and everything after ``--`` as ``extra``."""
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="after --: more amagi process arguments")
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", type=int, default=6, help="cases with bleeding")
    ap.add_argument("--still-cases", type=int, default=3, help="bleeding-free cases")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="640x512", help="WIDTHxHEIGHT")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--masks", type=Path, metavar="DIR",
                    help="also write each case as an amagi synth-like folder under DIR: its "
                    "video, active-bleeding masks once a second and labels.json (for "
                    "scripts/model/probe_at_source.py DIR)")
    ap.add_argument("--drawing", type=_drawing, default=Drawing(), metavar="NAME=VALUE,...",
                    help="draw the blood with one factor moved towards amagi synth's, for an "
                    "ablation: growth=linear, rim=soft, texture_gain=0.35, glints=0, "
                    "texture_speed=0, pulse=all (defaults: this renderer's own)")
    ap.add_argument("--reuse", action="store_true",
                    help="read analyses already in OUT again instead of rerunning them")
    args = ap.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]
    w, _, h = args.size.partition("x")
    args.size = (int(w), int(h))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = ([(f"bleed{k:02d}", True) for k in range(args.cases)]
             + [(f"still{k:02d}", False) for k in range(args.still_cases)])
    truth, pred, seconds, highest, forms, traces = {}, {}, {}, {}, {}, {}
    for k, (name, bleeding) in enumerate(names):
        case = make_case(name, args.seed * 1000 + k, args.seconds, args.size, bleeding,
                         args.drawing)
        video = args.out / f"{name}.mp4"
        if not video.exists():
            encode_video(render(case), video.with_suffix(".part.mp4"), FPS, crf=23)
            video.with_suffix(".part.mp4").rename(video)
        if args.masks:
            write_case_set(case, video, args.masks)
        truth[name], seconds[name] = case.truth(), args.seconds
        forms[name] = [b.form for b in case.bleeds]
        (args.out / "truth.json").write_text(json.dumps({"truth": truth, "forms": forms},
                                                        indent=1))
        if args.render_only:
            continue
        doc, traces[name] = process(video, args.out / name, args.extra, args.reuse)
        highest[name] = max(p for _t, p in traces[name])
        pred[name] = [(e["start_s"], e["end_s"]) for e in doc["events"]]
        print(name, truth[name], pred[name], f"highest {highest[name]:.2f}", flush=True)
    if args.render_only:
        return 0
    result = score(truth, pred, seconds)
    result["highest_probability"] = highest
    result["frame_auroc"] = frame_auroc(truth, traces)
    (args.out / "score.json").write_text(json.dumps(result, indent=1))
    print("\n| case | true | predicted | found (IoU 0.1) | found (IoU 0.5) | false alarms "
          "| true s | predicted s | highest p |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["cases"]:
        print(f"| {r['case']} | {r['true']} | {r['predicted']} | {r['found_iou_0.1']} | "
              f"{r['found_iou_0.5']} | {r['false_alarms']} | {r['true_s']} | "
              f"{r['predicted_s']} | {highest[r['case']]:.2f} |")
    print(f"\nfound {result['found_iou_0.1']} of {result['true_events']} (IoU 0.1), "
          f"{result['found_iou_0.5']} at IoU 0.5; event F1@0.5 {result['f1_iou_0.5']:.2f}; "
          f"count error {result['count_error']:.0%}, duration error "
          f"{result['duration_error']:.0%}; false alarms {result['false_alarms']} "
          f"({result['bleeding_free_alarms']} in {result['bleeding_free_minutes']} min "
          f"of bleeding-free video); frame AUROC {result['frame_auroc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
