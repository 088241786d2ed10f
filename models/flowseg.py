"""FlowSeg: a small temporal bleeding segmenter that keeps full resolution where flow shows.

This project's network, not the authors': AMAGI's demo models use it as their segmentation
net (``amagi_tiny_tg``) so that the map re-weighting the clip features marks blood that
*flows*, which one frame cannot show, rather than all blood. Its interface is HRNet-OCR's
(:class:`models.hrnet_ocr.HRNetOCR`): ``forward(x) -> [aux_logits, logits]``, both
``(N, num_classes, H/4, W/4)``, and ``cfg.in_frames``.

Input: ``in_frames`` (odd) consecutive normalised RGB frames stacked frame-major on the
channel axis, the middle one being the frame segmented. The net first re-expresses them as
the middle frame and each other frame's difference from it, scaled by ``diff_gain``: at
the start of training the network sees change explicitly instead of having to discover a
difference of nearly equal inputs. Then two convolutions at full resolution (the flow
texture of a small bleed is a few pixels long, which a stride-4 stem such as HRNet's
averages away), two at 1/2, three dilated ones at 1/4 for context, and a head on the 1/4
features concatenated with the pooled 1/2 features. ``aux`` is a 1x1 head on the context
features alone (deep supervision, weighted as HRNet-OCR's auxiliary output in training).

With ``fine`` (``amagi_tiny_tgef``), a last head at full resolution corrects the 1/4 logits
(upsampled) from the full-resolution features, so that a source of a few pixels has logits
of its own instead of sharing a 4x4 cell with background; ``main`` is then ``(N,
num_classes, H, W)`` and :func:`cell_peak` brings it to 1/4 for AMAGI's head.

With ``align`` (``amagi_tiny_tgea``), each other frame is first shifted onto the middle one
by the global translation that phase correlation finds (:func:`translation`), so that the
differences show what moved against the view rather than the camera's own motion.

Measured against HRNet-W8-OCR with the same 5-frame input, trained the same way on the same
domain-randomised data (models/weights/demo/heldout-looks/README.md, session 9): on held-out
looks, HRNet's map stayed near chance while this one separated active bleeding from still
look-alikes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import InputShapeError, ModelConfigError

__all__ = ["FLOWSEG_TINY", "FLOWSEG_TINY_ALIGNED", "FLOWSEG_TINY_FINE", "FlowSeg",
           "FlowSegConfig", "align_to", "cell_peak", "estimate_shift", "translation"]


@dataclass(frozen=True)
class FlowSegConfig:
    """Architecture of a :class:`FlowSeg` net.

    Attributes
    ----------
    in_frames : int
        Stacked frames (odd, at least 3): the middle one is segmented.
    width : int
        Channels at full resolution (2× at 1/2, 3× at 1/4).
    diff_gain : float
        Scale of the differences from the middle frame.
    num_classes : int
        Logit channels (2: background, bleeding).
    align : bool
        Motion compensation: each other frame is first shifted onto the middle one by the
        global translation that phase correlation finds (:func:`align_to`), so that the
        differences show what moved *against* the view, not the camera's own motion.
    max_shift : float
        The largest translation (pixels of the input) that alignment looks for.
    fine : bool
        A full-resolution head: the main logits come at the input's resolution, not 1/4.
    """

    in_frames: int = 5
    width: int = 24
    diff_gain: float = 3.0
    num_classes: int = 2
    align: bool = False
    max_shift: float = 8.0
    fine: bool = False

    def __post_init__(self) -> None:
        if self.in_frames < 3 or self.in_frames % 2 == 0:
            raise ModelConfigError(f"FlowSeg needs an odd number of frames >= 3, got "
                                   f"{self.in_frames}")
        if self.width < 1:
            raise ModelConfigError(f"width must be >= 1, got {self.width}")
        if self.max_shift <= 0:
            raise ModelConfigError(f"max_shift must be positive, got {self.max_shift}")

    @property
    def in_channels(self) -> int:
        """Input channels: RGB of each stacked frame."""
        return 3 * self.in_frames


FLOWSEG_TINY = FlowSegConfig()
"""5 frames, width 24 (about 0.25 M parameters): the demo models' temporal segmenter."""

FLOWSEG_TINY_ALIGNED = FlowSegConfig(align=True)
""":data:`FLOWSEG_TINY` with motion-compensated differences (the same parameters)."""

FLOWSEG_TINY_FINE = FlowSegConfig(fine=True)
""":data:`FLOWSEG_TINY` with a full-resolution head (main logits at the input's size)."""


def cell_peak(logits: torch.Tensor, factor: int) -> torch.Tensor:
    """Two-class logits ``(N, 2, H, W)`` -> ``(N, 2, H/factor, W/factor)`` whose softmax is
    each ``factor``² cell's largest bleeding probability (logits ``[0, max margin]``): a
    source smaller than a cell keeps its own probability instead of being averaged away."""
    margin = F.max_pool2d(logits[:, 1:2] - logits[:, 0:1], factor)
    return torch.cat([torch.zeros_like(margin), margin], dim=1)


@torch.no_grad()
def estimate_shift(ref: torch.Tensor, mov: torch.Tensor, max_shift: float) -> torch.Tensor:
    """Global translation ``d`` (``(N, 2)``, pixels, y then x) with ``mov(p) ≈ ref(p - d)``.

    Phase correlation (Kuglin & Hines, 1975): the cross-power spectrum of two Hann-windowed
    images is a phase ramp for a pure translation, so its inverse transform peaks at the
    shift. The spectrum is whitened partly (divided by its magnitude to the power 3/4, not
    1), which keeps the peak where an image has little energy at some frequencies. The peak
    is searched within ``max_shift`` and refined to a fraction of a pixel by a parabola
    through it and its neighbours on each axis.
    ``ref`` and ``mov``: ``(N, H, W)`` single-channel images.
    """
    n, h, w = ref.shape
    win = (torch.hann_window(h, periodic=False, dtype=ref.dtype, device=ref.device)[:, None]
           * torch.hann_window(w, periodic=False, dtype=ref.dtype, device=ref.device)[None])
    a = (ref - ref.mean(dim=(1, 2), keepdim=True)) * win
    b = (mov - mov.mean(dim=(1, 2), keepdim=True)) * win
    cross = torch.fft.fft2(a).conj() * torch.fft.fft2(b)
    corr = torch.fft.ifft2(cross / (cross.abs() + 1e-9) ** 0.75).real  # peak at +d mod size
    ys = torch.fft.fftfreq(h, 1.0 / h, device=ref.device)  # signed offsets 0, 1, ..., -1
    xs = torch.fft.fftfreq(w, 1.0 / w, device=ref.device)
    inside = (ys.abs()[:, None] <= max_shift) & (xs.abs()[None] <= max_shift)
    flat = corr.masked_fill(~inside, float("-inf")).flatten(1).argmax(dim=1)
    iy, ix = flat // w, flat % w
    rows = torch.arange(n, device=ref.device)

    def refine(c0: torch.Tensor, cm: torch.Tensor, cp: torch.Tensor) -> torch.Tensor:
        denom = cm - 2 * c0 + cp
        step = torch.where(denom < 0, 0.5 * (cm - cp) / denom.clamp(max=-1e-12),
                           torch.zeros_like(c0))
        return step.clamp(-0.5, 0.5)

    c0 = corr[rows, iy, ix]
    dy = ys[iy] + refine(c0, corr[rows, (iy - 1) % h, ix], corr[rows, (iy + 1) % h, ix])
    dx = xs[ix] + refine(c0, corr[rows, iy, (ix - 1) % w], corr[rows, iy, (ix + 1) % w])
    return torch.stack([dy, dx], dim=1)


def _warp(mov: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mov(p + d)`` by bicubic resampling, and the mask of the pixels it covers."""
    n, _, h, w = mov.shape
    theta = torch.zeros(n, 2, 3, dtype=mov.dtype, device=mov.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2.0 * d[:, 1] / w  # grid_sample's coordinates run from -1 to 1
    theta[:, 1, 2] = 2.0 * d[:, 0] / h
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    warped = F.grid_sample(mov, grid, mode="bicubic", padding_mode="border",
                           align_corners=False)
    return warped, (grid.abs() <= 1.0).all(dim=-1)[:, None].to(mov.dtype)


@torch.no_grad()
def translation(ref: torch.Tensor, mov: torch.Tensor, max_shift: float, refinements: int = 2
                ) -> torch.Tensor:
    """Global translation ``d`` (``(N, 2)``, y then x) with ``mov(p) ≈ ref(p - d)`` for
    single-channel ``(N, H, W)`` images: phase correlation's (:func:`estimate_shift`), then
    ``refinements`` Gauss-Newton steps on the whole image (Lucas & Kanade, 1981), which
    remove the parabola's sub-pixel bias; at most ``max_shift`` on each axis."""
    d = estimate_shift(ref, mov, max_shift)
    gy, gx = torch.gradient(ref, dim=(1, 2))
    for _ in range(refinements):
        warped, covered = _warp(mov[:, None], d)
        m = covered[:, 0]
        r = (warped[:, 0] - ref) * m
        jy, jx = gy * m, gx * m
        a11, a12, a22 = (jy * jy).sum((1, 2)), (jy * jx).sum((1, 2)), (jx * jx).sum((1, 2))
        b1, b2 = (jy * r).sum((1, 2)), (jx * r).sum((1, 2))
        det = a11 * a22 - a12 * a12
        ok = det > 1e-9 * (a11 + a22).clamp(min=1e-12) ** 2  # else: no texture to align on
        safe = torch.where(ok, det, torch.ones_like(det))
        ey = torch.where(ok, (a22 * b1 - a12 * b2) / safe, torch.zeros_like(det))
        ex = torch.where(ok, (a11 * b2 - a12 * b1) / safe, torch.zeros_like(det))
        d = d - torch.stack([ey, ex], dim=1).clamp(-1.0, 1.0)
    return d.clamp(-max_shift, max_shift)


def align_to(ref: torch.Tensor, mov: torch.Tensor, max_shift: float, refinements: int = 2
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``mov`` ``(N, C, H, W)`` shifted onto ``ref`` (same shape) by the :func:`translation`
    of their channel means, and a ``(N, 1, H, W)`` mask of the pixels the shifted image
    covers (0 where it had no data)."""
    d = translation(ref.mean(dim=1), mov.mean(dim=1), max_shift, refinements)
    return _warp(mov, d.to(mov.dtype))


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FlowSeg(nn.Module):
    """Temporal segmenter: ``(N, 3·K, H, W)`` -> ``[aux, main]`` logits at 1/4 resolution.

    Parameters
    ----------
    cfg : FlowSegConfig
        Architecture (:data:`FLOWSEG_TINY` for the demo models).
    """

    def __init__(self, cfg: FlowSegConfig = FLOWSEG_TINY) -> None:
        super().__init__()
        self.cfg = cfg
        w, k = cfg.width, cfg.num_classes
        self.full_res = nn.Sequential(_block(cfg.in_channels, w), _block(w, w))
        self.half_res = nn.Sequential(_block(w, 2 * w), _block(2 * w, 2 * w))
        self.context = nn.Sequential(_block(2 * w, 3 * w), _block(3 * w, 3 * w, 2),
                                     _block(3 * w, 3 * w, 4))
        self.head = nn.Sequential(_block(5 * w, 2 * w), nn.Conv2d(2 * w, k, 1))
        self.aux_head = nn.Conv2d(3 * w, k, 1)
        self.fine_head: nn.Sequential | None = None
        if cfg.fine:  # starts as the upsampled 1/4 logits: its last layer is zero
            self.fine_head = nn.Sequential(_block(w + k, w), nn.Conv2d(w, k, 1))
            nn.init.zeros_(self.fine_head[1].weight)
            nn.init.zeros_(self.fine_head[1].bias)

    def changes(self, x: torch.Tensor) -> torch.Tensor:
        """The middle frame and every other frame's scaled difference from it (each other
        frame first aligned to the middle one where ``cfg.align``; 0 where it has no data)."""
        n, _, h, w = x.shape
        k = self.cfg.in_frames
        frames = x.reshape(n, k, 3, h, w)
        mid = k // 2
        centre = frames[:, mid]
        others = torch.cat([frames[:, :mid], frames[:, mid + 1:]], dim=1)
        if self.cfg.align:
            flat = others.reshape(n * (k - 1), 3, h, w)
            ref = centre.repeat_interleave(k - 1, dim=0)
            aligned, covered = align_to(ref, flat, self.cfg.max_shift)
            diffs = ((aligned - ref) * covered).reshape(n, k - 1, 3, h, w)
        else:
            diffs = others - centre[:, None]
        return torch.cat([centre, (diffs * self.cfg.diff_gain).flatten(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Segment the middle frame of each stack.

        Parameters
        ----------
        x : Tensor (N, 3 · in_frames, H, W)
            Normalised frames stacked frame-major; H and W multiples of 4.

        Returns
        -------
        [out_aux, out] : two Tensors (N, num_classes, H/4, W/4); ``out`` is (N,
        num_classes, H, W) with ``cfg.fine``
        """
        c = self.cfg.in_channels
        if x.dim() != 4 or x.shape[1] != c:
            raise InputShapeError(f"FlowSeg expects (N, {c}, H, W), got shape {tuple(x.shape)}")
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise InputShapeError(f"FlowSeg needs H and W divisible by 4, got "
                                  f"{tuple(x.shape[-2:])}")
        full = self.full_res(self.changes(x))
        half = self.half_res(F.max_pool2d(full, 2))
        ctx = self.context(F.max_pool2d(half, 2))
        main = self.head(torch.cat([ctx, F.avg_pool2d(half, 2)], dim=1))
        if self.fine_head is not None:
            up = F.interpolate(main, size=full.shape[-2:], mode="bilinear", align_corners=False)
            main = up + self.fine_head(torch.cat([full, up], dim=1))
        return [self.aux_head(ctx), main]
