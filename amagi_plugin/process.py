"""One video in, every result out: the job that ``amagi process`` and the service workers run."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from amagi_plugin.errors import InputError
from amagi_plugin.modelspec import ModelSpec
from amagi_plugin.outputs import (
    atomic_write,
    summary,
    write_predictions_csv,
    write_summary,
    write_timeline_png,
)
from amagi_plugin.pipeline import (
    AnalysisResult,
    BleedingAnalyzer,
    ProgressFn,
    VideoLike,
    read_frames,
)
from amagi_plugin.report import (
    ReportContent,
    header_lines,
    preview_frame_numbers,
    render_report_pdf,
)
from amagi_plugin.report_html import render_report_html
from dicom_io.errors import DicomIOError
from dicom_io.keyimages import write_key_images
from dicom_io.kos import write_key_object_selection
from dicom_io.pdf import write_encapsulated_pdf
from dicom_io.results import (
    DEMO_DISCLAIMER,
    AlgorithmInfo,
    InstanceRef,
    WeightsKind,
    weights_device_uid,
)
from dicom_io.seg import write_bleeding_segmentation
from dicom_io.sr import write_bleeding_report
from dicom_io.video import open_video

log = logging.getLogger(__name__)

#: Events that get an animated preview in report.html, and frames per preview.
PREVIEW_EVENTS, PREVIEW_FRAMES = 30, 6


@dataclass
class ProcessOutcome:
    """What one run wrote, for the caller to record and deliver."""

    output_dir: Path
    summary: dict[str, Any]
    result: AnalysisResult
    summary_path: Path
    predictions_path: Path
    timeline_path: Path
    report_path: Path
    html_path: Path
    sr: InstanceRef | None = None
    seg: InstanceRef | None = None
    key_images: list[InstanceRef] = field(default_factory=list)
    kos: InstanceRef | None = None
    pdf: InstanceRef | None = None

    @property
    def dicom_objects(self) -> list[InstanceRef]:
        """Written DICOM objects, in the order a PACS should receive them (the report PDF
        before the KOS that lists it)."""
        objs = [*self.key_images, self.seg, self.pdf, self.kos, self.sr]
        return [o for o in objs if o is not None]


def algorithm_info(spec: ModelSpec) -> AlgorithmInfo:
    """The algorithm identification written into every result object.

    Its Device UID is derived from the checkpoint's contents, so a retrained checkpoint
    (even under the same name and version) is a different device (IHE AI Results).
    """
    from amagi_plugin import __version__

    description = (f"AMAGI bleeding detection ({spec.arch}) by amagi-plugin {__version__}; "
                   f"weights: {spec.weights}")
    if spec.weights is WeightsKind.DEMO_SYNTHETIC:
        description += f"; {DEMO_DISCLAIMER}"
    device_uid = weights_device_uid(spec.checkpoint) if spec.checkpoint is not None else None
    return AlgorithmInfo(name=spec.name[:64], version=spec.version[:64], weights=spec.weights,
                         description=description, device_uid=device_uid)


def process_video(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    analyzer: BleedingAnalyzer,
    spec: ModelSpec,
    *,
    predecessor: InstanceRef | None = None,
    progress: ProgressFn | None = None,
) -> ProcessOutcome:
    """Analyse one video (DICOM instance, single-frame series, or MP4/TS) and write results.

    For DICOM input the SR, SEG, key images, report PDF (Encapsulated PDF) and KOS go into
    ``output_dir/dicom``; every input gets ``summary.json``, ``predictions.csv``,
    ``timeline.png``, ``report.pdf`` and ``report.html`` (self-contained).
    ``predecessor`` names an earlier SR of the same video (the new SR is its successor).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        video = open_video(source)
    except DicomIOError as e:
        raise InputError(str(e)) from e
    log.info("analysing %s: %d frames at %.3f fps (%.1f s) with %s", video.sop_instance_uid or
             Path(str(source)).name, video.frame_count, video.fps, video.duration_s, spec.label)
    try:
        result = analyzer.analyze(video, progress)
    except DicomIOError as e:
        raise InputError(str(e)) from e
    doc = summary(result, spec, video.fps, video.sop_instance_uid, video.study_instance_uid)
    outcome = ProcessOutcome(out, doc, result, out / "summary.json", out / "predictions.csv",
                             out / "timeline.png", out / "report.pdf", out / "report.html")
    algo = algorithm_info(spec)
    lines = header_lines(video.header, video.sop_instance_uid or Path(str(source)).name,
                         result.schedule.duration_s, video.fps)
    opts = analyzer.options
    content = ReportContent.from_result(result, algo, opts.threshold, lines,
                                        _previews(video, result),
                                        hold_threshold=opts.hold_threshold)
    pdf = render_report_pdf(content)
    # Results reference frames of one instance; a series of single-frame images gets the
    # files below only (its frames are separate instances).
    if video.kind in ("dicom-video", "dicom-multiframe"):
        _write_dicom(outcome, video.header, algo, pdf, predecessor)
    atomic_write(outcome.report_path, pdf)
    atomic_write(outcome.html_path, render_report_html(content).encode("utf-8"))
    write_predictions_csv(outcome.predictions_path, result)
    write_timeline_png(outcome.timeline_path, result, spec, title=video.sop_instance_uid or "",
                       threshold=opts.threshold, hold_threshold=opts.hold_threshold)
    write_summary(outcome.summary_path, doc)  # last: its presence means the run completed
    return outcome


def _previews(video: VideoLike, result: AnalysisResult) -> dict[int, list[np.ndarray]]:
    """Key frame number -> a few RGB frames spread over its event (first events only)."""
    events = result.events[:PREVIEW_EVENTS]
    wanted = {e.key_frame: preview_frame_numbers(e, PREVIEW_FRAMES) for e in events}
    try:
        frames = read_frames(video, sorted({f for numbers in wanted.values() for f in numbers}))
    except DicomIOError as e:  # the analysis is done: the HTML just goes without previews
        log.warning("no event previews: %s", e)
        return {}
    return {key: [frames[f] for f in numbers if f in frames] for key, numbers in wanted.items()}


def _write_dicom(outcome: ProcessOutcome, header, algo: AlgorithmInfo, pdf: bytes,
                 predecessor: InstanceRef | None) -> None:
    result = outcome.result
    dicom_dir = outcome.output_dir / "dicom"
    dicom_dir.mkdir(exist_ok=True)
    if result.key_frames:
        outcome.key_images = write_key_images(header, result.key_frames, algo, dicom_dir)
    if result.masks:
        outcome.seg = write_bleeding_segmentation(header, result.masks, algo, dicom_dir)
    outcome.pdf = write_encapsulated_pdf(header, pdf, algo, dicom_dir)
    if result.events:
        outcome.kos = write_key_object_selection(
            header, [e.key_frame for e in result.events], outcome.key_images, algo, dicom_dir,
            documents=[outcome.pdf] if outcome.pdf else [])
    outcome.sr = write_bleeding_report(header, result.events, result.index, algo, dicom_dir,
                                       predecessor=predecessor)
