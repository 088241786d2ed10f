"""The neighbourhood probe as a second stage of analysis: where the bleeding map peaks, does
what is there flow?

This project's stage, not the authors' (models/weights/demo/heldout-looks/README.md,
sessions 25-26). A clip network sees a clip through stride-16 features, where a bleeding
source of a few pixels is a fraction of one cell; the segmentation map finds such places
but also still blood. So at each prediction instant:

1. the model's segmentation net maps the instant's frame as AMAGI maps a clip's centre
   frame (the clip preprocessing: short side to the model's input size, centre crop;
   a temporal segmenter with its neighbouring frames);
2. the map's ``candidates`` highest local maxima (:func:`map_peaks`) are the places;
3. at each place a :class:`~models.patchnet.PatchNet` looks at a ``crop`` × ``crop``
   neighbourhood of ``frames`` frames ``step_s`` apart around the instant, on the frame
   resized as in step 1 but not cropped (so a neighbourhood at the crop's edge sees the
   frame beyond it; outside the frame it sees zeros, as in training), or resized to a whole
   multiple of that scale for a probe trained finer than the map (its ``short_side``: a
   source of a few map pixels then fills more of its view); a probe trained with
   ``stabilise`` takes each frame's neighbourhood where the view's motion carried the place
   (:func:`probe_neighbourhoods`); a probe of several
   networks (:class:`~models.patchnet.ProbeEnsemble`) gives the mean of their probabilities
   at each place;
4. the instant's probe score is the highest probability over its places.

With a memory (``memory_s`` > 0) the probe also looks again where it found bleeding shortly
before: the best place of each earlier instant within ``memory_s`` that scored at least
:data:`CARRY_SCORE` joins the instant's places (unless a place lies within
:data:`SAME_PLACE_PX` of it). The map loses a small source at some instants that it finds at
others (session 30: one of its 8 peaks lies on the bleeding at 62 % of bleeding instants,
one of the last second's at 75 %), while a source stays where it is. Only an instant's own
places are carried, never carried ones, so the scores do not depend on how instants are
batched.

:func:`fuse` combines the probe's scores with the clip network's probabilities (a moving
mean of the probe over ``smooth_s``, or with ``smooth_q`` its moving q-quantile, then a
weighted mean; :class:`ProbeUse` holds these numbers, from a model's ``model.json`` entry
``probe`` beside the probe's file). The probe flickers: inside a bleeding it scores high at
some instants and low at others, as the map's peaks move between places (session 39), and a
mean over a second dilutes its highs where an upper quantile keeps them.

The analysis reads the probe's frames in its one decoding pass over the video, beside the
clips' (:class:`ProbeStream` is fed from it); :meth:`NeighbourhoodProbe.score_video` is the
same pass on its own. Only the frames some pending instant still needs are held: memory is
bounded by the probe's span (``frames`` × ``step_s``), a batch of instants and the decoder's
buffer.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from amagi_plugin.transforms import FrameToTensor
from models.flowseg import translation
from models.patchnet import STABILISE_SHARE, PatchNetConfig, ProbeNet
from models.training.augment import resize_short, short_side_shape

if TYPE_CHECKING:  # the pipeline imports this module
    from amagi_plugin.pipeline import VideoLike

log = logging.getLogger(__name__)

#: :func:`view_shifts` finds the view's motion on the frames scaled down to about this short
#: side (pixels; by a whole factor, never below it)
VIEW_SHIFT_SIDE = 64
#: :func:`view_shifts` finds a motion in each of these rows × columns of tiles of the frame
#: and takes the one most tiles agree on (:func:`tiles_consensus`)
VIEW_SHIFT_TILES = (4, 5)
#: :func:`tiles_consensus`: two tiles' motions agree within this many pixels on each axis
#: (at the scale :func:`view_shifts` estimates on)
VIEW_SHIFT_AGREE = 0.75
#: :func:`lit_box`: a pixel darker than this (0-255) in every frame is outside the field stop
DARK_LEVEL = 16.0
#: :func:`lit_box`: the steps it shrinks by and its smallest size (shares of the frame's)
LIT_BOX_STEP = 0.05
LIT_BOX_MIN = 0.4

__all__ = ["MapGeometry", "NeighbourhoodProbe", "PairShifts", "ProbeStream", "ProbeUse",
           "fuse", "lit_box", "map_peaks", "moving_mean", "moving_quantile", "neighbourhoods",
           "probe_frames", "probe_neighbourhoods", "view_shifts"]


@dataclass(frozen=True)
class ProbeUse:
    """How an analysis uses a probe: the moving mean applied to its scores (seconds) and its
    weight (1: the probe alone, 0: the clip network alone) when :func:`fuse` combines them
    with the clip network's probabilities, and how long it remembers where it found bleeding
    (``memory_s``, module docstring; 0: it looks only at each instant's map peaks).
    ``smooth_q``: None, the scores' mean over ``smooth_s``; a number in (0, 1], their
    q-quantile there instead (1: the highest)."""

    weight: float = 0.5
    smooth_s: float = 1.0
    memory_s: float = 0.0
    smooth_q: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"probe weight must lie in [0, 1], got {self.weight}")
        for name in ("smooth_s", "memory_s"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"probe {name} must be >= 0, got {getattr(self, name)}")
        if self.smooth_q is not None and not 0.0 < self.smooth_q <= 1.0:
            raise ValueError(f"probe smooth_q must lie in (0, 1] or be null, got {self.smooth_q}")

    @classmethod
    def from_json(cls, entry: Any) -> tuple[tuple[str, ...], ProbeUse]:
        """A ``model.json`` entry ``probe``: ``"file.pth"`` or ``{"file": ..., "weight": w,
        "smooth_s": s, "memory_s": m, "smooth_q": q}`` (each but ``file`` optional) → the
        files' names and their use. ``file`` may list
        several probes of one configuration: the analysis reads the mean of their
        probabilities (:class:`~models.patchnet.ProbeEnsemble`)."""
        if isinstance(entry, str):
            entry = {"file": entry}
        files = entry.get("file") if isinstance(entry, Mapping) else None
        if isinstance(files, str):
            files = [files]
        if (not isinstance(files, list) or not files
                or not all(isinstance(f, str) and f for f in files)):
            raise ValueError("expected a file name or {\"file\": name or [names], \"weight\": "
                             f"..., \"smooth_s\": ..., \"memory_s\": ..., \"smooth_q\": ...}}, "
                             f"got {entry!r}")
        if len(set(files)) < len(files):
            raise ValueError(f"a probe file is listed twice: {files}")
        unknown = sorted(set(entry) - {"file", "weight", "smooth_s", "memory_s", "smooth_q"})
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        try:
            q = entry.get("smooth_q")
            use = cls(float(entry.get("weight", 0.5)), float(entry.get("smooth_s", 1.0)),
                      float(entry.get("memory_s", 0.0)), None if q is None else float(q))
        except (TypeError, ValueError) as e:
            raise ValueError(str(e)) from None
        return tuple(files), use


def probe_frames(frame: int, frame_count: int, fps: float, cfg: PatchNetConfig) -> list[int]:
    """The probe's frames around ``frame``: ``cfg.frames`` of them ``cfg.step_s`` apart
    (at least one frame), ``frames // 2`` before it, clamped to the video."""
    step = max(1, round(cfg.step_s * fps))
    return [min(frame_count - 1, max(0, frame + step * (t - cfg.frames // 2)))
            for t in range(cfg.frames)]


#: The view's shift (pixels, ``(y, x)``) of frame ``b`` against frame ``a`` by their numbers
#: ``(a, b)``: :func:`view_shifts`' pairs of consecutive frames, kept by a caller that reads
#: the same frames around several instants
PairShifts = dict[tuple[int, int], torch.Tensor]


def lit_box(grey: torch.Tensor) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the largest box centred on frames ``grey`` ``(U, H, W)`` (0-255)
    with their aspect, in steps of :data:`LIT_BOX_STEP` of their size down to
    :data:`LIT_BOX_MIN`, that is lit throughout (above :data:`DARK_LEVEL` in some frame, a
    dark speck among lit pixels lit): inside an endoscope's field stop. The stop stands still
    while the view moves behind it, and on the whole frame even a corner of it holds
    :func:`view_shifts`' estimate near zero (session 56: a round stop took about two thirds
    of the view's motion away). The whole frame where no such box is lit."""
    h, w = grey.shape[-2:]
    lit = (grey > DARK_LEVEL).any(0)
    lit |= F.avg_pool2d(lit.float()[None, None], 5, 1, 2, count_include_pad=False)[0, 0] > 0.5
    n = round(1 / LIT_BOX_STEP)
    for m in range(n, round(LIT_BOX_MIN * n) - 1, -1):
        bh, bw = max(1, round(h * m / n)), max(1, round(w * m / n))
        y0, x0 = (h - bh) // 2, (w - bw) // 2
        if lit[y0:y0 + bh, x0:x0 + bw].all():
            return y0, y0 + bh, x0, x0 + bw
    return 0, h, 0, w


def tiles_consensus(each: torch.Tensor, agree: float) -> torch.Tensor:
    """The motion ``(P, 2)`` most tiles agree on, from each tile's ``each`` ``(tiles, P,
    2)``: the median of the largest group of tiles whose motions lie within ``agree`` (on
    each axis) of one tile's, of equal groups the one about the smallest motion (a view
    that moves less adds less false motion when it is wrong). Where instruments cross most
    of the view each moves its own way, while the tissue's tiles move together: the largest
    group is the view's, where a median of all tiles would be pulled along (session 57)."""
    close = ((each[:, None] - each[None]).abs() <= agree).all(-1)  # (tiles, tiles, P)
    support = close.sum(1).to(each.dtype) - 1e-3 * each.norm(dim=-1)  # (tiles, P)
    best = support.argmax(0)  # (P,)
    members = close[best, :, torch.arange(each.shape[1])]  # (P, tiles)
    return torch.nanmedian(torch.where(members.T[..., None], each, torch.nan), dim=0).values


def view_shifts(stack: torch.Tensor, ref: int, max_shift: float,
                numbers: Sequence[int] | None = None,
                pairs: PairShifts | None = None) -> torch.Tensor:
    """The view's translation ``(T, 2)`` (y, x; pixels) of each frame of ``stack`` ``(T, C,
    H, W)`` against frame ``ref``: ``stack[t](p) ≈ stack[ref](p - d[t])``, chained from each
    pair of consecutive frames' translation: :func:`models.flowseg.translation` on the
    frames' channel mean, scaled down by a whole factor to a short side of
    :data:`VIEW_SHIFT_SIDE` px or more, inside the field stop (:func:`lit_box`), in each of
    :data:`VIEW_SHIFT_TILES` tiles, the one most tiles agree on (:func:`tiles_consensus`),
    so that instruments that cross the view do not carry the estimate with them (session
    52: on a whole frame one did; session 57: two large ones in a still view took the median
    of 2 × 3 tiles three times as far as the view moved). A pair is 0 between a frame and
    itself or an identical one; the result at most ``max_shift`` on each axis.

    ``numbers``: the frames' numbers in the video (default ``0 .. T-1``); ``pairs``: the
    pairs found so far by those numbers (:data:`PairShifts`), read and added to, so that a
    pair read around several instants is found once (session 53: seven pairs an instant
    otherwise, the probe's most costly step)."""
    t_len = stack.shape[0]
    numbers = list(range(t_len)) if numbers is None else list(numbers)
    pairs = {} if pairs is None else pairs
    keys = [(numbers[t], numbers[t + 1]) for t in range(t_len - 1)]
    todo = [t for t, key in enumerate(keys) if key not in pairs]
    found = stack.new_zeros((len(todo), 2))
    moved = [j for j, t in enumerate(todo)
             if keys[t][0] != keys[t][1] and not torch.equal(stack[t], stack[t + 1])]
    if moved:
        used = sorted({u for j in moved for u in (todo[j], todo[j] + 1)})
        at = {u: n for n, u in enumerate(used)}
        grey = stack[used].float().mean(dim=1, keepdim=True)
        y0, y1, x0, x1 = lit_box(grey[:, 0])
        grey = grey[..., y0:y1, x0:x1]
        k = max(1, min(grey.shape[-2:]) // VIEW_SHIFT_SIDE)
        grey = (F.avg_pool2d(grey, k) if k > 1 else grey)[:, 0]
        rows, cols = VIEW_SHIFT_TILES
        th, tw = grey.shape[-2] // rows, grey.shape[-1] // cols
        tiles = torch.stack([grey[:, r * th:(r + 1) * th, c * tw:(c + 1) * tw]
                             for r in range(rows) for c in range(cols)])  # (tiles, U, h, w)
        first = tiles[:, [at[todo[j]] for j in moved]]
        second = tiles[:, [at[todo[j] + 1] for j in moved]]
        each = translation(first.reshape(-1, th, tw), second.reshape(-1, th, tw),
                           max_shift / k).view(rows * cols, len(moved), 2)
        found[moved] = k * tiles_consensus(each, VIEW_SHIFT_AGREE).to(found.dtype)
    for j, t in enumerate(todo):
        pairs[keys[t]] = found[j]
    d = stack.new_zeros((t_len, 2))
    for t in range(ref + 1, t_len):
        d[t] = d[t - 1] + pairs[keys[t - 1]]
    for t in range(ref - 1, -1, -1):
        d[t] = d[t + 1] - pairs[keys[t]]
    return d.clamp(-max_shift, max_shift)


def probe_neighbourhoods(frames: Mapping[int, torch.Tensor], frame: int, frame_count: int,
                         fps: float, cfg: PatchNetConfig, places: Sequence[tuple[int, int]],
                         side: int | None = None,
                         known: PairShifts | None = None) -> torch.Tensor:
    """The probe's ``side`` × ``side`` neighbourhoods (its ``crop`` by default) of each place
    ``(y, x)`` over its frames around ``frame`` (:func:`probe_frames`), ``(len(places), T, C,
    side, side)``; with ``cfg.stabilise`` each frame's neighbourhood taken where the view
    carried the place to (:func:`view_shifts`, at most :data:`STABILISE_SHARE` of the frames'
    short side), so that what the view carries as it sways or pans stands still in it.
    ``known``: the view's shifts between frames already found (:data:`PairShifts`), read and
    added to."""
    numbers = probe_frames(frame, frame_count, fps, cfg)
    stack = torch.stack([frames[f] for f in numbers])
    shifts = None
    if cfg.stabilise:
        shifts = view_shifts(stack, cfg.frames // 2, STABILISE_SHARE * min(stack.shape[-2:]),
                             numbers, known)
    return neighbourhoods(stack, places, side or cfg.crop, shifts)


def map_peaks(p: torch.Tensor, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` highest local maxima (9 × 9) of a probability map's 3 × 3 mean, as
    ``(y, x, value)``, highest first (none where the map is flat at zero)."""
    pp = F.avg_pool2d(p[None, None].float(), 3, 1, 1)[0, 0]
    peak = (pp == F.max_pool2d(pp[None, None], 9, 1, 4)[0, 0]) & (pp > 1e-4)
    ys, xs = torch.nonzero(peak, as_tuple=True)
    order = torch.argsort(pp[ys, xs], descending=True)[:k]
    return [(int(ys[o]), int(xs[o]), float(pp[ys[o], xs[o]])) for o in order]


def neighbourhoods(stack: torch.Tensor, places: Sequence[tuple[int, int]], side: int,
                   shifts: torch.Tensor | None = None) -> torch.Tensor:
    """``(T, C, H, W)`` frames → ``(len(places), T, C, side, side)`` squares centred on each
    ``(y, x)``, zero outside the frames. ``shifts`` ``(T, 2)``: frame ``t``'s squares are
    centred on ``(y, x) + shifts[t]`` instead (bicubic, exact where a shift is whole)."""
    t, c, h, w = stack.shape
    if shifts is not None and len(places):
        whole = (shifts == shifts.round()).all(dim=1)
        if whole.all():  # plain slices, each frame's places moved by whole pixels
            return torch.stack([neighbourhoods(stack[k:k + 1], [
                (y + int(shifts[k, 0]), x + int(shifts[k, 1])) for y, x in places], side)[:, 0]
                for k in range(t)], dim=1)
        centres = torch.tensor(places, dtype=stack.dtype).view(-1, 1, 1, 2)  # (N, 1, 1, yx)
        offs = torch.arange(side, dtype=stack.dtype) - side // 2
        grid_y = centres[..., 0] + offs.view(1, side, 1)  # (N, side, 1)
        grid_x = centres[..., 1] + offs.view(1, 1, side)  # (N, 1, side)
        at = shifts.to(stack.dtype)
        gy = (grid_y[None] + at[:, 0].view(t, 1, 1, 1)).expand(t, -1, side, side)
        gx = (grid_x[None] + at[:, 1].view(t, 1, 1, 1)).expand(t, -1, side, side)
        grid = torch.stack([(2 * gx + 1) / w - 1, (2 * gy + 1) / h - 1], dim=-1)
        out = F.grid_sample(stack, grid.reshape(t, -1, side, 2), mode="bicubic",
                            padding_mode="zeros", align_corners=False)
        out = out.reshape(t, c, len(places), side, side).permute(2, 0, 1, 3, 4)
        if whole.any():  # exactly the pixels a whole shift names
            exact = neighbourhoods(stack[whole], places, side, shifts[whole])
            out[:, whole] = exact
        return out
    out = stack.new_zeros((len(places), t, c, side, side))
    for n, (y, x) in enumerate(places):
        y0, x0 = y - side // 2, x - side // 2
        ya, yb, xa, xb = max(0, y0), min(h, y0 + side), max(0, x0), min(w, x0 + side)
        if ya < yb and xa < xb:
            out[n, :, :, ya - y0:yb - y0, xa - x0:xb - x0] = stack[:, :, ya:yb, xa:xb]
    return out


@dataclass(frozen=True)
class MapGeometry:
    """The clip preprocessing split in two: :meth:`frame` (RGB → the frame at the model's
    scale, uncropped, 0-255) and :meth:`map_input` (that frame → the normalised centre
    crop the segmentation net sees); :meth:`to_frame` takes a map pixel back to the frame.
    Together they are :func:`~amagi_plugin.transforms.clip_frame_transform`.

    ``frame_size``: the short side of the frames :meth:`frame` makes when they are finer than
    the map (a probe that reads its neighbourhoods at a multiple of the model's scale,
    :attr:`~models.patchnet.PatchNetConfig.short_side`); :meth:`map_input` first scales such
    a frame down to ``size`` and :meth:`to_frame` scales a map pixel up to it. None: ``size``.
    """

    size: int
    mean: Sequence[float]
    std: Sequence[float]
    frame_size: int | None = None

    def __post_init__(self) -> None:
        if self.side < self.size or self.side % self.size:
            raise ValueError(f"frames of short side {self.side} px are not a whole multiple "
                             f"of the map's {self.size} px")

    @property
    def side(self) -> int:
        """The short side of :meth:`frame`'s frames."""
        return self.size if self.frame_size is None else self.frame_size

    @property
    def scale(self) -> int:
        """How many frame pixels a map pixel spans on each axis."""
        return self.side // self.size

    def frame(self, rgb: np.ndarray) -> torch.Tensor:
        return resize_short(FrameToTensor()(rgb), self.side)

    def offset(self, shape: Sequence[int]) -> tuple[int, int]:
        """Top-left of the centre crop in a frame of ``shape (..., H, W)`` at the map's
        scale (MONAI's ``CenterSpatialCrop``)."""
        return shape[-2] // 2 - self.size // 2, shape[-1] // 2 - self.size // 2

    def map_input(self, frame: torch.Tensor) -> torch.Tensor:
        frame = resize_short(frame, self.size)  # itself when already at the map's scale
        oy, ox = self.offset(frame.shape)
        return self.normalise(frame[:, oy:oy + self.size, ox:ox + self.size])

    def normalise(self, frame: torch.Tensor) -> torch.Tensor:
        """A frame at the model's scale (0-255), normalised as the clips are, uncropped."""
        mean = torch.tensor(self.mean, dtype=frame.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=frame.dtype).view(3, 1, 1)
        return (frame - mean) / std

    def to_frame(self, y: int, x: int, shape: Sequence[int]) -> tuple[int, int]:
        """Map pixel ``(y, x)`` → the pixel of a :meth:`frame` of ``shape`` at its centre."""
        h, w = shape[-2], shape[-1]
        mh, mw = short_side_shape(h, w, self.size)  # the frame at the map's scale
        oy, ox = self.offset((mh, mw))
        return (min(h - 1, int((y + oy + 0.5) * h / mh)),
                min(w - 1, int((x + ox + 0.5) * w / mw)))


SegmentationFn = Callable[[torch.Tensor], torch.Tensor]  # (N, 3K, S, S) → map (N, S, S)
WindowFn = Callable[[int], Sequence[int]]  # frame → the segmenter's frames around it


class NeighbourhoodProbe:
    """Steps 1-4 of the module docstring over chosen frames of a video.

    Parameters
    ----------
    net
        The trained probe (its configuration says how many peaks and at which scale).
    segment
        The segmentation map of a batch of normalised map inputs (``(N, 3·K, S, S)`` →
        probabilities ``(N, S, S)``).
    geometry
        The model's clip preprocessing (:class:`MapGeometry`). The probe's frames are at its
        ``short_side``: the map's scale or a whole multiple of it (a probe that sees small
        sources at a finer scale than the map; :attr:`geometry` is then this one with that
        ``frame_size``, and the frames fed to the probe are at that scale).

    bf16
        The probe's network under bfloat16 autocast (the speed switch; its scores stay within
        0.004 of fp32 on the demo's probe, 2.8 times faster on an AMX CPU, session 29). The
        places come from ``segment``, which the analyzer keeps in fp32.
    run
        What computes ``net``'s logits of a batch of neighbourhoods instead of ``net`` itself
        (its compiled form on another backend, :mod:`amagi_plugin.backends`); None: ``net``.

    Each method takes ``window``: the frames the segmenter sees around a frame (``[frame]``
    for a single-frame segmenter).
    """

    def __init__(self, net: ProbeNet, segment: SegmentationFn, geometry: MapGeometry,
                 device: str = "cpu", batch_size: int = 32, bf16: bool = False,
                 run: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if geometry.side != net.cfg.short_side:
            try:  # a probe finer than the map reads its own frames (MapGeometry.frame_size)
                geometry = replace(geometry, frame_size=net.cfg.short_side)
            except ValueError:
                raise ValueError(f"the probe was trained on frames of short side "
                                 f"{net.cfg.short_side} px, this model's maps are "
                                 f"{geometry.size} (a probe reads frames at a whole multiple "
                                 f"of the map's scale)") from None
        self.net = net.eval().to(device)
        self.segment = segment
        self.geometry = geometry
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.bf16 = bf16
        self.run = self.net if run is None else run

    @property
    def cfg(self) -> PatchNetConfig:
        return self.net.cfg

    def places(self, frames: Mapping[int, torch.Tensor], targets: Sequence[int],
               window: WindowFn, maps: Mapping[int, torch.Tensor] | None = None
               ) -> list[list[tuple[int, int, float]]]:
        """Each target frame's map peaks in frame coordinates ``(y, x, value)``; ``frames``
        holds each target's segmenter window at the probe's scale (:meth:`MapGeometry.frame`
        of :attr:`geometry`). ``maps``: targets whose
        map is already known (``(S, S)`` probabilities, as :attr:`segment` gives them: the
        clip network's own map of the same input); the others are segmented here."""
        if not targets:
            return []
        maps = maps or {}
        todo = [i for i in targets if i not in maps]
        if todo:
            x = torch.stack([torch.cat([self.geometry.map_input(frames[f]) for f in window(i)])
                             for i in todo])
            maps = {**maps, **dict(zip(todo, self.segment(x.to(self.device)).cpu(),
                                       strict=True))}
        shape = frames[targets[0]].shape
        return [[(*self.geometry.to_frame(y, x_, shape), v)
                 for y, x_, v in map_peaks(maps[i], self.cfg.candidates)] for i in targets]

    def scores(self, frames: Mapping[int, torch.Tensor], targets: Sequence[int],
               window: WindowFn, frame_count: int, fps: float,
               maps: Mapping[int, torch.Tensor] | None = None,
               shifts: PairShifts | None = None) -> np.ndarray:
        """The probe score of each target frame (0 where the map has no peak); ``maps`` as in
        :meth:`places`, ``shifts`` as in :meth:`place_scores`."""
        return self.scores_at(frames, targets, self.places(frames, targets, window, maps),
                              frame_count, fps, shifts)

    def scores_at(self, frames: Mapping[int, torch.Tensor], targets: Sequence[int],
                  found: Sequence[Sequence[tuple[int, int, float]]], frame_count: int,
                  fps: float, shifts: PairShifts | None = None) -> np.ndarray:
        """The probe score of each target frame at its places ``found`` (:meth:`places`;
        0 where there are none)."""
        return np.array([p.max(initial=0.0) for p in
                         self.place_scores(frames, targets, found, frame_count, fps, shifts)])

    @torch.inference_mode()
    def place_scores(self, frames: Mapping[int, torch.Tensor], targets: Sequence[int],
                     found: Sequence[Sequence[tuple[int, ...]]], frame_count: int,
                     fps: float, shifts: PairShifts | None = None
                     ) -> list[np.ndarray]:
        """The probe's probability at each place ``(y, x, ...)`` of each target frame;
        ``shifts``: the view's shifts between frames, kept between calls on the same frames
        (:func:`probe_neighbourhoods`' ``known``)."""
        crops, sizes = [], []
        for i, places in zip(targets, found, strict=True):
            sizes.append(len(places))
            if places:
                crops.append(probe_neighbourhoods(frames, i, frame_count, fps, self.cfg,
                                                  [(y, x) for y, x, *_ in places],
                                                  known=shifts))
        if not crops:
            return [np.zeros(0) for _ in targets]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.run(torch.cat(crops).to(self.device))
        p = torch.sigmoid(logits.float()).double().cpu().numpy()
        return np.split(p, np.cumsum(sizes)[:-1])

    def stream(self, targets: Sequence[int], window: WindowFn, frame_count: int, fps: float,
               progress: Callable[[int, int], None] | None = None, memory_s: float = 0.0,
               maps_given: Sequence[int] = ()) -> ProbeStream:
        """A :class:`ProbeStream` scoring ``targets`` from frames fed to it in order (and the
        maps of ``maps_given`` handed to it, :meth:`ProbeStream.give_map`)."""
        return ProbeStream(self, targets, window, frame_count, fps, progress, memory_s,
                           maps_given)

    def score_video(self, video: VideoLike, targets: Sequence[int], window: WindowFn,
                    progress: Callable[[int, int], None] | None = None,
                    memory_s: float = 0.0) -> np.ndarray:
        """The probe score at each of ``targets`` (0-based frame indices, ascending), read
        in one pass over the video; ``nan`` where a needed frame was not delivered.
        ``memory_s``: how long places where the probe found bleeding are looked at again
        (module docstring). The analysis feeds its :meth:`stream` from the clips' own
        decoding instead."""
        stream = self.stream(targets, window, video.frame_count, video.fps, progress, memory_s)
        if stream.wanted:
            for index, _t, rgb in video.frames(min(stream.wanted), max(stream.wanted) + 1,
                                               wanted=stream.wanted):
                stream.feed(index, self.geometry.frame(rgb))
        return stream.finish()

class ProbeStream:
    """One pass of a :class:`NeighbourhoodProbe` over a video: frames at the probe's scale
    (:meth:`MapGeometry.frame` of its ``geometry``) are fed in ascending order, whichever
    decoder reads them; only those some pending instant still needs are held, and instants
    are scored in batches as soon as their frames are in. :meth:`finish` returns each
    target's score (``nan`` where a needed frame was never fed).

    ``maps_given``: targets whose segmentation map the caller hands over
    (:meth:`give_map`: the clip network's map of its centred clip, the same input), so the
    probe does not map them again; such a target waits for its map as for its frames, and
    one whose map never comes is mapped here when the stream finishes."""

    def __init__(self, probe: NeighbourhoodProbe, targets: Sequence[int], window: WindowFn,
                 frame_count: int, fps: float,
                 progress: Callable[[int, int], None] | None = None,
                 memory_s: float = 0.0, maps_given: Sequence[int] = ()) -> None:
        self.probe, self.window = probe, window
        self.frame_count, self.fps, self.progress = frame_count, fps, progress
        self.targets = list(targets)
        self.needs = {i: sorted({*probe_frames(i, frame_count, fps, probe.cfg), *window(i)})
                      for i in self.targets}
        #: the frames (0-based) the probe reads
        self.wanted = frozenset(f for fs in self.needs.values() for f in fs)
        self.memory = (_PlaceMemory(round(memory_s * fps), SAME_PLACE_PX * probe.geometry.scale)
                       if memory_s > 0 else None)
        self.out = np.full(len(self.targets), np.nan)
        self.maps_given = frozenset(maps_given) & frozenset(self.targets)
        self._maps: dict[int, torch.Tensor] = {}  # given, not yet used
        self._mapped: set[int] = set()  # every target given so far
        self._pending = deque(enumerate(self.targets))
        self._held: dict[int, torch.Tensor] = {}
        self._pairs: PairShifts = {}  # a stabilising probe's, between the frames held
        self._ready: list[tuple[int, int]] = []
        self._fed = -1  # the last frame fed
        self._done = 0

    def feed(self, index: int, frame: torch.Tensor) -> None:
        """Frame ``index`` at the probe's scale; frames the probe does not read are ignored."""
        if index not in self.wanted:
            return
        self._held[index] = frame
        self._fed = index
        self._advance()

    def give_map(self, target: int, p: torch.Tensor) -> None:
        """Target ``target``'s segmentation map ``(S, S)`` (probabilities, as the probe's
        ``segment`` gives them); ignored for a target not in ``maps_given``."""
        if target in self.maps_given and target not in self._mapped:  # the first one only
            self._mapped.add(target)
            self._maps[target] = p
            self._advance()

    def _advance(self) -> None:
        pending, needs, maps = self._pending, self.needs, self._maps
        while pending and needs[pending[0][1]][-1] <= self._fed and (
                pending[0][1] not in self.maps_given or pending[0][1] in maps):
            self._ready.append(pending.popleft())
        if len(self._ready) >= self.probe.batch_size:
            self._flush()
        if not self._ready:  # drop what no pending instant needs
            first = needs[pending[0][1]][0] if pending else self._fed + 1
            for f in [f for f in self._held if f < first]:
                del self._held[f]
            for key in [key for key in self._pairs if key[0] < first]:
                del self._pairs[key]

    def finish(self) -> np.ndarray:
        """Every target's score; those whose frames never came (the video ended early) are
        ``nan``."""
        self._ready += self._pending
        self._pending.clear()
        if self._ready:
            self._flush()
        return self.out

    def _flush(self) -> None:
        held, probe = self._held, self.probe
        keep = [(k, i) for k, i in self._ready if all(f in held for f in self.needs[i])]
        if keep:
            ids = [i for _, i in keep]
            maps = {i: self._maps[i] for i in ids if i in self._maps}
            self.out[[k for k, _ in keep]] = (
                probe.scores(held, ids, self.window, self.frame_count, self.fps, maps,
                             self._pairs)
                if self.memory is None else self._scores_with_memory(ids, self.memory, maps))
        for _, i in self._ready:
            self._maps.pop(i, None)
        self._done += len(self._ready)
        self._ready.clear()
        if self.progress:
            self.progress(self._done, len(self.targets))

    def _scores_with_memory(self, targets: Sequence[int], memory: _PlaceMemory,
                            maps: Mapping[int, torch.Tensor]) -> np.ndarray:
        """Each target's score at its own places, then at the places ``memory`` carries to
        it (earlier targets' best places, this batch's included); the higher of the two."""
        probe, frames, n, fps = self.probe, self._held, self.frame_count, self.fps
        found = probe.places(frames, targets, self.window, maps)
        shifts = self._pairs
        own = probe.place_scores(frames, targets, found, n, fps, shifts)
        carried = []
        for i, places, p in zip(targets, found, own, strict=True):
            carried.append(memory.recall(i, places))  # before i is remembered: earlier ones
            if p.size and p.max() >= CARRY_SCORE:
                memory.remember(i, places[int(np.argmax(p))][:2])
        again = probe.place_scores(frames, targets, carried, n, fps, shifts)
        return np.array([max(a.max(initial=0.0), b.max(initial=0.0))
                         for a, b in zip(own, again, strict=True)])


#: The probe's probability at which a place is remembered (memory, module docstring).
CARRY_SCORE = 0.5
#: A remembered place this close (pixels at the map's scale, either axis) to a place already
#: looked at is not looked at again; map peaks are at least 5 px apart (9 × 9 maxima).
SAME_PLACE_PX = 4


class _PlaceMemory:
    """Best places of recent instants (frame, (y, x)), kept ``frames`` frames; places within
    ``same_px`` of each other (the probe's frame pixels) are one."""

    def __init__(self, frames: int, same_px: int = SAME_PLACE_PX) -> None:
        self.frames = max(1, frames)
        self.same_px = same_px
        self.seen: deque[tuple[int, tuple[int, int]]] = deque()

    def remember(self, frame: int, place: tuple[int, int]) -> None:
        self.seen.append((frame, place))

    def recall(self, frame: int, places: Sequence[tuple[int, ...]]) -> list[tuple[int, int]]:
        """The remembered places of the ``frames`` frames before ``frame`` (newest first;
        frames are recalled in ascending order, each before it is remembered), none within
        ``same_px`` of ``places`` or of each other."""
        while self.seen and self.seen[0][0] < frame - self.frames:
            self.seen.popleft()
        taken = [(y, x) for y, x, *_ in places]
        out: list[tuple[int, int]] = []
        for _f, (y, x) in reversed(self.seen):
            if all(max(abs(y - ty), abs(x - tx)) > self.same_px for ty, tx in taken):
                taken.append((y, x))
                out.append((y, x))
        return out


def fuse(clip: np.ndarray, probe: np.ndarray, rate_hz: float, use: ProbeUse) -> np.ndarray:
    """``(1 - w) · clip + w · probe`` per instant, the probe's scores first averaged over
    ``use.smooth_s`` seconds (a centred moving mean, edges repeated; with ``use.smooth_q``,
    their moving q-quantile); where the probe has no score (``nan``), the clip network's
    probability stands."""
    clip = np.asarray(clip, dtype=np.float64)
    probe = np.asarray(probe, dtype=np.float64)
    if clip.shape != probe.shape:
        raise ValueError(f"clip {clip.shape} and probe {probe.shape} differ")
    known = ~np.isnan(probe)
    width = max(1, round(use.smooth_s * rate_hz))
    scores = np.where(known, probe, clip)
    filled = (moving_mean(scores, width) if use.smooth_q is None
              else moving_quantile(scores, width, use.smooth_q))
    return np.where(known, (1 - use.weight) * clip + use.weight * filled, clip)


def _edge_padded(x: np.ndarray, width: int) -> np.ndarray | None:
    """``x`` (float64) padded so each sample has a centred window of ``width``, edges
    repeated; None when there is nothing to smooth (``width`` <= 1 or no sample)."""
    if width <= 1 or x.size == 0:
        return None
    return np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")


def moving_mean(x: np.ndarray, width: int) -> np.ndarray:
    """``x`` averaged over ``width`` consecutive samples, centred, edges repeated."""
    x = np.asarray(x, dtype=np.float64)
    padded = _edge_padded(x, width)
    if padded is None:
        return x.copy()
    return np.convolve(padded, np.ones(width) / width, "valid")


def moving_quantile(x: np.ndarray, width: int, q: float) -> np.ndarray:
    """The ``q``-quantile (linear interpolation; 1: the highest) of ``width`` consecutive
    samples of ``x``, centred, edges repeated: the windows of :func:`moving_mean`."""
    x = np.asarray(x, dtype=np.float64)
    padded = _edge_padded(x, width)
    if padded is None:
        return x.copy()
    return np.quantile(np.lib.stride_tricks.sliding_window_view(padded, width), q, axis=1)
