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
   frame beyond it; outside the frame it sees zeros, as in training);
4. the instant's probe score is the highest probability over its places.

:func:`fuse` combines the probe's scores with the clip network's probabilities (a moving
mean of the probe over ``smooth_s``, then a weighted mean; :class:`ProbeUse` holds these
two numbers, from a model's ``model.json`` entry ``probe`` beside the probe's file).

Frames are decoded once more for this stage, in order, and only those some pending instant
still needs are held: memory is bounded by the probe's span (1.4 s) and a batch of instants.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from amagi_plugin.transforms import FrameToTensor
from models.patchnet import PatchNet, PatchNetConfig
from models.training.augment import resize_short

if TYPE_CHECKING:  # the pipeline imports this module
    from amagi_plugin.pipeline import VideoLike

log = logging.getLogger(__name__)

__all__ = ["MapGeometry", "NeighbourhoodProbe", "ProbeUse", "fuse", "map_peaks",
           "moving_mean", "neighbourhoods", "probe_frames"]


@dataclass(frozen=True)
class ProbeUse:
    """How an analysis combines a probe's scores with the clip network's probabilities
    (:func:`fuse`): the moving mean applied to the probe's scores (seconds) and the probe's
    weight (1: the probe alone, 0: the clip network alone)."""

    weight: float = 0.5
    smooth_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"probe weight must lie in [0, 1], got {self.weight}")
        if not self.smooth_s >= 0.0:
            raise ValueError(f"probe smooth_s must be >= 0, got {self.smooth_s}")

    @classmethod
    def from_json(cls, entry: Any) -> tuple[str, ProbeUse]:
        """A ``model.json`` entry ``probe``: ``"file.pth"`` or ``{"file": ..., "weight": w,
        "smooth_s": s}`` → the file's name and its use."""
        if isinstance(entry, str):
            entry = {"file": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
            raise ValueError("expected a file name or {\"file\": ..., \"weight\": ..., "
                             f"\"smooth_s\": ...}}, got {entry!r}")
        unknown = sorted(set(entry) - {"file", "weight", "smooth_s"})
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        try:
            use = cls(float(entry.get("weight", 0.5)), float(entry.get("smooth_s", 1.0)))
        except (TypeError, ValueError) as e:
            raise ValueError(str(e)) from None
        return entry["file"], use


def probe_frames(frame: int, frame_count: int, fps: float, cfg: PatchNetConfig) -> list[int]:
    """The probe's frames around ``frame``: ``cfg.frames`` of them ``cfg.step_s`` apart
    (at least one frame), ``frames // 2`` before it, clamped to the video."""
    step = max(1, round(cfg.step_s * fps))
    return [min(frame_count - 1, max(0, frame + step * (t - cfg.frames // 2)))
            for t in range(cfg.frames)]


def map_peaks(p: torch.Tensor, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` highest local maxima (9 × 9) of a probability map's 3 × 3 mean, as
    ``(y, x, value)``, highest first (none where the map is flat at zero)."""
    pp = F.avg_pool2d(p[None, None].float(), 3, 1, 1)[0, 0]
    peak = (pp == F.max_pool2d(pp[None, None], 9, 1, 4)[0, 0]) & (pp > 1e-4)
    ys, xs = torch.nonzero(peak, as_tuple=True)
    order = torch.argsort(pp[ys, xs], descending=True)[:k]
    return [(int(ys[o]), int(xs[o]), float(pp[ys[o], xs[o]])) for o in order]


def neighbourhoods(stack: torch.Tensor, places: Sequence[tuple[int, int]], side: int
                   ) -> torch.Tensor:
    """``(T, C, H, W)`` frames → ``(len(places), T, C, side, side)`` squares centred on each
    ``(y, x)``, zero outside the frames."""
    t, c, h, w = stack.shape
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
    Together they are :func:`~amagi_plugin.transforms.clip_frame_transform`."""

    size: int
    mean: Sequence[float]
    std: Sequence[float]

    def frame(self, rgb: np.ndarray) -> torch.Tensor:
        return resize_short(FrameToTensor()(rgb), self.size)

    def offset(self, shape: Sequence[int]) -> tuple[int, int]:
        """Top-left of the centre crop in a frame of ``shape (..., H, W)`` (MONAI's
        ``CenterSpatialCrop``)."""
        return shape[-2] // 2 - self.size // 2, shape[-1] // 2 - self.size // 2

    def map_input(self, frame: torch.Tensor) -> torch.Tensor:
        oy, ox = self.offset(frame.shape)
        return self.normalise(frame[:, oy:oy + self.size, ox:ox + self.size])

    def normalise(self, frame: torch.Tensor) -> torch.Tensor:
        """A frame at the model's scale (0-255), normalised as the clips are, uncropped."""
        mean = torch.tensor(self.mean, dtype=frame.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=frame.dtype).view(3, 1, 1)
        return (frame - mean) / std

    def to_frame(self, y: int, x: int, shape: Sequence[int]) -> tuple[int, int]:
        oy, ox = self.offset(shape)
        return min(shape[-2] - 1, y + oy), min(shape[-1] - 1, x + ox)


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
        The model's clip preprocessing (:class:`MapGeometry`); its ``size`` must be the
        probe's ``short_side``.

    bf16
        The probe's network under bfloat16 autocast (the speed switch; its scores stay within
        0.004 of fp32 on the demo's probe, 2.8 times faster on an AMX CPU, session 29). The
        places come from ``segment``, which the analyzer keeps in fp32.

    Each method takes ``window``: the frames the segmenter sees around a frame (``[frame]``
    for a single-frame segmenter).
    """

    def __init__(self, net: PatchNet, segment: SegmentationFn, geometry: MapGeometry,
                 device: str = "cpu", batch_size: int = 32, bf16: bool = False) -> None:
        if geometry.size != net.cfg.short_side:
            raise ValueError(f"the probe was trained on frames of short side "
                             f"{net.cfg.short_side} px, this model's maps are {geometry.size}")
        self.net = net.eval().to(device)
        self.segment = segment
        self.geometry = geometry
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.bf16 = bf16

    @property
    def cfg(self) -> PatchNetConfig:
        return self.net.cfg

    def places(self, frames: Mapping[int, torch.Tensor], targets: Sequence[int],
               window: WindowFn) -> list[list[tuple[int, int, float]]]:
        """Each target frame's map peaks in frame coordinates ``(y, x, value)``; ``frames``
        holds each target's segmenter window at the model's scale."""
        if not targets:
            return []
        x = torch.stack([torch.cat([self.geometry.map_input(frames[f]) for f in window(i)])
                         for i in targets])
        shape = frames[targets[0]].shape
        out = []
        for p in self.segment(x.to(self.device)).cpu():
            out.append([(*self.geometry.to_frame(y, x_, shape), v)
                        for y, x_, v in map_peaks(p, self.cfg.candidates)])
        return out

    def scores(self, frames: Mapping[int, torch.Tensor], targets: Sequence[int],
               window: WindowFn, frame_count: int, fps: float) -> np.ndarray:
        """The probe score of each target frame (0 where the map has no peak)."""
        return self.scores_at(frames, targets, self.places(frames, targets, window),
                              frame_count, fps)

    @torch.inference_mode()
    def scores_at(self, frames: Mapping[int, torch.Tensor], targets: Sequence[int],
                  found: Sequence[Sequence[tuple[int, int, float]]], frame_count: int,
                  fps: float) -> np.ndarray:
        """The probe score of each target frame at its places ``found`` (:meth:`places`;
        0 where there are none)."""
        out = np.zeros(len(targets))
        crops, owner = [], []
        for k, (i, places) in enumerate(zip(targets, found, strict=True)):
            if not places:
                continue
            stack = torch.stack([frames[f] for f in probe_frames(i, frame_count, fps, self.cfg)])
            crops.append(neighbourhoods(stack, [(y, x) for y, x, _ in places], self.cfg.crop))
            owner += [k] * len(places)
        if crops:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.net(torch.cat(crops).to(self.device))
            p = torch.sigmoid(logits.float()).double().cpu()
            np.maximum.at(out, np.array(owner), p.numpy())
        return out

    def score_video(self, video: VideoLike, targets: Sequence[int], window: WindowFn,
                    progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The probe score at each of ``targets`` (0-based frame indices, ascending), read
        in one pass over the video; ``nan`` where a needed frame was not delivered."""
        n, fps = video.frame_count, video.fps
        needs = {i: sorted({*probe_frames(i, n, fps, self.cfg), *window(i)})
                 for i in targets}
        wanted = {f for fs in needs.values() for f in fs}
        out = np.full(len(targets), np.nan)
        if not wanted:
            return out
        pending = deque(enumerate(targets))
        held: dict[int, torch.Tensor] = {}
        ready: list[tuple[int, int]] = []
        done = 0

        def flush() -> None:
            nonlocal done
            keep = [(k, i) for k, i in ready if all(f in held for f in needs[i])]
            if keep:
                out[[k for k, _ in keep]] = self.scores(held, [i for _, i in keep], window, n, fps)
            done += len(ready)
            ready.clear()
            if progress:
                progress(done, len(targets))

        for index, _t, rgb in video.frames(min(wanted), max(wanted) + 1, wanted=wanted):
            held[index] = self.geometry.frame(rgb)
            while pending and needs[pending[0][1]][-1] <= index:
                ready.append(pending.popleft())
            if len(ready) >= self.batch_size:
                flush()
            if not ready:  # drop what no pending instant needs
                first = needs[pending[0][1]][0] if pending else index + 1
                for f in [f for f in held if f < first]:
                    del held[f]
        ready += pending  # the video ended early: their missing frames make them nan
        if ready:
            flush()
        return out


def fuse(clip: np.ndarray, probe: np.ndarray, rate_hz: float, use: ProbeUse) -> np.ndarray:
    """``(1 - w) · clip + w · probe`` per instant, the probe's scores first averaged over
    ``use.smooth_s`` seconds (a centred moving mean, edges repeated); where the probe has no
    score (``nan``), the clip network's probability stands."""
    clip = np.asarray(clip, dtype=np.float64)
    probe = np.asarray(probe, dtype=np.float64)
    if clip.shape != probe.shape:
        raise ValueError(f"clip {clip.shape} and probe {probe.shape} differ")
    known = ~np.isnan(probe)
    filled = moving_mean(np.where(known, probe, clip), max(1, round(use.smooth_s * rate_hz)))
    return np.where(known, (1 - use.weight) * clip + use.weight * filled, clip)


def moving_mean(x: np.ndarray, width: int) -> np.ndarray:
    """``x`` averaged over ``width`` consecutive samples, centred, edges repeated."""
    x = np.asarray(x, dtype=np.float64)
    if width <= 1 or x.size == 0:
        return x.copy()
    padded = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, np.ones(width) / width, "valid")
