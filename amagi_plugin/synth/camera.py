"""Slow endoscope motion: pan, zoom, small rotation and shake of a view over a tissue canvas.

World coordinates are canvas pixels (x right, y down). A screen pixel ``q`` (relative to the
view centre, in screen pixels) sees the world point ``c(t) + z(t) · R(θ(t)) · q``; ``z`` is
world pixels per screen pixel (> 1 zooms out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CameraMotion:
    """Parameters of the camera path; all motions are sums of sinusoids of time (seconds).

    Attributes
    ----------
    pan_amplitude
        Peak pan in world pixels along x and y.
    pan_hz
        Two pan frequencies (Hz); each axis is the sum of both with its own phases.
    pan_phases
        Four phases (radians): x at ``pan_hz[0]``, x at ``pan_hz[1]``, y at ..., y at ....
    zoom_base, zoom_amplitude, zoom_hz, zoom_phase
        ``z(t) = zoom_base · exp(zoom_amplitude · sin(2π zoom_hz t + zoom_phase))``.
    rotation_amplitude, rotation_hz, rotation_phase
        ``θ(t)`` in radians.
    shake_amplitude, shake_hz
        Small fast hand tremor in world pixels, frequency in Hz.
    wobble_amplitude, wobble_hz, wobble_angle, wobble_ratio, wobble_phase
        Breathing (and the heartbeat carried by tissue): the view sways back and forth along
        direction ``wobble_angle`` (radians) by ``wobble_amplitude`` world pixels at
        ``wobble_hz``, and across it by ``wobble_ratio`` times that a quarter period later
        (an ellipse). None by default: the view then moves only as it pans, zooms, turns and shakes.
    """

    pan_amplitude: tuple[float, float] = (0.0, 0.0)
    pan_hz: tuple[float, float] = (0.02, 0.05)
    pan_phases: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    zoom_base: float = 1.0
    zoom_amplitude: float = 0.0
    zoom_hz: float = 0.03
    zoom_phase: float = 0.0
    rotation_amplitude: float = 0.0
    rotation_hz: float = 0.02
    rotation_phase: float = 0.0
    shake_amplitude: float = 0.0
    shake_hz: float = 1.3
    wobble_amplitude: float = 0.0
    wobble_hz: float = 0.3
    wobble_angle: float = 0.0
    wobble_ratio: float = 0.0
    wobble_phase: float = 0.0

    def pose(self, t: float, centre: tuple[float, float]) -> tuple[float, float, float, float]:
        """World centre ``(cx, cy)``, zoom and rotation (radians) at time ``t`` seconds."""
        f0, f1 = self.pan_hz
        p = self.pan_phases
        ax, ay = self.pan_amplitude
        tau = 2.0 * math.pi * t
        cx = centre[0] + ax * 0.5 * (math.sin(f0 * tau + p[0]) + math.sin(f1 * tau + p[1]))
        cy = centre[1] + ay * 0.5 * (math.sin(f0 * tau + p[2]) + math.sin(f1 * tau + p[3]))
        s = self.shake_amplitude
        if s:
            cx += s * math.sin(self.shake_hz * tau + p[1] * 3.1)
            cy += s * math.sin(self.shake_hz * 1.37 * tau + p[3] * 2.3)
        if self.wobble_amplitude:
            a = self.wobble_hz * tau + self.wobble_phase
            along, across = math.sin(a), self.wobble_ratio * math.cos(a)
            ca, sa = math.cos(self.wobble_angle), math.sin(self.wobble_angle)
            cx += self.wobble_amplitude * (ca * along - sa * across)
            cy += self.wobble_amplitude * (sa * along + ca * across)
        zoom = self.zoom_base * math.exp(self.zoom_amplitude
                                         * math.sin(self.zoom_hz * tau + self.zoom_phase))
        theta = self.rotation_amplitude * math.sin(self.rotation_hz * tau + self.rotation_phase)
        return cx, cy, zoom, theta

    def max_extent(self, width: int, height: int) -> tuple[float, float]:
        """Half-size (x, y) in world pixels of the canvas region any view can see."""
        zmax = self.zoom_base * math.exp(abs(self.zoom_amplitude))
        half_diag = 0.5 * math.hypot(width, height)
        sway = abs(self.wobble_amplitude) * math.hypot(1.0, self.wobble_ratio)
        hx = abs(self.pan_amplitude[0]) + self.shake_amplitude + sway + zmax * half_diag
        hy = abs(self.pan_amplitude[1]) + self.shake_amplitude + sway + zmax * half_diag
        return hx, hy


def screen_to_world(pose: tuple[float, float, float, float], qx: np.ndarray, qy: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Map screen offsets from the view centre (pixels) to world coordinates."""
    cx, cy, zoom, theta = pose
    c, s = zoom * math.cos(theta), zoom * math.sin(theta)
    return cx + c * qx - s * qy, cy + s * qx + c * qy


def world_to_screen(pose: tuple[float, float, float, float], wx: float, wy: float,
                    ) -> tuple[float, float]:
    """Inverse of :func:`screen_to_world` for one point: the offset from the view centre."""
    cx, cy, zoom, theta = pose
    dx, dy = wx - cx, wy - cy
    c, s = math.cos(theta) / zoom, math.sin(theta) / zoom
    return c * dx + s * dy, -s * dx + c * dy
