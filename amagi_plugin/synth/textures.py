"""Procedural tissue canvas: layered smooth noise in tissue, fat and vessel colours.

Everything here is computed once per case, in world (canvas) pixels, with numpy FFTs; the
renderer then only samples it. The static hard negatives (red tissue patches, pooled/old
blood, blood-soaked gauze) are baked in, so they move with the tissue and never change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amagi_plugin.synth.events import render_event, still_state
from amagi_plugin.synth.scene import BloodPool, Gauze, RedPatch, SceneParams

#: Channels of :attr:`TissueCanvas.channels`.
CH_RGB = slice(0, 3)
CH_IRREGULAR = 3  # smooth noise (std 1) that makes blood boundaries irregular
CH_RIPPLE = 4  # smooth noise (std 1) that distorts the flow ripples
CH_NEGATIVE = 5  # opacity (0-1) of static pooled/old blood (hard negatives)
CH_MATTE = 6  # opacity (0-1) of gauze: no wet-tissue highlight there
N_CHANNELS = 8  # one unused: 32-byte rows are the fastest to gather


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Periodic Gaussian-filtered white noise, zero mean and unit standard deviation.

    Parameters
    ----------
    rng
        Random generator (consumed: ``shape`` normal draws).
    shape
        ``(rows, cols)`` of the result.
    scale
        Correlation length in pixels (the Gaussian's sigma in the pixel domain).

    Returns
    -------
    numpy.ndarray
        ``float32 (rows, cols)``.
    """
    white = rng.standard_normal(shape)
    spec = np.fft.rfft2(white)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    spec *= np.exp(-2.0 * (math.pi * scale) ** 2 * (fx * fx + fy * fy))
    out = np.fft.irfft2(spec, s=shape)
    out -= out.mean()
    std = out.std()
    return (out / std if std > 0 else out).astype(np.float32)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at ``e0`` to 1 at ``e1`` (``e0 > e1`` gives a falling step)."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class TissueCanvas:
    """The world canvas of one case.

    Attributes
    ----------
    channels
        ``float32 (rows, cols, 8)``: RGB 0–1, two noise fields, hard-negative blood opacity,
        gauze opacity, a zero channel.
    specular
        ``float32 (rows, cols)``: wet-tissue highlight strength 0–1.
    """

    channels: np.ndarray
    specular: np.ndarray


def _lerp(a: np.ndarray, colour, t: np.ndarray) -> np.ndarray:
    """Blend image ``a (..., 3)`` towards ``colour`` by ``t (...)``."""
    c = np.asarray(colour, np.float32)
    return a + (c - a) * t[..., None]


def build_canvas(scene: SceneParams) -> TissueCanvas:
    """Render the static tissue of ``scene`` (deterministic in ``scene.seed``)."""
    rng = np.random.default_rng([scene.seed, 1])
    cw, ch = scene.canvas_size
    shape = (ch, cw)
    pal = scene.palette
    s = scene.texture_scale

    height = (0.6 * smooth_noise(rng, shape, s) + 0.3 * smooth_noise(rng, shape, s / 3)
              + 0.15 * smooth_noise(rng, shape, s / 9))
    micro = smooth_noise(rng, shape, max(0.7, s / 30))
    t = 1.0 / (1.0 + np.exp(-1.6 * height))
    light = np.asarray(pal.tissue_light, np.float32)
    dark = np.asarray(pal.tissue_dark, np.float32)
    rgb = light + (dark - light) * t[..., None]
    rgb *= (1.0 + 0.06 * micro)[..., None]

    # Red patches (inflamed mucosa, muscle): hard negatives of tissue colour.
    irregular = smooth_noise(rng, shape, max(1.5, s / 6))
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    for patch in scene.red_patches:
        rgb = _bake_patch(rgb, patch, xx, yy, irregular, micro)

    # Fat lobules.
    fat_field = smooth_noise(rng, shape, s * 0.8) + 0.45 * smooth_noise(rng, shape, s / 4)
    threshold = float(np.quantile(fat_field, 1.0 - scene.fat_fraction))
    fat_alpha = smoothstep(threshold - 0.1, threshold + 0.35, fat_field)
    lobules = smooth_noise(rng, shape, max(1.0, s / 10))
    fat = np.asarray(pal.fat, np.float32) * (0.9 + 0.07 * lobules + 0.03 * micro)[..., None]
    rgb = rgb + (fat - rgb) * fat_alpha[..., None]

    # Vessels: ridges (zero crossings) of two noise fields, where a mask allows.
    for scale, width, strength in ((s / 2.5, 0.07, 0.8), (s / 5.0, 0.05, 0.55)):
        ridge_field = smooth_noise(rng, shape, scale)
        where = smoothstep(0.6 - scene.vessel_density, 1.2 - scene.vessel_density,
                           smooth_noise(rng, shape, s))
        ridge = np.exp(-(ridge_field / width) ** 2) * where * strength
        rgb = _lerp(rgb, pal.vessel, ridge.astype(np.float32))

    # Relief shading from the height field (light from the scope, slightly up-left).
    gy, gx = np.gradient(height)
    g = (gx * -0.6 + gy * -0.8) * s / 2.0
    rgb *= np.clip(1.0 + 0.25 * g, 0.6, 1.4)[..., None]

    # Pooled/old blood: static, baked in.
    negative = np.zeros(shape, np.float32)
    glint_field = smooth_noise(rng, shape, 1.2)
    for pool in scene.pools:
        rgb, negative = _bake_pool(rgb, negative, pool, xx, yy, irregular, micro, glint_field)

    spec_field = smooth_noise(rng, shape, max(1.0, s / 14))
    specular = smoothstep(2.0, 2.8, spec_field) * (1.0 - fat_alpha * 0.5)
    ripple = smooth_noise(rng, shape, max(1.5, s / 8))

    matte = np.zeros(shape, np.float32)
    for gauze in scene.gauze:  # no random draws: the canvas of a scene without gauze is unchanged
        _bake_gauze(rgb, negative, matte, gauze, scene, irregular, ripple, micro)

    channels = np.zeros((ch, cw, N_CHANNELS), np.float32)
    channels[..., CH_RGB] = np.clip(rgb, 0.0, 1.0)
    channels[..., CH_IRREGULAR] = irregular
    channels[..., CH_RIPPLE] = ripple
    channels[..., CH_NEGATIVE] = negative
    channels[..., CH_MATTE] = matte
    return TissueCanvas(channels=channels, specular=specular.astype(np.float32))


def _bake_patch(rgb, patch: RedPatch, xx, yy, irregular, micro) -> np.ndarray:
    d = np.hypot(xx - patch.centre[0], yy - patch.centre[1]) / patch.radius
    d /= 1.0 + 0.3 * np.tanh(irregular)
    alpha = smoothstep(1.0, 0.5, d) * 0.85
    colour = np.asarray(patch.colour, np.float32) * (0.85 + 0.15 * micro)[..., None]
    return rgb + (colour - rgb) * alpha[..., None]


def _bake_pool(rgb, negative, pool: BloodPool, xx, yy, irregular, micro, glint_field):
    dx, dy = xx - pool.centre[0], yy - pool.centre[1]
    c, s = math.cos(pool.angle), math.sin(pool.angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    bound = pool.radius * (1.0 + pool.irregularity * np.tanh(irregular))
    d = np.hypot(u / pool.elongation, v)
    alpha = np.clip((bound - d) / 1.5 + 0.5, 0.0, 1.0)
    depth = np.clip((bound - d) / max(pool.radius, 1.0), 0.0, 1.0)
    shade = (0.75 + 0.25 * np.sqrt(depth) + 0.08 * micro)[..., None]
    colour = np.asarray(pool.colour, np.float32) * shade
    glint = smoothstep(2.3, 3.0, glint_field) * (depth > 0.2) * 0.7
    colour = colour + (0.95 - colour) * glint[..., None]
    rgb = rgb + (colour - rgb) * alpha[..., None]
    return rgb, np.maximum(negative, alpha)


def _bake_gauze(rgb, negative, matte, gauze: Gauze, scene: SceneParams, irregular, ripple,
                micro) -> None:
    """Bake a woven swab with its fresh-looking stain into ``rgb``, ``negative``, ``matte``."""
    ch, cw = matte.shape
    reach = 1.2 * math.hypot(*gauze.half_size) + 3.0
    cx, cy = gauze.centre
    r0, r1 = max(0, int(cy - reach)), min(ch, int(cy + reach) + 1)
    c0, c1 = max(0, int(cx - reach)), min(cw, int(cx + reach) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    win = (slice(r0, r1), slice(c0, c1))
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    c, s = math.cos(gauze.angle), math.sin(gauze.angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    fray = 1.0 + 0.08 * np.tanh(irregular[win])
    inside = np.minimum(gauze.half_size[0] * fray - np.abs(u),
                        gauze.half_size[1] * fray - np.abs(v))
    cover = np.clip(inside / 1.5 + 0.5, 0.0, 1.0)
    w = gauze.weave_px
    threads = 0.5 * (np.cos(math.pi * u / w) ** 2 + np.cos(math.pi * v / w) ** 2)
    shade = 0.8 + 0.2 * threads + 0.04 * micro[win]
    sub = rgb[win]
    sub += (np.asarray(gauze.tone, np.float32) * shade[..., None] - sub) * cover[..., None]
    stain = gauze.stain
    state = still_state(stain, stain.blood.start_frame, scene.fps)
    if state is not None:
        alpha, colour = render_event(stain.blood, state, xx, yy, irregular[win], ripple[win],
                                     scene.camera.zoom_base)
        alpha *= cover
        colour *= (0.94 + 0.06 * threads)[..., None]  # the weave shows through the blood
        sub += (colour - sub) * alpha[..., None]
        np.maximum(negative[win], alpha, out=negative[win])
    np.maximum(matte[win], cover, out=matte[win])
