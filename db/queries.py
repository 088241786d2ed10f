"""Read-side queries behind ``amagi cases``: plain dataclasses, no ORM objects.

A *case* is a job (one received instance × one model version); ``case_id`` is the job id.
Cases that are not analysed yet (queued, running, failed) have ``None`` indices; an analysed
case without events has count 0, total 0 s and ``None`` mean, longest and first bleeding
(see :class:`dicom_io.results.CaseIndex`).
Durations and times are in seconds; timestamps are UTC.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.errors import AmbiguousCaseError, NotFoundError
from db.schema import (
    AnalysisRun,
    BleedingEventRow,
    CaseIndexRow,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    ProducedObject,
    Series,
    Study,
)
from dicom_io.results import WeightsKind


@dataclass(frozen=True)
class CaseFilter:
    """Which cases to select; every criterion is optional and they combine with AND.

    Parameters
    ----------
    study_date_from, study_date_to
        Study Date range, both ends inclusive.
    received_from, received_to
        Reception time range (UTC, timezone-aware): ``from`` inclusive, ``to`` exclusive.
    min_events
        At least this many bleeding events.
    min_total_duration_s, min_max_duration_s
        Total bleeding time, and longest event, at least this many seconds.
    model
        Model name or model version.
    state
        Job state.
    """

    study_date_from: date | None = None
    study_date_to: date | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None
    min_events: int | None = None
    min_total_duration_s: float | None = None
    min_max_duration_s: float | None = None
    model: str | None = None
    state: JobState | None = None

    def __post_init__(self) -> None:
        if self.state is not None and not isinstance(self.state, JobState):
            try:
                object.__setattr__(self, "state", JobState(self.state))
            except ValueError as e:
                raise ValueError(f"state must be one of {[s.value for s in JobState]}, "
                                 f"got {self.state!r}") from e
        for name in ("received_from", "received_to"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware, got {value!r}")
        for name in ("min_events", "min_total_duration_s", "min_max_duration_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be 0 or more, got {value!r}")

    def where(self) -> list[sa.ColumnElement[bool]]:
        """The SQL conditions of this filter."""
        c: list[sa.ColumnElement[bool]] = []
        if self.study_date_from is not None:
            c.append(Study.study_date >= self.study_date_from)
        if self.study_date_to is not None:
            c.append(Study.study_date <= self.study_date_to)
        if self.received_from is not None:
            c.append(Instance.received_at >= self.received_from)
        if self.received_to is not None:
            c.append(Instance.received_at < self.received_to)
        if self.min_events is not None:
            c.append(CaseIndexRow.event_count >= self.min_events)
        if self.min_total_duration_s is not None:
            c.append(CaseIndexRow.total_duration_s >= self.min_total_duration_s)
        if self.min_max_duration_s:
            c.append(CaseIndexRow.max_duration_s >= self.min_max_duration_s)
        elif self.min_max_duration_s is not None:  # 0 s: every analysed case, event-free ones too
            c.append(CaseIndexRow.event_count.is_not(None))
        if self.model is not None:
            c.append(sa.or_(Job.model_name == self.model, Job.model_version == self.model))
        if self.state is not None:
            c.append(Job.state == self.state)
        return c

    def needs_indices(self) -> bool:
        return any(v is not None for v in (self.min_events, self.min_total_duration_s,
                                           self.min_max_duration_s))


@dataclass(frozen=True)
class CaseRow:
    """One case as listed (indices are None until the case is analysed)."""

    case_id: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    study_date: date | None
    study_description: str | None
    received_at: datetime
    calling_ae: str | None
    model_name: str
    model_version: str
    state: str
    attempts: int
    event_count: int | None
    total_duration_s: float | None
    mean_duration_s: float | None
    max_duration_s: float | None
    first_bleed_s: float | None
    video_duration_s: float | None


@dataclass(frozen=True)
class EventRow:
    """One bleeding event (seconds from the video start, 1-based DICOM frame numbers)."""

    case_id: int
    number: int  # 1-based, in time order
    start_s: float
    end_s: float
    duration_s: float
    start_frame: int
    end_frame: int
    peak_probability: float
    mean_probability: float
    key_frame: int


@dataclass(frozen=True)
class ObjectRow:
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    path: str
    deliveries: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class CaseDetail:
    """Everything known about one case."""

    case: CaseRow
    sop_class_uid: str
    transfer_syntax_uid: str
    size_bytes: int
    spool_path: str
    patient_id: str | None  # only when the store was configured to keep it
    last_error: str | None
    worker: str | None
    weights_kind: WeightsKind | None
    parameters: dict[str, Any] | None
    timings: dict[str, Any] | None
    events: list[EventRow]
    objects: list[ObjectRow]


@dataclass(frozen=True)
class CohortStats:
    """Aggregates over the selected cases (durations in seconds; None when undefined)."""

    cases: int
    analysed: int
    cases_with_bleeding: int
    events: int
    events_per_case_mean: float | None
    events_per_case_median: float | None
    total_duration_mean_s: float | None
    total_duration_median_s: float | None
    total_duration_max_s: float | None
    max_event_duration_s: float | None
    first_bleed_median_s: float | None
    video_duration_total_s: float


CASE_COLUMNS: tuple[str, ...] = tuple(CaseRow.__dataclass_fields__)
EVENT_COLUMNS: tuple[str, ...] = tuple(EventRow.__dataclass_fields__)


def _case_select() -> sa.Select[Any]:
    return (
        sa.select(Job.id, Study.study_instance_uid, Series.series_instance_uid,
                  Instance.sop_instance_uid, Study.study_date, Study.study_description,
                  Instance.received_at, Instance.calling_ae, Job.model_name, Job.model_version,
                  Job.state, Job.attempts, CaseIndexRow.event_count,
                  CaseIndexRow.total_duration_s, CaseIndexRow.mean_duration_s,
                  CaseIndexRow.max_duration_s, CaseIndexRow.first_bleed_s,
                  CaseIndexRow.video_duration_s)
        .select_from(Job)
        .join(Instance, Instance.id == Job.instance_id)
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(AnalysisRun, AnalysisRun.job_id == Job.id)
        .outerjoin(CaseIndexRow, CaseIndexRow.run_id == AnalysisRun.id)
    )


def _row(r: sa.Row[Any]) -> CaseRow:
    values = list(r)
    values[10] = JobState(values[10]).value
    return CaseRow(*values)


def _ordered(flt: CaseFilter) -> sa.Select[Any]:
    return (_case_select().where(*flt.where())
            .order_by(Instance.received_at.desc(), Job.id.desc()))


def list_cases(session: Session, flt: CaseFilter | None = None, *, limit: int = 50,
               offset: int = 0) -> list[CaseRow]:
    """A page of cases matching ``flt``, newest reception first."""
    if limit < 1 or offset < 0:
        raise ValueError(f"limit must be >= 1 and offset >= 0, got {limit!r}, {offset!r}")
    stmt = _ordered(flt or CaseFilter()).limit(limit).offset(offset)
    return [_row(r) for r in session.execute(stmt)]


def iter_cases(session: Session, flt: CaseFilter | None = None, *, batch: int = 1000
               ) -> Iterator[CaseRow]:
    """Every case matching ``flt``, newest first, streamed ``batch`` rows at a time."""
    stmt = _ordered(flt or CaseFilter()).execution_options(yield_per=batch)
    for r in session.execute(stmt):
        yield _row(r)


def count_cases(session: Session, flt: CaseFilter | None = None) -> int:
    """Number of cases matching ``flt``."""
    sub = _case_select().where(*(flt or CaseFilter()).where()).subquery()
    return int(session.scalar(sa.select(sa.func.count()).select_from(sub)) or 0)


def events_for_cases(session: Session, case_ids: Sequence[int]) -> dict[int, list[EventRow]]:
    """Bleeding events of each case id (time order; cases without events map to ``[]``)."""
    out: dict[int, list[EventRow]] = {i: [] for i in case_ids}
    ids = list(case_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows = session.execute(
            sa.select(AnalysisRun.job_id, BleedingEventRow.start_s, BleedingEventRow.end_s,
                      BleedingEventRow.duration_s, BleedingEventRow.start_frame,
                      BleedingEventRow.end_frame, BleedingEventRow.peak_probability,
                      BleedingEventRow.mean_probability, BleedingEventRow.key_frame)
            .join(AnalysisRun, AnalysisRun.id == BleedingEventRow.run_id)
            .where(AnalysisRun.job_id.in_(chunk))
            .order_by(AnalysisRun.job_id, BleedingEventRow.start_s, BleedingEventRow.id))
        for job_id, *rest in rows:
            events = out[job_id]
            events.append(EventRow(job_id, len(events) + 1, *rest))
    return out


def find_case_id(session: Session, key: str | int) -> int:
    """Resolve a case id, a SOP Instance UID or a Study Instance UID to one case id.

    Raises
    ------
    NotFoundError
        Nothing matches ``key``.
    AmbiguousCaseError
        ``key`` names a study or instance with several cases; the message lists their ids.
    """
    text = str(key).strip()
    if text.isdigit() and session.get(Job, int(text)) is not None:
        return int(text)
    for col in (Instance.sop_instance_uid, Study.study_instance_uid):
        ids = list(session.scalars(
            sa.select(Job.id).join(Instance, Instance.id == Job.instance_id)
            .join(Series, Series.id == Instance.series_id).join(Study, Study.id == Series.study_id)
            .where(col == text).order_by(Job.id)))
        if len(ids) == 1:
            return ids[0]
        if ids:
            raise AmbiguousCaseError(
                f"{text} matches {len(ids)} cases ({', '.join(map(str, ids[:10]))}"
                f"{', ...' if len(ids) > 10 else ''}); pass a case id")
    raise NotFoundError(f"no case with id or SOP/Study Instance UID {text}")


def get_case(session: Session, key: str | int) -> CaseDetail:
    """One case with its events, produced objects and their deliveries (see :func:`find_case_id`)."""
    case_id = find_case_id(session, key)
    row = _row(session.execute(_case_select().where(Job.id == case_id)).one())
    extra = session.execute(
        sa.select(Instance.sop_class_uid, Instance.transfer_syntax_uid, Instance.size_bytes,
                  Instance.spool_path, Study.patient_id, Job.last_error, Job.worker,
                  AnalysisRun.weights_kind, AnalysisRun.parameters, AnalysisRun.timings,
                  AnalysisRun.id)
        .select_from(Job).join(Instance, Instance.id == Job.instance_id)
        .join(Series, Series.id == Instance.series_id).join(Study, Study.id == Series.study_id)
        .outerjoin(AnalysisRun, AnalysisRun.job_id == Job.id)
        .where(Job.id == case_id)).one()
    run_id = extra[-1]
    objects: list[ObjectRow] = []
    if run_id is not None:
        for obj in session.scalars(sa.select(ProducedObject).where(ProducedObject.run_id == run_id)
                                   .order_by(ProducedObject.id)):
            dels = session.scalars(sa.select(Delivery).where(Delivery.object_id == obj.id)
                                   .order_by(Delivery.destination))
            objects.append(ObjectRow(obj.kind.value, obj.sop_class_uid, obj.sop_instance_uid,
                                     obj.path, [
                                         {"destination": d.destination, "state": d.state.value,
                                          "attempts": d.attempts,
                                          "next_attempt_at": d.next_attempt_at,
                                          "last_error": d.last_error, "sent_at": d.sent_at}
                                         for d in dels]))
    return CaseDetail(row, *extra[:-1], events=events_for_cases(session, [case_id])[case_id],
                      objects=objects)


def cohort_stats(session: Session, flt: CaseFilter | None = None) -> CohortStats:
    """Aggregates over the cases matching ``flt`` (medians over analysed cases)."""
    flt = flt or CaseFilter()
    sub = _case_select().where(*flt.where()).subquery()
    cases = int(session.scalar(sa.select(sa.func.count()).select_from(sub)) or 0)
    rows = session.execute(
        sa.select(sub.c.event_count, sub.c.total_duration_s, sub.c.max_duration_s,
                  sub.c.first_bleed_s, sub.c.video_duration_s)
        .where(sub.c.event_count.is_not(None))).all()
    counts = [r[0] for r in rows]
    totals = [r[1] for r in rows]
    firsts = [r[3] for r in rows if r[3] is not None]

    def mean(v: list[float]) -> float | None:
        return float(statistics.fmean(v)) if v else None

    def median(v: list[float]) -> float | None:
        return float(statistics.median(v)) if v else None

    return CohortStats(
        cases=cases,
        analysed=len(rows),
        cases_with_bleeding=sum(1 for n in counts if n > 0),
        events=int(sum(counts)),
        events_per_case_mean=mean(counts),
        events_per_case_median=median(counts),
        total_duration_mean_s=mean(totals),
        total_duration_median_s=median(totals),
        total_duration_max_s=max(totals, default=None),
        max_event_duration_s=max((r[2] for r in rows if r[2] is not None), default=None),
        first_bleed_median_s=median(firsts),
        video_duration_total_s=float(sum(r[4] for r in rows)),
    )


def service_status(session: Session, *, recent: int = 10) -> dict[str, Any]:
    """What ``amagi status`` shows: jobs by state, running jobs, recent failures, deliveries."""
    jobs = {s.value: 0 for s in JobState}
    for state, n in session.execute(sa.select(Job.state, sa.func.count()).group_by(Job.state)):
        jobs[JobState(state).value] = n
    running = [
        {"job": r[0], "sop_instance_uid": r[1], "worker": r[2], "since": r[3]}
        for r in session.execute(
            sa.select(Job.id, Instance.sop_instance_uid, Job.worker, Job.started_at)
            .join(Instance, Instance.id == Job.instance_id)
            .where(Job.state == JobState.RUNNING).order_by(Job.started_at))]
    failed = [
        {"job": r[0], "sop_instance_uid": r[1], "attempts": r[2], "error": r[3] or ""}
        for r in session.execute(
            sa.select(Job.id, Instance.sop_instance_uid, Job.attempts, Job.last_error)
            .join(Instance, Instance.id == Job.instance_id)
            .where(Job.state == JobState.FAILED)
            .order_by(Job.updated_at.desc()).limit(recent))]
    counts = {s.value: 0 for s in DeliveryState}
    for state, n in session.execute(
            sa.select(Delivery.state, sa.func.count()).group_by(Delivery.state)):
        counts[DeliveryState(state).value] = n
    by_dest = [
        {"destination": r[0], "pending": r[1], "next_attempt_at": r[2], "last_error": r[3]}
        for r in session.execute(
            sa.select(Delivery.destination, sa.func.count(), sa.func.min(Delivery.next_attempt_at),
                      sa.func.max(Delivery.last_error))
            .where(Delivery.state == DeliveryState.PENDING).group_by(Delivery.destination))]
    # Refused for good (e.g. HTTP 4xx): each destination's count and its latest reason.
    latest = (sa.select(Delivery.destination, Delivery.last_error,
                        sa.func.row_number().over(partition_by=Delivery.destination,
                                                  order_by=(Delivery.last_attempt_at.desc(),
                                                            Delivery.id.desc())).label("n"))
              .where(Delivery.state == DeliveryState.FAILED).subquery())
    reasons = dict(session.execute(sa.select(latest.c.destination, latest.c.last_error)
                                   .where(latest.c.n == 1)).all())
    failed_by_dest = [
        {"destination": r[0], "failed": r[1], "last_error": reasons.get(r[0])}
        for r in session.execute(
            sa.select(Delivery.destination, sa.func.count())
            .where(Delivery.state == DeliveryState.FAILED).group_by(Delivery.destination)
            .order_by(Delivery.destination))]
    return {"jobs": jobs, "running": running, "failed": failed,
            "deliveries": {**counts, "by_destination": by_dest,
                           "failed_by_destination": failed_by_dest}}
