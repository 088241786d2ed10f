"""Recording what the service receives and produces: functions on a Session (caller commits).

- :func:`record_instance`: a received instance with its study and series.
- :func:`record_run`: one analysis run of a job, with its bleeding events and case index
  (the analysis' own :class:`~dicom_io.results.BleedingEvent` and
  :class:`~dicom_io.results.CaseIndex`, stored through :func:`event_row` and :func:`index_row`).
- :func:`record_object`: a DICOM object we wrote (SR, SEG, KOS, key image).

Patient names are never stored; the Patient ID only when the caller passes
``store_patient_id=True`` (configuration ``database.store_patient_id``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.errors import NotFoundError
from db.schema import (
    AnalysisRun,
    BleedingEventRow,
    CaseIndexRow,
    Instance,
    Job,
    ObjectKind,
    ProducedObject,
    Series,
    Study,
    utcnow,
)
from dicom_io.results import BleedingEvent, CaseIndex, WeightsKind

log = logging.getLogger(__name__)


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


def event_row(event: BleedingEvent) -> BleedingEventRow:
    """The database row of a detected event (same fields, frames 1-based as in DICOM)."""
    return BleedingEventRow(start_s=event.start_s, end_s=event.end_s, duration_s=event.duration_s,
                            start_frame=event.start_frame, end_frame=event.end_frame,
                            key_frame=event.key_frame, peak_probability=event.peak_probability,
                            mean_probability=event.mean_probability)


def index_row(index: CaseIndex) -> CaseIndexRow:
    """The database row of a case index (``None`` durations of an event-free case: ``NULL``)."""
    return CaseIndexRow(event_count=index.event_count, total_duration_s=index.total_duration_s,
                        mean_duration_s=index.mean_duration_s,
                        max_duration_s=index.max_duration_s, first_bleed_s=index.first_bleed_s,
                        video_duration_s=index.video_duration_s)


def record_run(
    session: Session,
    job_id: int,
    *,
    weights_kind: WeightsKind | str,
    events: Sequence[BleedingEvent],
    index: CaseIndex,
    parameters: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> AnalysisRun:
    """Store the result of a job's analysis: run metadata, events and case index.

    Recording a job's run again replaces the previous one (a retried job gives one result).

    Parameters
    ----------
    job_id
        The job analysed (model name and version are taken from it).
    weights_kind
        Where the weights came from (:class:`~dicom_io.results.WeightsKind` or its value).
    events
        The bleeding events the analysis found, any order.
    index
        The case index the analysis computed from ``events``
        (:meth:`~dicom_io.results.CaseIndex.from_events`): stored as given, never recomputed.
    parameters
        JSON-serialisable analysis parameters (threshold, smoothing, prediction rate, ...).
    timings
        Seconds spent per stage (``{"decode": 1.2, "inference": 30.5}``).
    """
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    weights_kind = WeightsKind.coerce(weights_kind)
    for i, e in enumerate(events):
        if not isinstance(e, BleedingEvent):
            raise ValueError(f"events[{i}] must be a BleedingEvent, got {e!r}")
    if not isinstance(index, CaseIndex) or index.event_count != len(events):
        raise ValueError(f"index must be the CaseIndex of the {len(events)} events, got {index!r}")
    old = session.scalar(sa.select(AnalysisRun).where(AnalysisRun.job_id == job_id))
    if old is not None:
        session.delete(old)
        session.flush()
    run = AnalysisRun(job_id=job_id, model_name=job.model_name, model_version=job.model_version,
                      weights_kind=weights_kind, parameters=dict(parameters or {}),
                      timings=dict(timings or {}), started_at=started_at,
                      finished_at=finished_at or utcnow())
    run.events = [event_row(e) for e in sorted(events, key=lambda e: e.start_s)]
    run.index = index_row(index)
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
