"""Frame renderer: camera view of the tissue canvas + bleeding + instruments + smoke.

:class:`Renderer` precomputes everything static (canvas, pixel grids, vignette, noise bank) and
then renders any frame independently, so ``render(k)`` is a pure function of ``(scene, k)``.

Compositing order, per frame: tissue with baked-in red patches, old pools and blood-soaked
gauze (bilinear sample of the canvas under the camera pose) → view-dependent wet highlights →
residual blood of ended events → active events → still look-alikes of active blood →
irrigation fluid → instrument shadows and instruments (blood-stained jaws) → smoke → lens
distortion (frames and masks alike) → blood on the lens → the case's look (blur, white
balance, tone curve) → vignette and light flicker → sensor noise → field stop → 8-bit.

Masks (per frame, ``bool (H, W)``):

- ``active``: pixels where an active event's opacity is ≥ 0.5 and no instrument or blood on
  the lens covers them (opacity < 0.5). Smoke (peak opacity 0.45) and irrigation fluid
  (< 0.5) do not remove blood from the mask.
- ``negative``: visible static pooled blood, residual blood of ended events, still
  look-alikes of active blood or the stain of soaked gauze (opacity ≥ 0.5), not active and
  not under an instrument or lens blood: the hard negatives. Stained instrument jaws,
  irrigation fluid and lens blood are in neither mask.
- ``lookalike``: everything drawn with blood's look that is not active bleeding: the
  ``negative`` mask, the stain on instrument jaws where it is seen (opacity ≥ 0.5, not under
  another instrument or lens blood) and the blood on the lens (opacity ≥ 0.5). Where a
  probe is taught what looks like blood but neither grows nor flows
  (:mod:`amagi_plugin.probe_training`, ``lookalike_neg``).

All masks are empty outside the field stop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from amagi_plugin.synth.camera import screen_to_world, world_to_screen
from amagi_plugin.synth.events import (
    MASK_THRESHOLD,
    event_state,
    render_event,
    still_state,
    world_extent,
)
from amagi_plugin.synth.look import apply_look, distortion_map, gaussian_blur, scope_alpha
from amagi_plugin.synth.scene import Instrument, Irrigation, LensBlood, SceneParams
from amagi_plugin.synth.textures import (
    CH_IRREGULAR,
    CH_MATTE,
    CH_NEGATIVE,
    CH_RIPPLE,
    build_canvas,
    smooth_noise,
)

_NOISE_BANK = 16


@dataclass(frozen=True)
class RenderedFrame:
    """One rendered frame.

    Attributes
    ----------
    index
        0-based frame number.
    rgb
        ``uint8 (H, W, 3)``.
    active
        ``bool (H, W)`` active-bleeding mask.
    negative
        ``bool (H, W)`` hard-negative blood mask (static pools, residual blood).
    hidden
        ``bool (H, W)``: where the scene is not seen (instruments, lens blood, outside the
        field stop); neither ``active`` nor ``negative`` is set there (``lookalike`` is, on
        stained jaws and lens blood).
    lookalike
        ``bool (H, W)``: all blood that is not active (``negative``, stained jaws, lens
        blood; the module docstring).
    """

    index: int
    rgb: np.ndarray
    active: np.ndarray
    negative: np.ndarray
    hidden: np.ndarray
    lookalike: np.ndarray


class Renderer:
    """Render the frames of one :class:`SceneParams` (see the module docstring)."""

    def __init__(self, scene: SceneParams) -> None:
        self.scene = scene
        w, h = scene.width, scene.height
        canvas = build_canvas(scene)
        self._cw, self._ch = scene.canvas_size
        self._flat = canvas.channels.reshape(-1, canvas.channels.shape[-1])
        self._spec = canvas.specular.reshape(-1)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        self._x, self._y = xs, ys
        self._qx = xs - (w - 1) / 2.0
        self._qy = ys - (h - 1) / 2.0
        r2 = (self._qx / (w / 2.0)) ** 2 + (self._qy / (h / 2.0)) ** 2
        self._vignette = (1.0 - scene.vignette * 0.5 * r2).astype(np.float32)[..., None]
        rng = np.random.default_rng([scene.seed, 2])
        # 8-bit sensor noise, +0.5 so that the final truncation rounds.
        self._noise = (rng.standard_normal((_NOISE_BANK, h, w, 3)) * (255.0 * scene.noise_std)
                       + 0.5).astype(np.float32)
        self._noise_order = rng.permutation(_NOISE_BANK)
        self._smoke = (np.clip(0.55 + 0.35 * smooth_noise(rng, (h, w), min(w, h) / 6.0)
                               + 0.15 * smooth_noise(rng, (h, w), min(w, h) / 20.0), 0.0, 1.0)
                       if scene.smoke else None)
        self._side = float(min(w, h))
        self._scope = (scope_alpha(scene.look, h, w)[..., None]
                       if scene.look is not None and scene.look.scope_mask != "none" else None)
        self._warp: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if scene.look is not None and abs(scene.look.distortion) > 1e-4:
            sx, sy = distortion_map(scene.look.distortion, h, w)
            x0 = np.minimum(np.floor(sx), w - 2)
            y0 = np.minimum(np.floor(sy), h - 2)
            self._warp = ((y0 * w + x0).astype(np.intp), (sx - x0)[..., None],
                          (sy - y0)[..., None])
        self._lens = _lens_layer(scene.lens_blood, h, w, scene.seed) if scene.lens_blood else None

    def __len__(self) -> int:
        return self.scene.n_frames

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[RenderedFrame]:
        """Render frames ``start`` (inclusive) to ``stop`` (exclusive, default the end)."""
        stop = self.scene.n_frames if stop is None else stop
        for k in range(start, stop):
            yield self.render(k)

    def render(self, k: int) -> RenderedFrame:
        """Render frame ``k`` (0-based)."""
        sc = self.scene
        if not 0 <= k < sc.n_frames:
            raise IndexError(f"frame {k} outside 0..{sc.n_frames - 1}")
        t = k / sc.fps
        pose = sc.pose(k)
        wx, wy = screen_to_world(pose, self._qx, self._qy)
        samples = self._sample(wx, wy)
        rgb = np.ascontiguousarray(samples[..., 0:3])
        irregular = samples[..., CH_IRREGULAR]
        ripple = samples[..., CH_RIPPLE]
        negative_alpha = samples[..., CH_NEGATIVE]

        # Wet highlights: sampled with a shift that follows the camera (view dependence).
        c0x, c0y = sc.canvas_centre
        shift = (round(0.3 * (pose[0] - c0x)), round(0.3 * (pose[1] - c0y)))
        spec = self._spec_at(wx, wy, shift)
        if sc.gauze:
            spec *= 1.0 - samples[..., CH_MATTE]
        rgb += (1.0 - rgb) * (spec * 0.85)[..., None]

        h, w = sc.height, sc.width
        active_alpha = np.zeros((h, w), np.float32)
        # Events (active, or residual once ended), then the still look-alikes of active
        # blood; everything but an active event is a hard negative.
        blood = [(ev, event_state(ev, k, sc.fps), True) for ev in sc.events]
        blood += [(x.blood, still_state(x, k, sc.fps), False) for x in sc.still]
        for ev, st, bleeding in blood:
            if st is None:
                continue
            box = self._screen_box(pose, world_extent(ev))
            if box is None:
                continue
            r0, r1, c0, c1 = box
            win = (slice(r0, r1), slice(c0, c1))
            alpha, colour = render_event(ev, st, wx[win], wy[win], irregular[win], ripple[win],
                                         pose[2])
            sub = rgb[win]
            sub += (colour - sub) * alpha[..., None]
            target = active_alpha if bleeding and st.active else negative_alpha
            np.maximum(target[win], alpha, out=target[win])

        for ir in sc.irrigation:
            self._draw_irrigation(rgb, ir, k, pose, wx, wy, ripple)

        occluder = np.zeros((h, w), np.float32)
        stain = np.zeros((h, w), np.float32)  # seen stain on instrument jaws
        for inst in sc.instruments:
            self._draw_instrument(rgb, occluder, stain, inst, k)

        for ep in sc.smoke:
            if ep.start_frame <= k < ep.end_frame and self._smoke is not None:
                env = math.sin(math.pi * (k - ep.start_frame + 0.5) / (ep.end_frame - ep.start_frame))
                dy = round(ep.drift[1] * t) % h
                dx = round(ep.drift[0] * t) % w
                dens = np.roll(self._smoke, (dy, dx), axis=(0, 1)) * (ep.density * env)
                rgb += (np.float32(0.86) - rgb) * dens[..., None]

        if self._warp is not None:  # one remap of the frame and of every opacity
            stack = self._remap(np.concatenate(
                (rgb, active_alpha[..., None], negative_alpha[..., None], occluder[..., None],
                 stain[..., None]), axis=-1))
            rgb = np.ascontiguousarray(stack[..., 0:3])
            active_alpha, negative_alpha, occluder, stain = (stack[..., 3], stack[..., 4],
                                                             stack[..., 5], stack[..., 6])
        lens_alpha = None
        if self._lens is not None:
            lens_alpha, lens_rgb = self._lens
            rgb *= 1.0 - lens_alpha[..., None]
            rgb += lens_rgb
            occluder = np.maximum(occluder, lens_alpha)
        if sc.look is not None:
            rgb = apply_look(rgb, sc.look)
        flicker = 1.0 + sc.light_flicker * math.sin(2.0 * math.pi * 0.9 * t + sc.seed % 7)
        rgb *= self._vignette * np.float32(255.0 * flicker)
        rgb += self._noise[self._noise_order[k % _NOISE_BANK]]
        if self._scope is not None:
            rgb *= self._scope
        np.clip(rgb, 0.0, 255.0, out=rgb)
        out = rgb.astype(np.uint8)

        visible = occluder < MASK_THRESHOLD
        in_scope = (self._scope[..., 0] >= MASK_THRESHOLD if self._scope is not None
                    else np.ones((h, w), bool))
        visible &= in_scope
        active = (active_alpha >= MASK_THRESHOLD) & visible
        negative = (negative_alpha >= MASK_THRESHOLD) & visible & ~active
        lens = (lens_alpha >= MASK_THRESHOLD if lens_alpha is not None
                else np.zeros((h, w), bool))
        lookalike = negative | (((stain >= MASK_THRESHOLD) & ~lens | lens) & in_scope)
        return RenderedFrame(k, out, active, negative, ~visible, lookalike)

    # -- helpers --------------------------------------------------------------------------

    def _remap(self, img: np.ndarray) -> np.ndarray:
        """Bilinear resample of ``img (H, W, C)`` through the lens-distortion map."""
        assert self._warp is not None
        i, fx, fy = self._warp
        w = self.scene.width
        flat = img.reshape(-1, img.shape[-1])
        top = np.take(flat, i, axis=0)
        top += (np.take(flat, i + 1, axis=0) - top) * fx
        bottom = np.take(flat, i + w, axis=0)
        bottom += (np.take(flat, i + (w + 1), axis=0) - bottom) * fx
        top += (bottom - top) * fy
        return top

    def _draw_irrigation(self, rgb: np.ndarray, ir: Irrigation, k: int, pose, wx: np.ndarray,
                         wy: np.ndarray, ripple_noise: np.ndarray) -> None:
        """Composite irrigation fluid (a translucent tinted film with moving highlights)."""
        fps = self.scene.fps
        if k < ir.start_frame:
            return
        front = min(ir.length, ir.speed * (min(k, ir.end_frame - 1) - ir.start_frame + 1) / fps)
        tail = max(0.0, ir.speed * (k - ir.end_frame + 1) / fps)  # drains once the flow stops
        if tail >= front:
            return
        c, s = math.cos(ir.flow_angle), math.sin(ir.flow_angle)
        sx, sy = ir.source
        pad = 2.0 * ir.width + 2.0
        ex, ey = sx + c * ir.length, sy + s * ir.length
        box = self._screen_box(pose, (min(sx, ex) - pad, min(sy, ey) - pad,
                                      max(sx, ex) + pad, max(sy, ey) + pad))
        if box is None:
            return
        win = (slice(box[0], box[1]), slice(box[2], box[3]))
        dx, dy = wx[win] - sx, wy[win] - sy
        u = dx * c + dy * s
        v = dy * c - dx * s
        noise = ripple_noise[win]
        edge = max(pose[2], 0.5)
        centre = 0.3 * ir.width * np.sin(u / (3.0 * ir.width) + sx * 0.1)
        half = ir.width * (1.0 + 0.2 * np.tanh(noise))
        band = (np.clip((half - np.abs(v - centre)) / edge + 0.5, 0.0, 1.0)
                * np.clip((front - u) / (2.0 * edge) + 0.5, 0.0, 1.0)
                * np.clip((u - tail) / (2.0 * edge) + 0.5, 0.0, 1.0))
        phase = (2.0 * math.pi * (u - ir.ripple_speed * k / fps) / ir.ripple_wavelength
                 + 3.0 * noise + 2.0 * ((v - centre) / ir.width) ** 2)  # curved wavefronts
        wave = 0.5 + 0.5 * np.sin(phase)
        sub = rgb[win]
        tint = np.asarray(ir.tint, np.float32)
        sub += (tint - sub) * (band * ir.opacity * (0.6 + 0.4 * wave))[..., None]
        glint = np.clip((wave - 0.88) * 9.0, 0.0, 1.0) * np.clip(noise + 0.3, 0.0, 1.0) * band
        sub += (np.float32(0.98) - sub) * (0.6 * glint)[..., None]

    def _sample(self, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
        """Bilinear sample of every canvas channel at world points, ``float32 (H, W, C)``."""
        cw = self._cw
        x0 = np.clip(np.floor(wx), 0, cw - 2)
        y0 = np.clip(np.floor(wy), 0, self._ch - 2)
        fx = np.clip(wx - x0, 0.0, 1.0)[..., None]
        fy = np.clip(wy - y0, 0.0, 1.0)[..., None]
        i = y0.astype(np.intp) * cw + x0.astype(np.intp)
        f = self._flat
        a = np.take(f, i, axis=0)
        top = np.take(f, i + 1, axis=0)
        top -= a
        top *= fx
        top += a
        b = np.take(f, i + cw, axis=0)
        bottom = np.take(f, i + (cw + 1), axis=0)
        bottom -= b
        bottom *= fx
        bottom += b
        bottom -= top
        bottom *= fy
        bottom += top
        return bottom

    def _spec_at(self, wx: np.ndarray, wy: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
        x = np.clip(wx.astype(np.intp) + shift[0], 0, self._cw - 1)
        y = np.clip(wy.astype(np.intp) + shift[1], 0, self._ch - 1)
        return np.take(self._spec, y * self._cw + x)

    def _screen_box(self, pose, extent) -> tuple[int, int, int, int] | None:
        """Pixel rows/cols ``(r0, r1, c0, c1)`` covering a world box, or ``None`` if unseen."""
        x0, y0, x1, y1 = extent
        pts = [world_to_screen(pose, x, y) for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]
        sc = self.scene
        cx, cy = (sc.width - 1) / 2.0, (sc.height - 1) / 2.0
        c0 = max(0, math.floor(min(p[0] for p in pts) + cx) - 1)
        c1 = min(sc.width, math.ceil(max(p[0] for p in pts) + cx) + 2)
        r0 = max(0, math.floor(min(p[1] for p in pts) + cy) - 1)
        r1 = min(sc.height, math.ceil(max(p[1] for p in pts) + cy) + 2)
        if c0 >= c1 or r0 >= r1:
            return None
        return r0, r1, c0, c1

    def _draw_instrument(self, rgb: np.ndarray, occluder: np.ndarray, stain: np.ndarray,
                         inst: Instrument, k: int) -> None:
        """Composite one instrument (shadow, shaft, jaws, stain) into ``rgb``; update
        ``occluder`` and the seen ``stain``'s opacity (the instrument covers the stains of
        those drawn before it)."""
        sc, side = self.scene, self._side
        t = k / sc.fps
        tau = 2.0 * math.pi * t
        tx = (inst.tip_home[0] + inst.tip_amplitude[0]
              * math.sin(inst.tip_hz[0] * tau + inst.tip_phases[0])) * sc.width
        ty = (inst.tip_home[1] + inst.tip_amplitude[1]
              * math.sin(inst.tip_hz[1] * tau + inst.tip_phases[1])) * sc.height
        a = inst.entry_angle + inst.wobble * math.sin(0.07 * tau + inst.tip_phases[1])
        ex, ey = math.cos(a), math.sin(a)
        half = inst.width_frac * side / 2.0
        jaw_len = inst.jaw_length_frac * side
        opening = 0.38 * (0.5 + 0.5 * math.sin(inst.jaw_hz * tau + inst.tip_phases[0]))

        # Only the pixels near the segment from just ahead of the tip to beyond the border.
        reach = 1.5 * math.hypot(sc.width, sc.height)
        off = 0.035 * side
        pad = 1.3 * half + 1.2 * off + jaw_len + 2.0
        xs = (tx - ex * jaw_len, tx + ex * reach)
        ys = (ty - ey * jaw_len, ty + ey * reach)
        c0 = max(0, int(min(xs) - pad))
        c1 = min(sc.width, int(max(xs) + pad) + 1)
        r0 = max(0, int(min(ys) - pad))
        r1 = min(sc.height, int(max(ys) + pad) + 1)
        if c0 >= c1 or r0 >= r1:
            return
        win = (slice(r0, r1), slice(c0, c1))
        X, Y = self._x[win], self._y[win]
        sub = rgb[win]

        # Shadow: the shaft shifted down-right, softened.
        sdx, sdy = X - (tx + off), Y - (ty + 1.2 * off)
        su = sdx * ex + sdy * ey
        sv = sdy * ex - sdx * ey
        shadow = (np.clip((1.3 * half - np.abs(sv)) / (0.5 * half), 0.0, 1.0)
                  * np.clip(su / (0.5 * half) + 0.5, 0.0, 1.0)) * 0.45
        sub *= (1.0 - shadow)[..., None]

        dx, dy = X - tx, Y - ty
        u = dx * ex + dy * ey
        v = dy * ex - dx * ey
        body = np.clip(half + 0.5 - np.abs(v), 0.0, 1.0) * np.clip(u + 0.5, 0.0, 1.0)
        forward = -u  # distance ahead of the tip
        spread = math.tan(opening) * 2.0 * half / jaw_len
        jaw_half = half * 0.42 * np.clip(1.0 - forward / jaw_len, 0.0, 1.0) + 0.5
        ahead = (forward > -0.5) & (forward < jaw_len)
        jaws = np.maximum(np.clip(jaw_half - np.abs(v - forward * spread), 0.0, 1.0),
                          np.clip(jaw_half - np.abs(v + forward * spread), 0.0, 1.0)) * ahead
        alpha = np.maximum(body, jaws)

        n = np.clip(v / half, -1.0, 1.0)
        cyl = 0.4 + 0.6 * np.sqrt(1.0 - n * n)
        spec = np.exp(-(((n + 0.35) / 0.16) ** 2))
        metal = (u < 0.7 * jaw_len) | (jaws > body)
        base = np.where(metal | (not inst.dark_shaft), np.float32(inst.tone), np.float32(0.13))
        grey = base * cyl + spec * np.where(metal, np.float32(0.55), np.float32(0.3))
        colour = grey[..., None] * np.asarray((0.98, 1.0, 1.04), np.float32)
        sub += (colour - sub) * alpha[..., None]
        stain[win] *= 1.0 - alpha
        state = still_state(inst.stain, k, sc.fps) if inst.stain is not None else None
        if state is not None:
            # In the instrument's own frame (forward of the tip, across the shaft), with the
            # canvas noise of a fixed place: the stain moves only with the instrument.
            near = metal & (forward > -2.0 * half) & (alpha > 0.0)
            lx, ly = forward[near], v[near]
            noise = self._sample(lx + self._cw / 2.0, ly + self._ch / 2.0)
            a_s, c_s = render_event(inst.stain.blood, state, lx, ly, noise[..., CH_IRREGULAR],
                                    noise[..., CH_RIPPLE], 1.0)
            a_s *= alpha[near]
            sub[near] += (c_s - sub[near]) * a_s[..., None]
            seen = stain[win]
            seen[near] = np.maximum(seen[near], a_s)
        np.maximum(occluder[win], alpha, out=occluder[win])


def _lens_layer(smears: tuple[LensBlood, ...], h: int, w: int, seed: int,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Opacity ``(H, W)`` and premultiplied colour ``(H, W, 3)`` of the blood on the lens."""
    rng = np.random.default_rng([seed, 3])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    alpha = np.zeros((h, w), np.float32)
    rgb = np.zeros((h, w, 3), np.float32)
    for sm in smears:
        edge = smooth_noise(rng, (h, w), max(2.0, min(sm.radii) / 2.0))
        film = smooth_noise(rng, (h, w), max(1.5, min(sm.radii) / 4.0))
        c, s = math.cos(sm.angle), math.sin(sm.angle)
        dx, dy = xs - sm.centre[0] * w, ys - sm.centre[1] * h
        u, v = (dx * c + dy * s) / sm.radii[0], (dy * c - dx * s) / sm.radii[1]
        d = np.sqrt(u * u + v * v) / (1.0 + sm.irregularity * np.tanh(edge))
        shape = np.clip((1.0 - d) * 4.0, 0.0, 1.0)[..., None]
        a = gaussian_blur(shape, sm.blur_px)[..., 0] * sm.opacity
        colour = np.asarray(sm.colour, np.float32) * (0.8 + 0.12 * np.tanh(film))[..., None]
        rgb = rgb * (1.0 - a)[..., None] + colour * a[..., None]
        alpha = 1.0 - (1.0 - alpha) * (1.0 - a)
    return alpha.astype(np.float32), rgb.astype(np.float32)
