"""Domain randomisation of a case's *look*: what the camera chain does to the rendered scene.

Real endoscopic video varies in white balance, tone curve, sharpness, lens distortion, the
shape of the endoscope's field stop and compression. None of these says anything about whether blood is
flowing, so a model must not learn any of them: :func:`sample_look` draws one :class:`Look`
per case, continuously inside a :class:`LookRanges`, and :func:`apply_look` applies it to
every composited frame (after the scene, before sensor noise). Field stops come in named
*families* (``SCOPE_MASKS``) so that evaluation can hold a whole family out of training.

Units: colours are RGB in 0–1 (the renderer's working scale); ``blur_sigma`` is in output
pixels; the field stop is measured in fractions of the half frame size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amagi_plugin.synth.errors import SynthError

#: Field-stop families: the whole frame, a circle, an octagon, a rectangle with round corners.
SCOPE_MASKS = ("none", "round", "octagon", "rounded_rect")


@dataclass(frozen=True)
class Look:
    """The camera chain of one case.

    Attributes
    ----------
    gains
        White balance: per-channel multipliers of linear RGB.
    gamma
        Tone curve ``rgb ** (1 / gamma)`` (> 1 brightens mid-tones).
    blur_sigma
        Gaussian lens/focus blur in pixels (0 = sharp).
    scope_mask
        One of :data:`SCOPE_MASKS`; pixels outside the field stop are black.
    scope_size
        Field-stop radius as a fraction of the half frame size (≥ 1 may crop the corners only).
    scope_offset
        Centre offset of the field stop, fractions of the half frame size.
    jpeg_quality
        Quality of the case's rawframe JPEGs (compression strength).
    crf
        Constant-rate factor of the case's H.264/HEVC video (higher = more compression).
    distortion
        Radial lens distortion ``k``: the output pixel at radius ``r`` (fraction of the half
        diagonal) shows the undistorted point at ``r · (1 + k r²) / (1 + max(k, 0))``;
        ``k > 0`` is barrel (fish-eye, the view still fills the frame), ``k < 0`` pincushion,
        0 none. Frames and masks are warped alike (:func:`distortion_map`).
    """

    gains: tuple[float, float, float]
    gamma: float
    blur_sigma: float
    scope_mask: str
    scope_size: float
    scope_offset: tuple[float, float]
    jpeg_quality: int
    crf: int
    distortion: float = 0.0

    def __post_init__(self) -> None:
        if not -0.3 <= self.distortion <= 0.5:
            raise SynthError(f"distortion must lie in [-0.3, 0.5], got {self.distortion}")
        if self.scope_mask not in SCOPE_MASKS:
            raise SynthError(f"scope_mask must be one of {', '.join(SCOPE_MASKS)}, "
                             f"got {self.scope_mask!r}")


@dataclass(frozen=True)
class LookRanges:
    """Ranges ``(low, high)`` that :func:`sample_look` draws a :class:`Look` from."""

    scope_masks: tuple[str, ...] = ("none", "round", "octagon")
    white_balance: float = 0.15  # gains uniform in 1 ± this
    gamma: tuple[float, float] = (0.8, 1.3)
    blur_sigma: tuple[float, float] = (0.0, 1.2)
    scope_size: tuple[float, float] = (0.92, 1.25)
    scope_offset: float = 0.06
    jpeg_quality: tuple[int, int] = (45, 95)
    crf: tuple[int, int] = (18, 32)
    distortion: tuple[float, float] = (-0.15, 0.3)

    def __post_init__(self) -> None:
        bad = [m for m in self.scope_masks if m not in SCOPE_MASKS]
        if not self.scope_masks or bad:
            raise SynthError(f"scope_masks must be among {', '.join(SCOPE_MASKS)}, "
                             f"got {', '.join(self.scope_masks) or 'none'}")
        if not 0.0 <= self.white_balance < 1.0:
            raise SynthError(f"white_balance must lie in [0, 1), got {self.white_balance}")
        for name in ("gamma", "blur_sigma", "scope_size", "jpeg_quality", "crf"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise SynthError(f"{name} must be a range 0 <= low <= high, got ({lo}, {hi})")
        if self.gamma[0] <= 0 or self.scope_size[0] <= 0:
            raise SynthError("gamma and scope_size must be positive")
        if self.jpeg_quality[0] < 1 or self.jpeg_quality[1] > 95:
            raise SynthError(f"jpeg_quality must lie in 1-95, got {self.jpeg_quality}")
        lo, hi = self.distortion
        if not -0.3 <= lo <= hi <= 0.5:
            raise SynthError(f"distortion must be a range -0.3 <= low <= high <= 0.5, "
                             f"got ({lo}, {hi})")


def sample_look(rng: np.random.Generator, ranges: LookRanges) -> Look:
    """Draw a :class:`Look` from ``rng`` inside ``ranges``."""
    wb = ranges.white_balance
    gains = tuple(round(float(g), 4) for g in rng.uniform(1.0 - wb, 1.0 + wb, 3))
    mask = ranges.scope_masks[int(rng.integers(len(ranges.scope_masks)))]
    off = ranges.scope_offset
    return Look(
        gains=gains,  # type: ignore[arg-type]
        gamma=round(float(rng.uniform(*ranges.gamma)), 4),
        blur_sigma=round(float(rng.uniform(*ranges.blur_sigma)), 4),
        scope_mask=mask,
        scope_size=round(float(rng.uniform(*ranges.scope_size)), 4),
        scope_offset=(round(float(rng.uniform(-off, off)), 4),
                      round(float(rng.uniform(-off, off)), 4)),
        jpeg_quality=int(rng.integers(ranges.jpeg_quality[0], ranges.jpeg_quality[1] + 1)),
        crf=int(rng.integers(ranges.crf[0], ranges.crf[1] + 1)),
        distortion=round(float(rng.uniform(*ranges.distortion)), 4),  # drawn last: the
    )  # looks drawn before it had the same other values


def scope_alpha(look: Look, height: int, width: int) -> np.ndarray:
    """Field-stop transmission ``float32 (H, W)``: 1 inside, 0 outside, a 1.5-pixel soft rim."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    hx, hy = width / 2.0, height / 2.0
    u = (xs + 0.5 - hx) / hx - look.scope_offset[0]
    v = (ys + 0.5 - hy) / hy - look.scope_offset[1]
    # Work in pixels of the shorter half side so that the rim width is in pixels.
    side = min(hx, hy)
    px, py = u * hx / side, v * hy / side
    if look.scope_mask == "none":
        return np.ones((height, width), np.float32)
    r = look.scope_size
    if look.scope_mask == "round":
        dist = np.hypot(px, py) - r
    elif look.scope_mask == "octagon":
        a, b = np.abs(px), np.abs(py)
        dist = np.maximum(np.maximum(a, b), (a + b) / math.sqrt(2.0)) - r
    else:  # rounded_rect: the frame's aspect, corners of radius 0.35·r
        rx, ry = look.scope_size * hx / side, look.scope_size * hy / side
        corner = 0.35 * min(rx, ry)
        qx = np.maximum(np.abs(px) - (rx - corner), 0.0)
        qy = np.maximum(np.abs(py) - (ry - corner), 0.0)
        dist = np.hypot(qx, qy) - corner
    return np.clip(0.5 - dist * side / 1.5, 0.0, 1.0).astype(np.float32)


def distortion_map(k: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel coordinates ``(x, y)``, ``float32 (H, W)`` each, of every output pixel
    under radial distortion ``k`` (see :class:`Look`); every source lies inside the frame
    for ``-0.3 <= k <= 0.5``, where the radial map is monotonic."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    qx, qy = xs - cx, ys - cy
    r2 = (qx * qx + qy * qy) / (cx * cx + cy * cy)
    f = (1.0 + k * r2) / (1.0 + max(k, 0.0))
    return (np.clip(cx + qx * f, 0.0, width - 1.0).astype(np.float32),
            np.clip(cy + qy * f, 0.0, height - 1.0).astype(np.float32))


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``(H, W, C)`` float32, edges replicated (``sigma`` pixels)."""
    if sigma < 0.2:
        return img
    radius = max(1, math.ceil(3.0 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def apply_look(rgb: np.ndarray, look: Look) -> np.ndarray:
    """Blur, white balance and tone curve of ``rgb`` ``float32 (H, W, 3)`` in 0–1 (new array).

    The field stop is applied by the renderer (:func:`scope_alpha`) after noise, like a real
    scope whose black surround has no signal.
    """
    out = gaussian_blur(rgb, look.blur_sigma)
    out = out * np.asarray(look.gains, np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    if abs(look.gamma - 1.0) > 1e-6:
        np.power(out, np.float32(1.0 / look.gamma), out=out)
    return out
