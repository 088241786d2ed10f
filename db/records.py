"""Recording what the service receives and produces: functions on a Session (caller commits).

- :func:`record_instance`: a received instance with its study and series.
- :func:`record_run`: one analysis run of a job, with its bleeding events and case indices.
- :func:`record_object`: a DICOM object we wrote (SR, SEG, KOS, key image).

Patient names are never stored; the Patient ID only when the caller passes
``store_patient_id=True`` (configuration ``database.store_patient_id``).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.errors import NotFoundError
from db.schema import (
    AnalysisRun,
    BleedingEvent,
    CaseIndex,
    Instance,
    Job,
    ObjectKind,
    ProducedObject,
    Series,
    Study,
    utcnow,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventRecord:
    """One bleeding event to store: times in seconds from the video start, frames 0-based.

    Probabilities are in [0, 1]; ``key_frame`` is the frame shown as the event's key image.
    """

    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    peak_probability: float
    mean_probability: float
    key_frame: int

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def validate(self) -> None:
        for name in ("start_s", "end_s", "peak_probability", "mean_probability"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"event {name} must be finite, got {value!r}")
        if self.start_s < 0 or self.end_s < self.start_s:
            raise ValueError(f"event times must satisfy 0 <= start_s <= end_s, got "
                             f"{self.start_s!r}..{self.end_s!r}")
        if self.start_frame < 0 or self.end_frame < self.start_frame:
            raise ValueError(f"event frames must satisfy 0 <= start <= end, got "
                             f"{self.start_frame!r}..{self.end_frame!r}")
        for name in ("peak_probability", "mean_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"event {name} must be in [0, 1], got {getattr(self, name)!r}")


@dataclass(frozen=True)
class IndicesRecord:
    """Per-case indices (seconds); ``first_bleed_s`` is None when there is no event."""

    event_count: int
    total_duration_s: float
    mean_duration_s: float
    max_duration_s: float
    first_bleed_s: float | None
    video_duration_s: float

    @classmethod
    def from_events(cls, events: Sequence[EventRecord], video_duration_s: float
                    ) -> IndicesRecord:
        """Indices computed from the events of one video of ``video_duration_s`` seconds."""
        durations = [e.duration_s for e in events]
        return cls(
            event_count=len(events),
            total_duration_s=float(sum(durations)),
            mean_duration_s=float(statistics.fmean(durations)) if durations else 0.0,
            max_duration_s=float(max(durations, default=0.0)),
            first_bleed_s=min((e.start_s for e in events), default=None),
            video_duration_s=float(video_duration_s),
        )


def record_instance(
    session: Session,
    *,
    sop_instance_uid: str,
    sop_class_uid: str,
    transfer_syntax_uid: str,
    study_instance_uid: str,
    series_instance_uid: str,
    size_bytes: int,
    spool_path: str,
    calling_ae: str | None = None,
    received_at: datetime | None = None,
    study_date: date | None = None,
    study_description: str | None = None,
    modality: str | None = None,
    series_description: str | None = None,
    number_of_frames: int | None = None,
    patient_id: str | None = None,
    store_patient_id: bool = False,
) -> Instance:
    """Record a received instance (PS3.4 Annex B storage), creating its study and series.

    The same SOP Instance UID received again updates the stored copy (path, size, time,
    calling AE) and returns the existing row.

    Parameters
    ----------
    size_bytes
        Size of the spooled file in bytes.
    spool_path
        Absolute path of the spooled file.
    patient_id
        Stored only when ``store_patient_id`` is true; the patient's name is never stored.
    """
    if size_bytes < 0:
        raise ValueError(f"size_bytes must be 0 or more, got {size_bytes!r}")
    received_at = received_at or utcnow()
    study = session.scalar(sa.select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None:
        study = Study(study_instance_uid=study_instance_uid, created_at=received_at)
        session.add(study)
    study.study_date = study_date or study.study_date
    study.study_description = study_description or study.study_description
    if store_patient_id and patient_id:
        study.patient_id = patient_id
    series = session.scalar(
        sa.select(Series).where(Series.series_instance_uid == series_instance_uid))
    if series is None:
        series = Series(series_instance_uid=series_instance_uid, study=study,
                        created_at=received_at)
        session.add(series)
    series.modality = modality or series.modality
    series.series_description = series_description or series.series_description
    inst = session.scalar(sa.select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))
    if inst is None:
        inst = Instance(sop_instance_uid=sop_instance_uid, series=series)
        session.add(inst)
    inst.sop_class_uid, inst.transfer_syntax_uid = sop_class_uid, transfer_syntax_uid
    inst.size_bytes, inst.spool_path, inst.calling_ae = size_bytes, spool_path, calling_ae
    inst.received_at, inst.number_of_frames = received_at, number_of_frames
    session.flush()
    return inst


def record_run(
    session: Session,
    job_id: int,
    *,
    weights_kind: str,
    events: Sequence[EventRecord],
    video_duration_s: float,
    parameters: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    indices: IndicesRecord | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> AnalysisRun:
    """Store the result of a job's analysis: run metadata, events and case indices.

    Recording a job's run again replaces the previous one (a retried job gives one result).

    Parameters
    ----------
    job_id
        The job analysed (model name and version are taken from it).
    weights_kind
        Where the weights came from, e.g. ``"demo"`` or ``"checkpoint"``.
    events
        Bleeding events, any order.
    video_duration_s
        Length of the analysed video in seconds.
    parameters
        JSON-serialisable analysis parameters (threshold, smoothing, prediction rate, ...).
    timings
        Seconds spent per stage (``{"decode": 1.2, "inference": 30.5}``).
    indices
        Per-case indices; computed from ``events`` when omitted.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    if not (math.isfinite(video_duration_s) and video_duration_s >= 0):
        raise ValueError(f"video_duration_s must be a finite value >= 0, got {video_duration_s!r}")
    for e in events:
        e.validate()
    old = session.scalar(sa.select(AnalysisRun).where(AnalysisRun.job_id == job_id))
    if old is not None:
        session.delete(old)
        session.flush()
    indices = indices or IndicesRecord.from_events(events, video_duration_s)
    run = AnalysisRun(job_id=job_id, model_name=job.model_name, model_version=job.model_version,
                      weights_kind=weights_kind, parameters=dict(parameters or {}),
                      timings=dict(timings or {}), started_at=started_at,
                      finished_at=finished_at or utcnow())
    run.events = [BleedingEvent(start_s=e.start_s, end_s=e.end_s, start_frame=e.start_frame,
                                end_frame=e.end_frame, duration_s=e.duration_s,
                                peak_probability=e.peak_probability,
                                mean_probability=e.mean_probability, key_frame=e.key_frame)
                  for e in sorted(events, key=lambda e: e.start_s)]
    run.index = CaseIndex(**vars(indices))
    session.add(run)
    session.flush()
    return run


def record_object(
    session: Session,
    run_id: int,
    *,
    kind: ObjectKind | str,
    sop_class_uid: str,
    sop_instance_uid: str,
    path: str,
    series_instance_uid: str | None = None,
) -> ProducedObject:
    """Record a DICOM object written for a run (idempotent on its SOP Instance UID).

    Parameters
    ----------
    kind
        ``sr``, ``seg``, ``kos`` or ``key_image``.
    path
        Absolute path of the written file.
    """
    try:
        kind = ObjectKind(kind)
    except ValueError as e:
        raise ValueError(f"kind must be one of {[k.value for k in ObjectKind]}, got {kind!r}"
                         ) from e
    if session.get(AnalysisRun, run_id) is None:
        raise NotFoundError(f"no analysis run {run_id}")
    obj = session.scalar(sa.select(ProducedObject)
                         .where(ProducedObject.sop_instance_uid == sop_instance_uid))
    if obj is None:
        obj = ProducedObject(sop_instance_uid=sop_instance_uid, run_id=run_id)
        session.add(obj)
    obj.kind, obj.sop_class_uid, obj.path = kind, sop_class_uid, path
    obj.series_instance_uid = series_instance_uid
    session.flush()
    return obj


def latest_report(session: Session, sop_instance_uid: str, *, exclude_job_id: int | None = None
                  ) -> tuple[str, str, str, str] | None:
    """The most recent SR produced for an instance by another job (a predecessor document):
    ``(study_uid, series_uid, sop_instance_uid, sop_class_uid)`` of the SR, or ``None``."""
    q = (sa.select(Study.study_instance_uid, ProducedObject.series_instance_uid,
                   ProducedObject.sop_instance_uid, ProducedObject.sop_class_uid)
         .join(AnalysisRun, AnalysisRun.id == ProducedObject.run_id)
         .join(Job, Job.id == AnalysisRun.job_id)
         .join(Instance, Instance.id == Job.instance_id)
         .join(Series, Series.id == Instance.series_id)
         .join(Study, Study.id == Series.study_id)
         .where(Instance.sop_instance_uid == sop_instance_uid,
                ProducedObject.kind == ObjectKind.SR)
         .order_by(ProducedObject.created_at.desc(), ProducedObject.id.desc()).limit(1))
    if exclude_job_id is not None:
        q = q.where(Job.id != exclude_job_id)
    row = session.execute(q).first()
    return (row[0], row[1], row[2], row[3]) if row else None
