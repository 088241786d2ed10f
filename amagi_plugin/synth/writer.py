"""Per-case and dataset-level outputs of the generator.

Layout under the output directory ``ROOT`` (frame numbers: ``k`` is 0-based everywhere in
JSON; file names are 1-based like mmaction2 rawframes, so ``img_00001`` holds frame 0)::

    ROOT/cases.json                       dataset index: one record per case, patient ids
    ROOT/annotations.txt                  every case's clip lines, in case order
    ROOT/<case>/labels.json               seed, scene, per-frame labels, events, masks list
    ROOT/<case>/video.mp4                 H.264 MP4                      (format "mp4")
    ROOT/<case>/video.dcm                 DICOM Video Endoscopic, H.264  (format "dicom")
    ROOT/<case>/masks/img_XXXXX.png       active-bleeding mask, 0/255 (selected frames)
    ROOT/<case>/lookalikes/img_XXXXX.png  all blood that is not active (still pools, stained
                                          jaws, lens blood: ``RenderedFrame.lookalike``)
    ROOT/<case>/frames/img_XXXXX.png      the same frames, lossless RGB
    ROOT/<case>/rawframes/img_XXXXX.jpg   every frame              (format "rawframes")
    ROOT/<case>/clips/<case>_fKKKKKK/     one folder per clip: frames K..K+23 as
                                          img_00001..img_00024.jpg (hard links to rawframes)
    ROOT/<case>/annotations.txt           the authors' list: ``folder total_frames label``

Clip rule (the authors' mmaction2 ``RawframeDataset`` + ``SampleFrames(clip_len=8,
frame_interval=3, num_clips=1)``): a clip folder holds ``clip_len · frame_interval`` = 24
consecutive frames starting at frame ``K`` (``K = 0, clip_stride, 2·clip_stride, ...`` while
the folder fits in the video); the sampler reads folder frames 0, 3, ..., 21. Its label is the
frame label of ``K + (clip_len // 2) · frame_interval`` = ``K + 12``: the 5th sampled frame,
the one AMAGI's segmentation branch sees (``x[:, :, T // 2]``). Folder paths in the lists are
relative to ``ROOT`` (mmaction2's ``data_prefix``).

Masks are written every ``mask_every`` frames (default: one per second) and at each event's
middle frame; residual and pooled blood are never in a mask (they are in the look-alikes').
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from amagi_plugin.synth.errors import OutputExistsError, SynthError
from amagi_plugin.synth.render import Renderer
from amagi_plugin.synth.scene import FORMAT_VERSION, SceneParams, SceneRanges, sample_scene

log = logging.getLogger(__name__)

FORMATS = ("dicom", "mp4", "rawframes")
#: Where rawframes and mask frames come from: the renderer's frames, or the frames decoded
#: from the case's own encoded video (what an analysis sees: H.264's I/P/B frame quality).
FRAME_SOURCES = ("render", "video")
#: Decoded frames' JPEG: the video's compression, not the JPEG's (no second chroma
#: subsampling; within ~1 grey level of the decoded frame on average)
_DECODED_JPEG = {"quality": 95, "subsampling": 0}
GENERATOR_NAME = "amagi_plugin.synth"
_KEEP_BYTES = 256 * 2**20


@dataclass(frozen=True)
class OutputOptions:
    """What to write for each case.

    Attributes
    ----------
    formats
        Subset of :data:`FORMATS`; labels, masks and mask frames are always written.
    mask_every
        Frames between saved masks; ``None`` = one per second.
    clip_len, frame_interval
        Clip sampling of the authors (8 frames, 3 apart).
    clip_stride
        Frames between the first frames of consecutive clip folders.
    jpeg_quality
        Quality (1–95) of the rawframe JPEGs (rendered frames).
    frames_from
        One of :data:`FRAME_SOURCES`. ``"render"``: rawframes and mask frames are the
        rendered frames (JPEG at ``jpeg_quality`` or the look's). ``"video"``: they are the
        frames decoded from the case's H.264 video (encoded at the look's CRF; written
        whether or not ``"mp4"`` is asked, and removed if not), saved at JPEG quality 95
        without chroma subsampling, so training sees the encoder's frame types as analysis
        does. Masks are the renderer's either way (the decoder moves no pixel).
    overwrite
        Replace existing case folders instead of refusing.
    """

    formats: tuple[str, ...] = FORMATS
    mask_every: int | None = None
    clip_len: int = 8
    frame_interval: int = 3
    clip_stride: int = 3
    jpeg_quality: int = 90
    frames_from: str = "render"
    overwrite: bool = False

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise SynthError(f"unknown format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
        if self.mask_every is not None and self.mask_every < 1:
            raise SynthError(f"mask_every must be >= 1, got {self.mask_every}")
        for name in ("clip_len", "frame_interval", "clip_stride"):
            if getattr(self, name) < 1:
                raise SynthError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality <= 95:
            raise SynthError(f"jpeg_quality must be 1-95, got {self.jpeg_quality}")
        if self.frames_from not in FRAME_SOURCES:
            raise SynthError(f"frames_from must be one of {', '.join(FRAME_SOURCES)}, got "
                             f"{self.frames_from!r}")

    @property
    def clip_span(self) -> int:
        """Frames in one clip folder (``clip_len · frame_interval``)."""
        return self.clip_len * self.frame_interval

    @property
    def centre_offset(self) -> int:
        """Offset in a clip folder of the frame that gives the clip its label."""
        return (self.clip_len // 2) * self.frame_interval


@dataclass(frozen=True)
class CaseSpec:
    """One case to generate: identity and scene."""

    index: int
    case_id: str
    patient_id: str
    dataset_seed: int
    scene: SceneParams
    study_date: str = "20200101"


def case_seed(dataset_seed: int, index: int) -> int:
    """The scene seed of case ``index`` of a dataset (NumPy ``SeedSequence([seed, index])``)."""
    return int(np.random.SeedSequence([dataset_seed, index]).generate_state(1, np.uint32)[0])


def plan_cases(n_cases: int, seed: int, *, width: int = 224, height: int = 224,
               fps: float = 10.0, duration_s: float = 60.0,
               ranges: SceneRanges | str = "train", cases_per_patient: int = 1,
               ) -> list[CaseSpec]:
    """Sample the scenes of ``n_cases`` cases; case ``i`` uses :func:`case_seed` ``(seed, i)``.

    Case ``i`` belongs to patient ``i // cases_per_patient``; ids are
    ``s<seed>_c<i>`` and ``SYN<seed>-<patient>`` so datasets with other seeds never collide.
    """
    if n_cases < 1:
        raise SynthError(f"the number of cases must be >= 1, got {n_cases}")
    if cases_per_patient < 1:
        raise SynthError(f"cases_per_patient must be >= 1, got {cases_per_patient}")
    specs = []
    for i in range(n_cases):
        scene = sample_scene(case_seed(seed, i), width=width, height=height, fps=fps,
                             duration_s=duration_s, ranges=ranges)
        day = _dt.date(2020, 1, 1) + _dt.timedelta(days=(seed * 7919 + i) % 1500)
        specs.append(CaseSpec(index=i, case_id=f"s{seed}_c{i:04d}",
                              patient_id=f"SYN{seed}-{i // cases_per_patient:04d}",
                              dataset_seed=seed, scene=scene,
                              study_date=day.strftime("%Y%m%d")))
    return specs


def _uid(spec: CaseSpec, what: str) -> str:
    """A UID fixed by the case (so regenerating a case reproduces its DICOM identity)."""
    return generate_uid(entropy_srcs=[GENERATOR_NAME, str(spec.dataset_seed), spec.case_id,
                                      str(spec.scene.seed), what])


def _frame_name(frame: int, suffix: str) -> str:
    return f"img_{frame + 1:05d}{suffix}"


def mask_frames(scene: SceneParams, mask_every: int | None) -> list[int]:
    """0-based frames that get a mask: every ``mask_every`` frames plus each event's middle."""
    step = mask_every or max(1, round(scene.fps))
    chosen = set(range(0, scene.n_frames, step))
    chosen.update((ev.start_frame + ev.end_frame - 1) // 2 for ev in scene.events)
    return sorted(chosen)


@dataclass
class _Pass:
    """Side outputs collected while the first encoding pass renders the frames."""

    active_pixels: list[int] = field(default_factory=list)
    negative_pixels: list[int] = field(default_factory=list)
    masks: list[dict[str, Any]] = field(default_factory=list)


def write_case(spec: CaseSpec, root: str | os.PathLike[str], options: OutputOptions,
               ) -> dict[str, Any]:
    """Render and write one case under ``root/<case_id>``; returns its ``cases.json`` record.

    The case is written into a staging directory (``root/.<case_id>.partial``) and moved into
    place only when complete, so a failed or killed case leaves no half-written case behind
    (a stale staging directory from a killed run is removed first); with ``overwrite`` an
    existing case is replaced only then.
    """
    root = Path(root)
    final = root / spec.case_id
    if final.exists() and not options.overwrite:
        raise OutputExistsError(f"{final} already exists (use --overwrite to replace it)")
    staging = root / f".{spec.case_id}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        record = _write_case(spec, staging, options)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def _write_case(spec: CaseSpec, case_dir: Path, options: OutputOptions) -> dict[str, Any]:
    from dicom_io.encode import VideoMetadata, encode_video, write_video_dicom

    t0 = time.perf_counter()
    scene = spec.scene
    renderer = Renderer(scene)
    (case_dir / "masks").mkdir(parents=True)
    (case_dir / "lookalikes").mkdir()
    (case_dir / "frames").mkdir()
    rawframes = "rawframes" in options.formats
    if rawframes:
        (case_dir / "rawframes").mkdir()
    chosen = set(mask_frames(scene, options.mask_every))
    # A randomised look brings its own compression strength.
    quality = scene.look.jpeg_quality if scene.look is not None else options.jpeg_quality
    encode_kw = {"crf": scene.look.crf} if scene.look is not None else {}
    side = _Pass()
    both = "mp4" in options.formats and "dicom" in options.formats
    # Keep the frames for the second encoder when they fit in 256 MB; else render again.
    keep: list[np.ndarray] | None = (
        [] if both and scene.n_frames * scene.width * scene.height * 3 <= _KEEP_BYTES else None)

    decoded = options.frames_from == "video"

    def save_frame(index: int, rgb: np.ndarray, jpeg: dict[str, int]) -> None:
        """Frame ``index``'s rawframe and, on a mask frame, its PNG beside the mask."""
        if rawframes:
            Image.fromarray(rgb).save(case_dir / "rawframes" / _frame_name(index, ".jpg"),
                                      **jpeg)
        if index in chosen:
            Image.fromarray(rgb).save(case_dir / "frames" / _frame_name(index, ".png"))

    def first_pass() -> Iterator[np.ndarray]:
        for fr in renderer.frames():
            side.active_pixels.append(int(fr.active.sum()))
            side.negative_pixels.append(int(fr.negative.sum()))
            if not decoded:
                save_frame(fr.index, fr.rgb, {"quality": quality})
            if fr.index in chosen:
                name = _frame_name(fr.index, ".png")
                Image.fromarray(fr.active.astype(np.uint8) * 255).save(case_dir / "masks" / name)
                Image.fromarray(fr.lookalike.astype(np.uint8) * 255).save(
                    case_dir / "lookalikes" / name)
                side.masks.append({"frame": fr.index, "mask": f"masks/{name}",
                                   "lookalike": f"lookalikes/{name}",
                                   "image": f"frames/{name}",
                                   "active_pixels": int(fr.active.sum()),
                                   "lookalike_pixels": int(fr.lookalike.sum())})
            if keep is not None:
                keep.append(fr.rgb)
            yield fr.rgb

    meta = VideoMetadata(
        patient_name=f"SYNTHETIC^{spec.patient_id}", patient_id=spec.patient_id,
        patient_birth_date="", patient_sex="O",
        study_instance_uid=_uid(spec, "study"), series_instance_uid=_uid(spec, "series"),
        sop_instance_uid=_uid(spec, "sop"), study_id=str(spec.index + 1),
        study_date=spec.study_date, study_time="080000",
        study_description="Synthetic surgical bleeding video (amagi synth; not a patient)",
        series_description=f"Synthetic endoscopic video {spec.case_id}",
    )
    files: dict[str, str] = {"labels": "labels.json"}
    mp4, dcm = case_dir / "video.mp4", case_dir / "video.dcm"
    if "mp4" in options.formats or decoded:
        encode_video(first_pass(), mp4, scene.fps, **encode_kw)
        if decoded:
            _save_decoded(mp4, scene.n_frames, save_frame)
        if "mp4" in options.formats:
            files["mp4"] = "video.mp4"
        else:
            mp4.unlink()
    elif "dicom" in options.formats:
        write_video_dicom(first_pass(), dcm, fps=scene.fps, meta=meta, **encode_kw)
    else:
        for _ in first_pass():
            pass
    if "dicom" in options.formats:
        if both:  # rendering is deterministic: a second pass gives the same frames
            frames = keep if keep is not None else (fr.rgb for fr in renderer.frames())
            write_video_dicom(frames, dcm, fps=scene.fps, meta=meta, **encode_kw)
        files["dicom"] = "video.dcm"

    labels = scene.frame_labels()
    lines: list[str] = []
    if rawframes:
        lines = _write_clips(case_dir, spec.case_id, labels, options)
        (case_dir / "annotations.txt").write_text("".join(f"{x}\n" for x in lines))
        files["rawframes"] = "rawframes"
        files["annotations"] = "annotations.txt"

    events = [{"index": i, "start_frame": ev.start_frame, "end_frame": ev.end_frame,
               "start_s": ev.start_frame / scene.fps, "end_s": ev.end_frame / scene.fps,
               "duration_s": (ev.end_frame - ev.start_frame) / scene.fps,
               "size_class": ev.size_class, "form": ev.form, "max_radius_px": ev.max_radius,
               "middle_frame": (ev.start_frame + ev.end_frame - 1) // 2}
              for i, ev in enumerate(scene.events)]
    doc = {
        "format_version": FORMAT_VERSION, "generator": GENERATOR_NAME,
        "case_id": spec.case_id, "patient_id": spec.patient_id, "index": spec.index,
        "dataset_seed": spec.dataset_seed, "seed": scene.seed,
        "fps": scene.fps, "n_frames": scene.n_frames, "width": scene.width,
        "height": scene.height, "duration_s": scene.duration_s,
        "frame_numbering": "0-based frame k is file img_{k+1:05d}",
        "event_interval_rule": "active for start_frame <= k < end_frame (end exclusive)",
        "frame_labels": labels.tolist(), "events": events,
        "active_pixels": side.active_pixels, "negative_pixels": side.negative_pixels,
        "masks": side.masks,
        "clips": {"clip_len": options.clip_len, "frame_interval": options.frame_interval,
                  "stride": options.clip_stride, "folder_frames": options.clip_span,
                  "label_offset": options.centre_offset, "count": len(lines)},
        "tags": scene.tags(), "files": files, "frames_from": options.frames_from,
        "scene": scene.to_dict(),
    }
    (case_dir / "labels.json").write_text(json.dumps(doc, indent=1))
    elapsed = time.perf_counter() - t0
    log.info("case %s: %d frames, %d events in %.1f s", spec.case_id, scene.n_frames,
             len(events), elapsed)
    return {"case_id": spec.case_id, "patient_id": spec.patient_id, "index": spec.index,
            "seed": scene.seed, "dir": spec.case_id, "n_frames": scene.n_frames,
            "fps": scene.fps, "width": scene.width, "height": scene.height,
            "n_events": len(events),
            "active_frames": int(labels.sum()),
            "events": [[e["start_frame"], e["end_frame"]] for e in events],
            "palette": scene.palette.name, "domain": scene.domain, "tags": scene.tags(),
            "files": {k: f"{spec.case_id}/{v}" for k, v in files.items()},
            "annotation_lines": lines, "seconds": round(elapsed, 3)}


def _save_decoded(video: Path, n_frames: int, save_frame) -> None:
    """``save_frame(index, rgb, jpeg options)`` for every frame decoded from ``video``, which must
    hold exactly ``n_frames`` (the rendered ones)."""
    from dicom_io.video import open_video

    count = 0
    for index, _, rgb in open_video(video).frames():
        if index != count:
            raise SynthError(f"{video}: decoded frame {index} where {count} was expected")
        save_frame(index, rgb, _DECODED_JPEG)
        count += 1
    if count != n_frames:
        raise SynthError(f"{video}: decoded {count} frames of the {n_frames} rendered")


def _write_clips(case_dir: Path, case_id: str, labels: np.ndarray,
                 options: OutputOptions) -> list[str]:
    """Clip folders (hard links into ``rawframes``) and their annotation lines."""
    span, n = options.clip_span, len(labels)
    lines = []
    for start in range(0, n - span + 1, options.clip_stride):
        name = f"{case_id}_f{start:06d}"
        folder = case_dir / "clips" / name
        folder.mkdir(parents=True)
        for j in range(span):
            src = case_dir / "rawframes" / _frame_name(start + j, ".jpg")
            dst = folder / _frame_name(j, ".jpg")
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        label = int(labels[start + options.centre_offset])
        lines.append(f"{case_id}/clips/{name} {span} {label}")
    return lines


def write_index(root: str | os.PathLike[str], records: list[dict[str, Any]], *,
                seed: int, ranges: SceneRanges | str, options: OutputOptions,
                settings: dict[str, Any]) -> Path:
    """Write ``cases.json`` and the combined ``annotations.txt``; returns the index path."""
    from amagi_plugin import __version__

    root = Path(root)
    records = sorted(records, key=lambda r: r["index"])
    ranges_doc = ranges if isinstance(ranges, str) else ranges.to_dict()
    lines = [line for r in records for line in r.pop("annotation_lines")]
    if "rawframes" in options.formats:
        (root / "annotations.txt").write_text("".join(f"{x}\n" for x in lines))
    doc = {
        "format_version": FORMAT_VERSION, "generator": GENERATOR_NAME, "version": __version__,
        "note": "Synthetic data: not patient data, not for clinical use.",
        "seed": seed, "ranges": ranges_doc, "settings": settings,
        "formats": list(options.formats), "frames_from": options.frames_from,
        "clip_rule": {"clip_len": options.clip_len, "frame_interval": options.frame_interval,
                      "stride": options.clip_stride, "folder_frames": options.clip_span,
                      "label": f"label of frame first + {options.centre_offset}"},
        "annotations": "annotations.txt" if "rawframes" in options.formats else None,
        "patients": sorted({r["patient_id"] for r in records}),
        "cases": records,
    }
    path = root / "cases.json"
    path.write_text(json.dumps(doc, indent=1))
    return path
