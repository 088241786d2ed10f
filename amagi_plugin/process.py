"""One video in, every result out: the job that ``amagi process`` and the service workers run."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amagi_plugin.errors import InputError
from amagi_plugin.modelspec import DEMO_NOTICE, ModelSpec
from amagi_plugin.outputs import summary, write_predictions_csv, write_summary, write_timeline_png
from amagi_plugin.pipeline import AnalysisResult, BleedingAnalyzer, ProgressFn
from dicom_io.errors import DicomIOError
from dicom_io.keyimages import write_key_images
from dicom_io.kos import write_key_object_selection
from dicom_io.results import AlgorithmInfo, InstanceRef
from dicom_io.seg import write_bleeding_segmentation
from dicom_io.sr import write_bleeding_report
from dicom_io.video import open_video

log = logging.getLogger(__name__)


@dataclass
class ProcessOutcome:
    """What one run wrote, for the caller to record and deliver."""

    output_dir: Path
    summary: dict[str, Any]
    result: AnalysisResult
    summary_path: Path
    predictions_path: Path
    timeline_path: Path
    sr: InstanceRef | None = None
    seg: InstanceRef | None = None
    key_images: list[InstanceRef] = field(default_factory=list)
    kos: InstanceRef | None = None

    @property
    def dicom_objects(self) -> list[InstanceRef]:
        """Written DICOM objects, in the order a PACS should receive them."""
        objs = [*self.key_images, self.seg, self.kos, self.sr]
        return [o for o in objs if o is not None]


def algorithm_info(spec: ModelSpec) -> AlgorithmInfo:
    from amagi_plugin import __version__

    description = (f"AMAGI bleeding detection ({spec.arch}) by amagi-plugin {__version__}; "
                   f"weights: {spec.weights}")
    if spec.weights == "demo-synthetic":
        description += f"; {DEMO_NOTICE}"
    return AlgorithmInfo(name=spec.name[:64], version=spec.version[:64], weights=spec.weights,
                         description=description)


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

    For DICOM input the SR, SEG, key images and KOS go into ``output_dir/dicom``; every
    input gets ``summary.json``, ``predictions.csv`` and ``timeline.png``.
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
                             out / "timeline.png")
    # Results reference frames of one instance; a series of single-frame images gets the
    # files below only (its frames are separate instances).
    if video.kind in ("dicom-video", "dicom-multiframe"):
        _write_dicom(outcome, video.header, spec, predecessor)
    write_predictions_csv(outcome.predictions_path, result)
    write_timeline_png(outcome.timeline_path, result, spec, title=video.sop_instance_uid or "",
                       threshold=analyzer.options.threshold)
    write_summary(outcome.summary_path, doc)  # last: its presence means the run completed
    return outcome


def _write_dicom(outcome: ProcessOutcome, header, spec: ModelSpec,
                 predecessor: InstanceRef | None) -> None:
    algo = algorithm_info(spec)
    result = outcome.result
    dicom_dir = outcome.output_dir / "dicom"
    dicom_dir.mkdir(exist_ok=True)
    if result.key_frames:
        outcome.key_images = write_key_images(header, result.key_frames, algo, dicom_dir)
    if result.masks:
        outcome.seg = write_bleeding_segmentation(header, result.masks, algo, dicom_dir)
    if result.events:
        outcome.kos = write_key_object_selection(header, [e.key_frame for e in result.events],
                                                 outcome.key_images, algo, dicom_dir)
    outcome.sr = write_bleeding_report(header, result.events, result.index, algo, dicom_dir,
                                       predecessor=predecessor)
