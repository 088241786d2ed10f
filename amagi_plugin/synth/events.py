"""Dynamics and appearance of bleeding events (active, then residual).

An event is evaluated in world coordinates, so it sticks to the tissue under camera motion.
While **active** (``start_frame <= k < end_frame``) its pool grows (a saturating
exponential, or with ``"sustained"`` dynamics steadily until the event ends) and pulses with
the heart rate, a streak advances along ``flow_angle`` at ``flow_speed``, and ripples travel
outward in the pool and down the streak, with moving glints: the blood changes from frame to
frame. Once it **ends**, the elapsed time is frozen at the last active frame: the residual
keeps its final shape, stops flowing and pulsing, and darkens towards ``old_colour`` over
``darken_s`` seconds, then stays still. Residual blood is never part of
the active-bleeding mask.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from amagi_plugin.synth.scene import StillBlood, SynthBleed

#: Opacity at or above which a pixel belongs to the blood region (masks use the same cut).
MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class EventState:
    """The state of one event at one frame (times in seconds, sizes in world pixels)."""

    active: bool
    elapsed_s: float  # frozen at the last active frame once the event ended
    since_end_s: float  # 0 while active
    radius: float
    streak_length: float
    pulse: float  # 0-1 heart-beat phase value (0 once ended)


def event_state(ev: SynthBleed, frame: int, fps: float) -> EventState | None:
    """State of ``ev`` at ``frame``, or ``None`` before it starts."""
    if frame < ev.start_frame:
        return None
    active = frame < ev.end_frame
    last = frame if active else ev.end_frame - 1
    since_end = 0.0 if active else (frame - ev.end_frame + 1) / fps
    return _state_at(ev, (last - ev.start_frame) / fps, active, since_end)


def _state_at(ev: SynthBleed, elapsed: float, active: bool, since_end: float) -> EventState:
    """The state after ``elapsed`` seconds of bleeding (frozen there when not ``active``)."""
    if ev.dynamics == "sustained":  # the area grows steadily until the event ends
        grow = math.sqrt(min(1.0, elapsed / ev.growth_tau_s))
    else:
        grow = 1.0 - math.exp(-elapsed / ev.growth_tau_s)
    radius = ev.initial_radius + (ev.max_radius - ev.initial_radius) * grow
    pulse = 0.5 + 0.5 * math.sin(2.0 * math.pi * ev.pulse_hz * elapsed)
    spurt = ev.form == "spurt"
    if active:
        radius *= 1.0 + (0.25 if spurt else 0.12) * ev.pulse_depth * (pulse - 0.5)
    streak = min(ev.streak_length, ev.flow_speed * elapsed)
    if spurt and active:  # the jet lengthens with each beat and falls back between
        streak *= 0.5 + 0.5 * pulse
    return EventState(active, elapsed, since_end, radius, streak, pulse if active else 0.0)


def still_state(still: StillBlood, frame: int, fps: float) -> EventState | None:
    """State of a :class:`StillBlood` at ``frame`` (``None`` where it is not visible).

    The state is the one its blood would have after ``frozen_s`` seconds of active bleeding,
    marked active so that it is drawn with the fresh-blood look, but the same at every frame
    (no growth, flow, ripple travel or pulse); a suction one shrinks linearly to nothing.
    """
    ev = still.blood
    if not ev.start_frame <= frame < ev.end_frame:
        return None
    st = _state_at(ev, still.frozen_s, True, 0.0)  # one instant of bleeding, held
    if still.kind == "suction" and frame >= still.vanish_frame >= 0:
        left = 1.0 - (frame - still.vanish_frame) / fps / max(still.vanish_s, 1e-6)
        if left <= 0.05:
            return None
        st = dataclasses.replace(st, radius=st.radius * left,
                                 streak_length=st.streak_length * left)
    return st


def world_extent(ev: SynthBleed) -> tuple[float, float, float, float]:
    """World bounding box ``(x0, y0, x1, y1)`` any state of ``ev`` can cover."""
    pool = ev.max_radius * (1.0 + 0.12 * ev.pulse_depth) * 1.6 + 2.0
    reach = ev.streak_length + ev.streak_width * 1.6 + ev.meander + 2.0
    ex, ey = math.cos(ev.flow_angle) * reach, math.sin(ev.flow_angle) * reach
    sx, sy = ev.source
    return (min(sx - pool, sx + ex - pool), min(sy - pool, sy + ey - pool),
            max(sx + pool, sx + ex + pool), max(sy + pool, sy + ey + pool))


#: plane waves summed by the ``"advected"`` flow texture
_ADVECTED_WAVES = 6


def _advected(ev: SynthBleed, rho: np.ndarray, theta: np.ndarray, u: np.ndarray,
              v: np.ndarray, on_streak: np.ndarray, t: float, ripple_noise: np.ndarray
              ) -> np.ndarray:
    """The ``"advected"`` flow texture in [0, 1]: a sum of plane waves of random directions,
    wavelengths (0.5-2 × ``ripple_wavelength``) and phases (from ``ev.texture_seed``), read
    where the blood was ``t`` seconds ago: carried outwards from the source in the pool
    (radius minus 0.6 × ``ripple_speed`` × t; the angle through its cosine and sine, so the
    texture has no seam) and along the stream (``u`` minus ``ripple_speed`` × t). Irregular:
    no period a frame or a clip can show."""
    rng = np.random.default_rng([ev.texture_seed, 23])
    lam = ev.ripple_wavelength
    k = 2.0 * math.pi / (lam * np.exp(rng.uniform(math.log(0.5), math.log(2.0),
                                                  _ADVECTED_WAVES)))
    direction = rng.uniform(0.0, 2.0 * math.pi, _ADVECTED_WAVES)
    phase = rng.uniform(0.0, 2.0 * math.pi, _ADVECTED_WAVES)
    arc = 1.5 * lam  # the angular coordinate's length scale
    radial = rho - 0.6 * ev.ripple_speed * t
    along = u - ev.ripple_speed * t
    cos_t, sin_t = arc * np.cos(theta), 0.5 * arc * np.sin(theta)  # once, not once a wave
    total = np.zeros_like(rho)
    for kk, d, p in zip(k, direction, phase, strict=True):
        c, s = math.cos(d), math.sin(d)
        pool = kk * (c * radial + s * cos_t) + kk * s * sin_t
        streak = kk * (c * along + s * v)
        total += np.sin(np.where(on_streak, streak, pool) + p)
    total = total / math.sqrt(_ADVECTED_WAVES / 2.0) + 0.5 * ripple_noise
    return (0.5 + 0.5 * np.tanh(1.2 * total)).astype(np.float32)


def render_event(ev: SynthBleed, st: EventState, wx: np.ndarray, wy: np.ndarray,
                 irregular: np.ndarray, ripple_noise: np.ndarray, zoom: float,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Opacity and colour of ``ev`` in state ``st`` at world points ``(wx, wy)``.

    Parameters
    ----------
    wx, wy
        ``float32 (h, w)`` world coordinates of the pixels to evaluate.
    irregular, ripple_noise
        ``float32 (h, w)`` canvas noise fields sampled at the same points (std 1).
    zoom
        World pixels per screen pixel (keeps edges about one screen pixel wide).

    Returns
    -------
    alpha, rgb
        ``float32 (h, w)`` opacity 0–1 and ``float32 (h, w, 3)`` colour 0–1.
    """
    edge = max(zoom, 0.5)
    dx = wx - ev.source[0]
    dy = wy - ev.source[1]
    rho = np.sqrt(dx * dx + dy * dy)
    soft = max(1.5 * edge, 0.2 * st.radius)  # thin film at the rim: translucent
    # Boundary radius r·(1 + irregularity·tanh(noise)): bounded, so the pool stays one blob.
    bound = st.radius * (1.0 + ev.irregularity * np.tanh(irregular))
    a_pool = np.clip((bound - rho) / soft + 0.5, 0.0, 1.0)
    c, s = math.cos(ev.flow_angle), math.sin(ev.flow_angle)
    u = dx * c + dy * s
    v = dy * c - dx * s
    taper = 1.0 - 0.5 * np.clip(u / max(ev.streak_length, 1.0), 0.0, 1.0)
    centre = ev.meander * np.sin(u / max(ev.streak_width * 3.0, 1.0) + ev.source[0] * 0.1)
    half = ev.streak_width * taper * (1.0 + 0.3 * np.tanh(irregular))
    a_streak = (np.clip((half - np.abs(v - centre)) / edge + 0.5, 0.0, 1.0)
                * np.clip((st.streak_length - u) / (2.0 * edge) + 0.5, 0.0, 1.0)
                * (u > 0))
    alpha = np.maximum(a_pool, a_streak)

    lam = ev.ripple_wavelength
    t = st.elapsed_s
    on_streak = a_streak > a_pool
    sustained = ev.dynamics == "sustained"
    if ev.flow_texture == "advected":
        ripple = _advected(ev, rho, np.arctan2(dy, dx), u, v, on_streak, t, ripple_noise)
    else:  # waves: computed only here, not for the advected texture
        phase_streak = 2.0 * math.pi * (u - ev.ripple_speed * t) / lam + 2.5 * ripple_noise
        phase_pool = 2.0 * math.pi * (rho - 0.6 * ev.ripple_speed * t) / lam + 2.5 * ripple_noise
        wave = np.sin(np.where(on_streak, phase_streak, phase_pool))
        if sustained:  # a second, slower and longer wave: the texture never repeats in a clip
            lam2, v2 = 1.7 * lam, 0.55 * ev.ripple_speed * t
            phase2 = np.where(on_streak, 2.0 * math.pi * (u - v2) / lam2,
                              2.0 * math.pi * (rho - 0.6 * v2) / lam2) - 1.9 * ripple_noise
            ripple = 0.5 + 0.25 * wave + 0.25 * np.sin(phase2)
        else:
            ripple = 0.5 + 0.5 * wave
    if ev.texture_depth != 1.0:  # a fainter (or bolder) texture about the same mean
        ripple = 0.5 + ev.texture_depth * (ripple - 0.5)
    fresh = np.asarray(ev.colour, np.float32)
    if st.active:
        near = np.exp(-rho / max(0.5 * st.radius, 1.0))
        # sustained: deeper flow texture and more glints (moving highlights of flowing blood)
        base, depth, crest, spread = (0.54, 0.7, 0.75, 0.0) if sustained else (0.72, 0.34, 0.9, 0.3)
        bright = base + depth * ripple + 0.3 * st.pulse * ev.pulse_depth * near
        rgb = fresh * bright[..., None]
        glint = (np.clip((ripple - crest) * 10.0, 0.0, 1.0)
                 * np.clip(ripple_noise - spread, 0.0, 1.0) * 0.8)
        rgb = rgb + (0.97 - rgb) * glint[..., None]
    else:
        k = min(1.0, st.since_end_s / ev.darken_s)
        colour = fresh + (np.asarray(ev.old_colour, np.float32) - fresh) * k
        rgb = colour * (0.85 + 0.15 * ripple)[..., None]
    return alpha.astype(np.float32), rgb.astype(np.float32)
