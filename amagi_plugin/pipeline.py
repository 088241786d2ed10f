"""Whole-video bleeding analysis: decode → MONAI transforms → AMAGI → post-processing → masks.

Decoding and preprocessing run in a background thread that stays ahead of inference
through a bounded queue, so the two overlap and memory does not grow with the video:
only the frames of the clips in flight are held. Each clip is computed once and shared by
the three predictions that use it (:mod:`amagi_plugin.schedule`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from amagi_plugin.analysis import MASK_SCALES, Timeline, find_events, smooth_decisions
from amagi_plugin.backends import CompiledClipNetwork, check_backend, compiled_probe
from amagi_plugin.fastpath import FastPath
from amagi_plugin.inferers import ClipProbabilityInferer, MaskInferer, bleeding_probability
from amagi_plugin.probing import MapGeometry, NeighbourhoodProbe, ProbeStream, ProbeUse, fuse
from amagi_plugin.schedule import (
    ClipSchedule,
    naive_clip_probabilities,
    shared_clip_probabilities,
)
from amagi_plugin.transforms import (
    AUTHORS_MEAN,
    AUTHORS_STD,
    clip_frame_transform,
    native_frame_transform,
)
from dicom_io.results import BleedingEvent, CaseIndex
from models.hrnet_ocr import main_logits
from models.patchnet import ProbeNet
from models.refiner import TemporalRefiner

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


class VideoLike(Protocol):
    """What the pipeline needs of a video (``dicom_io.video.open_video`` provides it)."""

    frame_count: int
    fps: float

    def frames(self, start: int = 0, stop: int | None = None, step: int = 1, *,
               workers: int = 1, wanted: Collection[int] | None = None
               ) -> Iterator[tuple[int, float, np.ndarray]]: ...


@dataclass(frozen=True)
class AnalysisOptions:
    """Knobs of one analysis (from the ``[model]`` and ``[analysis]`` configuration)."""

    prediction_hz: float = 10.0
    batch_size: int = 8
    device: str = "cpu"
    bf16: bool = False
    fast: bool = False  # the speed switch (amagi_plugin.fastpath); False: exact fp32
    backend: str = "torch"  # what runs the clip network and probe (amagi_plugin.backends)
    threshold: float = 0.5
    smoothing: str = "morphology"
    smoothing_s: float = 1.0
    hold_threshold: float | None = None  # hysteresis (amagi_plugin.analysis); None: none
    decode_ahead: int = 64  # frames buffered between the decoder and the network
    decode_workers: int = 1  # decoding threads (segments key frame to key frame); 1 = serial
    key_frame_masks: bool = True
    mask_scale: str = "model"  # analysis.mask_scale: model or native (segment_frames)
    share_clips: bool = True  # False: the authors' three fresh clips per prediction (baseline)

    def __post_init__(self) -> None:
        if self.mask_scale not in MASK_SCALES:
            raise ValueError(f"mask_scale must be one of {', '.join(MASK_SCALES)}, "
                             f"got {self.mask_scale!r}")


@dataclass
class AnalysisResult:
    """Everything one analysis produced, in memory (small: no frames but the key frames)."""

    schedule: ClipSchedule
    timeline: Timeline
    probabilities: np.ndarray  # bleeding probability per prediction, (P,)
    decisions: np.ndarray  # post-processed binary decision per prediction, (P,)
    events: list[BleedingEvent]
    index: CaseIndex
    key_frames: dict[int, np.ndarray] = field(default_factory=dict)  # 1-based → RGB (H, W, 3)
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # 1-based → bool (H, W)
    timings: dict[str, float] = field(default_factory=dict)  # stage → seconds
    clips_computed: int = 0
    #: the clip network's bleeding probability per prediction before any probe or refiner
    clip_probabilities: np.ndarray | None = None
    #: the neighbourhood probe's score per prediction (a model with a probe), before fusion
    probe_scores: np.ndarray | None = None


class _End:
    """Sentinel closing the frame queue (carries the decoder's exception, if any)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


@dataclass(frozen=True)
class SideFrames:
    """A second consumer of a :class:`FramePrefetcher`'s decoding: the frames it reads, their
    preprocessing for it, and optionally how the first consumer's preprocessing of the same
    frame follows from that result (``derive``; it must give exactly what the first
    consumer's ``transform`` gives, and saves computing the shared part twice)."""

    wanted: Collection[int]
    transform: Callable[[np.ndarray], Any]
    derive: Callable[[Any], torch.Tensor] | None = None


class FramePrefetcher:
    """Decodes and preprocesses the needed frames in a thread, ahead of the consumer.

    Every frame up to the last needed one is decoded, but only the needed ones are converted
    to RGB (``wanted``). ``get(index)`` returns the preprocessed frame ``index`` once
    decoded; frames before ``release_before(index)`` are dropped. The queue bound keeps
    memory constant.

    ``side``: a second consumer's frames and its own preprocessing (:class:`SideFrames`: the
    probe's, which reads the same decoded frames). They come out, in order, from
    :meth:`take_side` (what the consumer's ``get`` calls have pulled so far) and
    :meth:`drain_side` (the rest, once the first consumer is done).
    """

    def __init__(self, video: VideoLike, needed: Sequence[int], transform: Callable[[np.ndarray], Any],
                 capacity: int, timings: dict[str, float], decode_workers: int = 1,
                 side: SideFrames | None = None) -> None:
        self._video = video
        self._workers = decode_workers
        self._needed = sorted(set(needed))
        self._transform = transform
        self._side_wanted = frozenset(side.wanted) if side else frozenset()
        self._side_transform = side.transform if side else None
        self._derive = side.derive if side else None
        self._side: list[tuple[int, torch.Tensor]] = []
        self._queue: queue.Queue[tuple[int, torch.Tensor | None, Any] | _End] = queue.Queue(
            maxsize=capacity)
        self._cache: dict[int, torch.Tensor] = {}
        self._done = False
        self._stop = threading.Event()
        self._timings = timings
        self._thread = threading.Thread(target=self._run, name="amagi-decode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        needed = frozenset(self._needed)
        wanted = needed | self._side_wanted
        last = max(wanted, default=-1)
        decode_s = transform_s = 0.0
        try:
            t0 = time.perf_counter()
            for index, _t, rgb in self._video.frames(0, last + 1, workers=self._workers,
                                                     wanted=wanted):
                decode_s += time.perf_counter() - t0
                t1 = time.perf_counter()
                extra = (self._side_transform(rgb) if self._side_transform is not None
                         and index in self._side_wanted else None)
                tensor = None
                if index in needed:
                    tensor = torch.as_tensor(self._transform(rgb) if extra is None
                                             or self._derive is None else self._derive(extra))
                transform_s += time.perf_counter() - t1
                while not self._stop.is_set():
                    try:
                        self._queue.put((index, tensor, extra), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
                t0 = time.perf_counter()
            self._put_end(None)
        except BaseException as e:
            self._put_end(e)
        finally:
            self._timings["decode"] = self._timings.get("decode", 0.0) + decode_s
            self._timings["transforms"] = self._timings.get("transforms", 0.0) + transform_s

    def _put_end(self, error: BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(_End(error), timeout=0.2)
                return
            except queue.Full:
                continue

    def get(self, index: int) -> torch.Tensor:
        while index not in self._cache:
            if self._done:
                raise RuntimeError(f"frame {index} was never decoded (video shorter than its "
                                   "header says?)")
            self._pull()
        return self._cache[index]

    def _pull(self) -> None:
        item = self._queue.get()
        if isinstance(item, _End):
            self._done = True
            if item.error is not None:
                raise item.error
            return
        index, tensor, extra = item
        if tensor is not None:
            self._cache[index] = tensor
        if extra is not None:
            self._side.append((index, extra))

    def take_side(self) -> list[tuple[int, Any]]:
        """The side consumer's frames pulled so far and not yet taken, in order."""
        out, self._side = self._side, []
        return out

    def drain_side(self) -> Iterator[tuple[int, Any]]:
        """The side consumer's remaining frames, in order, to the end of decoding (a decoding
        error is raised here)."""
        while True:
            yield from self.take_side()
            if self._done:
                return
            self._pull()

    def release_before(self, index: int) -> None:
        for k in [k for k in self._cache if k < index]:
            del self._cache[k]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class BleedingAnalyzer:
    """Runs a clip model (AMAGI or SlowFast) over a whole video.

    Parameters
    ----------
    model
        A recogniser: ``model(clips (N, 3, T, S, S)) -> logits (N, 2)``; for key-frame
        masks, ``model.segment(frames (N, 3, H, W))`` returning [aux, main] logits at 1/4
        resolution (AMAGI); plain SlowFast has no segmentation and gives no masks.
    options
        :class:`AnalysisOptions`.
    input_size, clip_len, mean, std
        The model's preprocessing constants (from its weights' configuration).
    refiner
        A :class:`~models.refiner.TemporalRefiner` that re-reads the whole video's bleeding
        probabilities before the post-processing (the model's ``model.json`` names it);
        ``None``: the probabilities as the network gives them.
    probe, probe_use
        A :class:`~models.patchnet.PatchNet` (or several as a
        :class:`~models.patchnet.ProbeEnsemble`) run at each prediction where the model's
        segmentation map peaks (:mod:`amagi_plugin.probing`), its scores fused with the
        clip probabilities as ``probe_use`` says, before the refiner; needs a model with
        segmentation. ``None``: no probe.
    """

    def __init__(self, model: torch.nn.Module, options: AnalysisOptions, input_size: int = 224,
                 clip_len: int = 8, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None,
                 refiner: TemporalRefiner | None = None, probe: ProbeNet | None = None,
                 probe_use: ProbeUse | None = None) -> None:
        check_backend(options.backend, options.device)
        self.model = model.eval().to(options.device)
        self.refiner = None if refiner is None else refiner.eval().to(options.device)
        # The speed switch: bf16 where native, channels-last, preprocessing on the device.
        self.fast = FastPath.for_device(options.device) if options.fast else None
        if self.fast is not None:
            self.fast.prepare(self.model)
            options = replace(options, bf16=options.bf16 or self.fast.bf16)
        self.options = options
        self.input_size = input_size
        self.clip_len = clip_len
        #: frames the segmentation net sees around the one it segments (1, or K stacked)
        self.seg_frames = int(getattr(getattr(model, "default_cfg", None), "seg_frames", 1))
        self.mean = tuple(AUTHORS_MEAN if mean is None else mean)
        self.std = tuple(AUTHORS_STD if std is None else std)
        norm = {"mean": self.mean, "std": self.std}
        self.transform = clip_frame_transform(input_size, **norm)
        self.native_transform = native_frame_transform(**norm)
        # the clip preprocessing split at the crop: the probe's frames, key-frame masks
        self.map_geometry = MapGeometry(input_size, self.mean, self.std)
        # What the clips are made of: the MONAI transforms on CPU, or the same on the device.
        self.clip_transform = (self.transform if self.fast is None else
                               self.fast.frame_transform(input_size, **norm))
        self.inferer = ClipProbabilityInferer(options.device, options.bf16,
                                              channels_last=self.fast is not None)
        # the clip network itself (torch), or compiled for another backend
        self.compiled = (None if options.backend == "torch" else CompiledClipNetwork(
            self.model, (3, clip_len, input_size, input_size), self._segmenter_module(),
            bf16=options.bf16))
        self.probe_use = probe_use or ProbeUse()
        self.probe = None if probe is None else self._probe_stage(probe)

    def _probe_stage(self, net: ProbeNet) -> NeighbourhoodProbe:
        network = self._segmentation_network()
        if network is None:
            raise ValueError("a neighbourhood probe looks where the segmentation map peaks: "
                             "it needs a model with a segmentation net (AMAGI)")
        # fp32 even under the speed switch: the probe looks at the map's highest peaks, and a
        # bf16 rounding that reorders two close peaks moves it to another place, changing its
        # score by far more than the switch's tolerance (seen: 0.044 on a 5 s demo case).
        inferer = MaskInferer(self.input_size, self.options.device, bf16=False)
        return NeighbourhoodProbe(net, lambda x: inferer(x, network), self.map_geometry,
                                  self.options.device, bf16=self.options.bf16,
                                  run=None if self.options.backend == "torch"
                                  else compiled_probe(net, bf16=self.options.bf16))

    @classmethod
    def for_model(cls, model: torch.nn.Module, options: AnalysisOptions,
                  refiner: TemporalRefiner | None = None, probe: ProbeNet | None = None,
                  probe_use: ProbeUse | None = None) -> BleedingAnalyzer:
        """An analyzer using the preprocessing constants stored with ``model.default_cfg``."""
        cfg = model.default_cfg
        return cls(model, options, input_size=cfg.input_size, clip_len=cfg.clip_len,
                   mean=cfg.mean, std=cfg.std, refiner=refiner, probe=probe,
                   probe_use=probe_use)

    def schedule_for(self, video: VideoLike) -> ClipSchedule:
        return ClipSchedule(video.frame_count, video.fps, clip_len=self.clip_len,
                            prediction_hz=self.options.prediction_hz)

    def clip_probabilities(self, video: VideoLike, schedule: ClipSchedule,
                           progress: ProgressFn | None = None,
                           timings: dict[str, float] | None = None,
                           probe: ProbeStream | None = None,
                           probe_maps: Mapping[int, int] | None = None
                           ) -> tuple[np.ndarray, int]:
        """Per-prediction class probabilities ``(P, C)`` and the number of clips computed.
        ``probe``: a probe's pass fed from the same decoding (its frames at the model's
        scale, between the network's batches and after the last); :meth:`ProbeStream.finish
        <amagi_plugin.probing.ProbeStream.finish>` is left to the caller. ``probe_maps``
        (:meth:`probe_maps_from_clips`): the clips whose segmentation map is handed to it."""
        timings = timings if timings is not None else {}
        starts = schedule.clip_starts()
        needed = {f for s in starts for f in schedule.clip_frames(s)}
        side = None
        if probe is not None:  # the probe's frames from the same decoding
            geometry = probe.probe.geometry
            # the clip transform is the probe's, then the crop (bit for bit; not the switch's
            # own on-device one, nor from a probe's finer frames)
            side = SideFrames(probe.wanted, geometry.frame,
                              geometry.map_input
                              if self.fast is None and geometry.scale == 1 else None)
        prefetch = FramePrefetcher(video, sorted(needed), self.clip_transform,
                                   self.options.decode_ahead, timings,
                                   self.options.decode_workers, side=side)
        computed = 0

        def feed(frames: Iterable[tuple[int, torch.Tensor]]) -> None:
            if probe is None:
                return
            t0 = time.perf_counter()
            for index, frame in frames:
                probe.feed(index, frame)
            timings["probe"] = timings.get("probe", 0.0) + time.perf_counter() - t0

        # the probe's map of an instant is its centred clip's, already computed (exact path)
        centred = {} if probe is None else dict(probe_maps or {})
        maps: list[torch.Tensor] = []
        seg_model = self._segmenter_module()
        owner = threading.get_ident()  # workers may share the model: only this thread's maps

        def keep(_m: torch.nn.Module, _x: Any, out: Any) -> None:
            if threading.get_ident() == owner:
                maps.append(main_logits(out))

        hook = (None if not centred or seg_model is None or self.compiled is not None
                else seg_model.register_forward_hook(keep))
        network = self.model if self.compiled is None else self.compiled

        def give_maps(batch: Sequence[int]) -> None:
            rows = [(j, centred[s]) for j, s in enumerate(batch) if s in centred]
            if not maps or not rows:
                return
            t0 = time.perf_counter()
            p = bleeding_probability(maps[-1][[j for j, _ in rows]],
                                     (self.input_size, self.input_size))
            for (_, target), m in zip(rows, p, strict=True):
                probe.give_map(target, m)
            timings["probe"] = timings.get("probe", 0.0) + time.perf_counter() - t0

        def probs(batch: Sequence[int]) -> np.ndarray:
            nonlocal computed
            clips = torch.stack([
                torch.stack([prefetch.get(f) for f in schedule.clip_frames(s)], dim=1)
                for s in batch])
            # Later requests never start before this batch's first clip (both schedules).
            prefetch.release_before(schedule.grid_frame(min(batch)))
            t0 = time.perf_counter()
            maps.clear()
            out = self.inferer(clips.as_subclass(torch.Tensor), network).numpy()
            if centred and self.compiled is not None and self.compiled.last_maps is not None:
                maps.append(self.compiled.last_maps)  # the compiled network's own map
            timings["video_network"] = timings.get("video_network", 0.0) + time.perf_counter() - t0
            computed += len(batch)
            if progress:
                progress(computed, len(starts))
            give_maps(batch)
            feed(prefetch.take_side())
            return out

        try:
            if self.options.share_clips:
                result = shared_clip_probabilities(schedule, probs, self.options.batch_size)
            else:
                result = naive_clip_probabilities(schedule, probs)
            feed(prefetch.drain_side())
        finally:
            prefetch.close()
            if hook is not None:
                hook.remove()
        return result, computed

    def probe_maps_from_clips(self, schedule: ClipSchedule) -> dict[int, int]:
        """Clip start → the probe instant (frame index) whose segmentation map that clip's
        network computes: the centred clip of a prediction, when its segmenter's frames are
        the probe's window (:meth:`ClipSchedule.window`; they differ only where rounding the
        grid to frames does). Empty where the clip's map is not the probe's: under bf16 or
        the speed switch (its clips are preprocessed and mapped differently; the probe's
        places come from an fp32 map, :meth:`_probe_stage`), or without a probe or a
        segmentation net the probe can read from the model."""
        if (self.probe is None or self.fast is not None or self.options.bf16
                or self._segmenter_module() is None):
            return {}
        half, k = self.clip_len // 2, self.seg_frames
        out = {}
        for g in schedule.prediction_points():
            frame = schedule.grid_frame(g)
            seg = schedule.clip_frames(g - half)[half - k // 2:half - k // 2 + k]
            if seg == schedule.window(frame, k):
                out[g - half] = frame
        return out

    def _segmenter_module(self) -> torch.nn.Module | None:
        """The AMAGI backbone's segmentation net as a module (its forward hooks see the
        clip network's maps), or None."""
        return getattr(getattr(self.model, "backbone", None), "seg_model", None)

    def _segmentation_network(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The model's main segmentation logits as a function, or None without segmentation."""
        cfg = getattr(self.model, "default_cfg", None)
        segment = getattr(self.model, "segment", None)
        if segment is None or (cfg is not None and not cfg.has_segmentation):
            return None

        return lambda x: main_logits(segment(x))

    def _seg_input(self, window: Sequence[int], frames: Mapping[int, np.ndarray],
                   transform: Callable[[np.ndarray], Any]) -> torch.Tensor:
        """The segmentation net's input for one frame: its window's frames (0-based indices
        into ``frames``), each preprocessed, stacked on the channel axis (3·K, H, W)."""
        return torch.cat([torch.as_tensor(transform(frames[i])).as_subclass(torch.Tensor)
                          for i in window])

    def mask_frames(self, video: VideoLike, numbers: Sequence[int]) -> list[int]:
        """The frames (1-based numbers) :meth:`segment_frames` reads to mask frames
        ``numbers``: each with its segmenter's window around it."""
        schedule = self.schedule_for(video)
        return sorted({i + 1 for n in numbers for i in schedule.window(n - 1, self.seg_frames)}
                      | set(numbers))

    def segment_frames(self, frames: dict[int, np.ndarray], video: VideoLike | None = None,
                       neighbours: Mapping[int, np.ndarray] | None = None
                       ) -> dict[int, np.ndarray]:
        """Bleeding masks (bool, native resolution) for RGB frames keyed by frame number.

        ``options.mask_scale`` ``"model"`` (default): each whole frame resized as the
        segmentation net sees a clip's frames (short side to the input size, uncropped), its
        map upsampled (bilinear) to the frame's pixels and thresholded at 0.5: the scale the
        net was trained at (a demo segmenter, trained on 128-pixel frames, scored IoU 0.60
        against 0.32 on 720p key frames, session 29). ``"native"``: the frame's own pixels,
        in windows of the input size.

        A temporal segmenter (``seg_frames`` > 1) also needs each frame's neighbours
        (:meth:`mask_frames`): those not in ``neighbours`` (RGB by frame number) are read from
        ``video`` (required then).
        """
        network = self._segmentation_network()
        if network is None or not frames:
            return {}
        windows = {n: [n - 1] for n in frames}
        pixels = {n - 1: rgb for n, rgb in frames.items()}
        if self.seg_frames > 1:
            if video is None:
                raise ValueError("a temporal segmenter needs the video to read the frames "
                                 "around each key frame")
            schedule = self.schedule_for(video)
            windows = {n: schedule.window(n - 1, self.seg_frames) for n in frames}
            given = neighbours or {}
            pixels.update({n - 1: rgb for n, rgb in given.items()})
            extra = set(self.mask_frames(video, list(frames))) - set(frames) - set(given)
            pixels.update({n - 1: rgb for n, rgb in read_frames(video, sorted(extra)).items()})
        inferer = MaskInferer(self.input_size, self.options.device, self.options.bf16)
        at_model_scale = self.options.mask_scale == "model"
        geometry = self.map_geometry
        masks = {}
        for number, window in windows.items():
            if any(i not in pixels for i in window):
                log.warning("frame %d: its neighbours could not be decoded; no mask", number)
                continue
            if not at_model_scale:
                x = self._seg_input(window, pixels, self.native_transform)[None]
                masks[number] = (inferer(x, network)[0] >= 0.5).numpy()
                continue
            x = self._seg_input(window, pixels, lambda rgb: geometry.normalise(geometry.frame(rgb)))
            p = inferer(x[None], network)[0].float()
            p = F.interpolate(p[None, None], size=pixels[number - 1].shape[:2], mode="bilinear",
                              align_corners=False)[0, 0]
            masks[number] = (p >= 0.5).numpy()
        return masks

    def guidance_areas(self, video: VideoLike, indices: Sequence[int],
                       batch_size: int = 32) -> np.ndarray | None:
        """Fraction of each frame that the segmentation net marks as bleeding (p ≥ 0.5).

        The frames (0-based ``indices``) go through the clip preprocessing, so the net sees
        them as AMAGI sees a clip's centre frame (with the clip's neighbouring frames for a
        temporal segmenter). This measures the guidance map on its own (``amagi evaluate``
        scores it against the frame labels). ``None`` for a model without segmentation;
        ``nan`` for a frame the decoder did not deliver.
        """
        network = self._segmentation_network()
        if network is None:
            return None
        if len(indices) == 0:
            return np.empty(0)
        schedule = self.schedule_for(video)
        targets = sorted({int(i) for i in indices if 0 <= int(i) < schedule.frame_count})
        if not targets:  # none inside the video
            return np.full(len(indices), np.nan)
        windows = {i: schedule.window(i, self.seg_frames) for i in targets}
        wanted = {f for w in windows.values() for f in w}
        inferer = MaskInferer(self.input_size, self.options.device, self.options.bf16)
        found: dict[int, float] = {}
        pixels: dict[int, np.ndarray] = {}  # decoded frames some pending window still needs
        batch: list[tuple[int, torch.Tensor]] = []

        def flush() -> None:
            x = torch.stack([t for _, t in batch])
            for (index, _), p in zip(batch, inferer(x, network), strict=True):
                found[index] = float((p >= 0.5).float().mean())
            batch.clear()

        pending = iter(targets)
        target = next(pending, None)
        for index, _t, rgb in video.frames(min(wanted), max(wanted) + 1, wanted=wanted):
            pixels[index] = rgb
            while target is not None and max(windows[target]) <= index:
                if all(f in pixels for f in windows[target]):  # else: not delivered, nan
                    batch.append((target, self._seg_input(windows[target], pixels,
                                                          self.transform)))
                target = next(pending, None)
            if len(batch) >= batch_size:
                flush()
            first_needed = min(windows[target]) if target is not None else index + 1
            for f in [f for f in pixels if f < first_needed]:
                del pixels[f]
        if batch:
            flush()
        return np.array([found.get(int(i), np.nan) for i in indices], dtype=np.float64)

    def analyze(self, video: VideoLike, progress: ProgressFn | None = None) -> AnalysisResult:
        opts = self.options
        timings: dict[str, float] = defaultdict(float)
        t_start = time.perf_counter()
        schedule = self.schedule_for(video)
        points = list(schedule.prediction_points())
        frames = np.array([schedule.grid_frame(g) for g in points])
        clip_progress, probe_progress = progress, None
        if progress is not None and self.probe is not None:  # one count over both
            done = {"clips": 0, "probe": 0}
            total = len(schedule.clip_starts()) + len(points)

            def count(part: str) -> ProgressFn:
                def report(n: int, _of: int) -> None:
                    done[part] = n
                    progress(done["clips"] + done["probe"], total)
                return report

            clip_progress, probe_progress = count("clips"), count("probe")
        # the probe reads the frames the clips' decoding reads (one pass over the video) and,
        # where it can, the maps their network computes
        probe_maps = self.probe_maps_from_clips(schedule)
        stream = None if self.probe is None else self.probe.stream(
            frames.tolist(), lambda i: schedule.window(i, self.seg_frames), video.frame_count,
            video.fps, probe_progress, memory_s=self.probe_use.memory_s,
            maps_given=list(probe_maps.values()))
        probs, computed = self.clip_probabilities(video, schedule, clip_progress, timings,
                                                  probe=stream, probe_maps=probe_maps)
        timeline = Timeline(times_s=frames / video.fps, frames=frames,
                            rate_hz=1.0 / (schedule.prediction_step * schedule.grid_s),
                            duration_s=schedule.duration_s)
        clip = bleeding = probs[:, 1]
        probe_scores = None
        if stream is not None:
            t0 = time.perf_counter()
            probe_scores = stream.finish()
            timings["probe"] += time.perf_counter() - t0
            missing = int(np.isnan(probe_scores).sum())
            if missing:
                log.warning("probe: %d of %d predictions lack frames the decoder did not "
                            "deliver; the clip network's probability stands there", missing,
                            len(points))
            bleeding = fuse(clip, probe_scores, timeline.rate_hz, self.probe_use)
        t0 = time.perf_counter()
        if self.refiner is not None:  # the whole video's probabilities, re-read over time
            bleeding = self.refiner.refine(bleeding, timeline.rate_hz)
        decisions = smooth_decisions(bleeding, timeline.rate_hz, opts.threshold, opts.smoothing,
                                     opts.smoothing_s, opts.hold_threshold)
        events = find_events(bleeding, decisions, timeline)
        index = CaseIndex.from_events(events, schedule.duration_s)
        timings["post_processing"] = time.perf_counter() - t0
        result = AnalysisResult(schedule, timeline, bleeding, decisions, events, index,
                                clips_computed=computed, clip_probabilities=clip,
                                probe_scores=probe_scores)
        if events:
            t0 = time.perf_counter()
            keys = [e.key_frame for e in events]
            masked = opts.key_frame_masks and self._segmentation_network() is not None
            # the key frames and their segmenter's neighbours, read together
            pixels = read_frames(video, self.mask_frames(video, keys) if masked else keys)
            result.key_frames = {n: pixels[n] for n in keys if n in pixels}
            timings["decode"] += time.perf_counter() - t0
            if masked:
                t0 = time.perf_counter()
                result.masks = self.segment_frames(result.key_frames, video, pixels)
                timings["segmentation"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        result.timings = dict(timings)
        log.info("analysis done: %d predictions, %d clips, %d events, %.1f s",
                 len(points), computed, len(events), timings["total"])
        return result


#: Decoding threads for frames read after the analysis (key frames, previews): the
#: segments holding them are decoded side by side, each from its key frame.
READ_WORKERS = 2


def read_frames(video: VideoLike, numbers: Sequence[int]) -> dict[int, np.ndarray]:
    """RGB frames by 1-based frame number, read in one pass that decodes only the stream's
    segments holding them, each from its key frame up to the last frame wanted there
    (:mod:`dicom_io.parallel`, "Sparse reads")."""
    wanted = {n - 1 for n in numbers}
    if not wanted:
        return {}
    return {index + 1: rgb for index, _t, rgb in video.frames(
        min(wanted), max(wanted) + 1, workers=READ_WORKERS, wanted=wanted)}
