"""The case store's tables (SQLAlchemy 2.x typed declarative mappings).

One *case* is one received instance analysed by one model version: its :class:`Job` row is the
case's identity (``case id`` = ``jobs.id``), the :class:`AnalysisRun` holds what the model
produced, :class:`CaseIndexRow` the per-case indices and :class:`BleedingEventRow` the events:
the stored form of :class:`dicom_io.results.CaseIndex` and :class:`dicom_io.results.BleedingEvent`
(adapters in :mod:`db.records`). Frame numbers are 1-based DICOM frame numbers (PS3.3
C.7.6.6), as the analysis and the SR give them.

Patient names are never stored. ``studies.patient_id`` is filled only when the caller asks
(configuration ``database.store_patient_id``). Every timestamp is stored as UTC.

The schema is changed only by Alembic revisions in :mod:`db.migrations`; the ``MetaData``
naming convention keeps constraint names stable across SQLite and PostgreSQL.
"""

from __future__ import annotations

import enum
from datetime import date, datetime, timezone
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dicom_io.results import WeightsKind

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID_LEN = 64  # PS3.5 §9.1: a UID is at most 64 characters


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (stored naive UTC, read back aware)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamps must be timezone-aware, got naive {value!r}")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


class JobState(str, enum.Enum):
    """Job life cycle: ``received → queued → running → done | failed`` (failed → queued on retry)."""

    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(str, enum.Enum):
    """State of one produced object towards one destination."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class ObjectKind(str, enum.Enum):
    """What a produced DICOM object is."""

    SR = "sr"
    SEG = "seg"
    KOS = "kos"
    KEY_IMAGE = "key_image"
    PDF = "pdf"  # the report, Encapsulated PDF (PS3.3 A.45.1)


def _enum(cls: type[enum.Enum], name: str) -> sa.Enum:
    return sa.Enum(cls, name=name, native_enum=False, create_constraint=True, length=16,
                   values_callable=lambda e: [m.value for m in e], validate_strings=True)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: sa.JSON()}


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(sa.String(UID_LEN), unique=True)
    study_date: Mapped[date | None] = mapped_column(sa.Date, index=True)
    study_description: Mapped[str | None] = mapped_column(sa.String(64))
    patient_id: Mapped[str | None] = mapped_column(sa.String(64))  # only if configured
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("studies.id", ondelete="CASCADE"),
                                          index=True)
    series_instance_uid: Mapped[str] = mapped_column(sa.String(UID_LEN), unique=True)
    modality: Mapped[str | None] = mapped_column(sa.String(16))
    series_description: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One received SOP instance (a video) and where it lies in the spool."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(sa.ForeignKey("series.id", ondelete="CASCADE"),
                                           index=True)
    sop_instance_uid: Mapped[str] = mapped_column(sa.String(UID_LEN), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(sa.String(UID_LEN))
    transfer_syntax_uid: Mapped[str] = mapped_column(sa.String(UID_LEN))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    spool_path: Mapped[str] = mapped_column(sa.String(1024))
    calling_ae: Mapped[str | None] = mapped_column(sa.String(16))
    number_of_frames: Mapped[int | None] = mapped_column(sa.Integer)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    series: Mapped[Series] = relationship(back_populates="instances")
    jobs: Mapped[list[Job]] = relationship(back_populates="instance")


class Job(Base):
    """One instance to analyse with one model version; also the identity of a *case*."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.UniqueConstraint("instance_id", "model_version"),
        sa.CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        sa.Index("ix_jobs_state_not_before", "state", "not_before"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(sa.ForeignKey("instances.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(sa.String(64))
    model_version: Mapped[str] = mapped_column(sa.String(128))
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"))
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    worker: Mapped[str | None] = mapped_column(sa.String(128))
    lease_expires_at: Mapped[datetime | None]
    not_before: Mapped[datetime | None]  # a retried job waits until then
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    instance: Mapped[Instance] = relationship(back_populates="jobs")
    run: Mapped[AnalysisRun | None] = relationship(back_populates="job")


class AnalysisRun(Base):
    """What one model version produced for one job."""

    __tablename__ = "analysis_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    model_name: Mapped[str] = mapped_column(sa.String(64), index=True)
    model_version: Mapped[str] = mapped_column(sa.String(128))
    weights_kind: Mapped[WeightsKind] = mapped_column(_enum(WeightsKind, "weights_kind"))
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # seconds per stage
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="run")
    events: Mapped[list[BleedingEventRow]] = relationship(
        back_populates="run", order_by="BleedingEventRow.start_s", cascade="all, delete-orphan")
    index: Mapped[CaseIndexRow | None] = relationship(back_populates="run",
                                                      cascade="all, delete-orphan")
    objects: Mapped[list[ProducedObject]] = relationship(back_populates="run")


class BleedingEventRow(Base):
    """A stored :class:`dicom_io.results.BleedingEvent`: times in seconds from the first
    frame, ``start_frame``/``end_frame``/``key_frame`` 1-based DICOM frame numbers."""

    __tablename__ = "bleeding_events"
    __table_args__ = (sa.CheckConstraint("end_s >= start_s", name="end_after_start"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("analysis_runs.id", ondelete="CASCADE"),
                                        index=True)
    start_s: Mapped[float]
    end_s: Mapped[float]
    start_frame: Mapped[int]
    end_frame: Mapped[int]
    duration_s: Mapped[float]
    peak_probability: Mapped[float]
    mean_probability: Mapped[float]
    key_frame: Mapped[int]

    run: Mapped[AnalysisRun] = relationship(back_populates="events")


class CaseIndexRow(Base):
    """A stored :class:`dicom_io.results.CaseIndex` (durations in seconds).

    With no event, ``mean_duration_s``, ``max_duration_s`` and ``first_bleed_s`` are ``NULL``
    (undefined), ``total_duration_s`` is 0.
    """

    __tablename__ = "case_indices"

    run_id: Mapped[int] = mapped_column(sa.ForeignKey("analysis_runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    event_count: Mapped[int] = mapped_column(index=True)
    total_duration_s: Mapped[float] = mapped_column(index=True)
    mean_duration_s: Mapped[float | None]
    max_duration_s: Mapped[float | None] = mapped_column(index=True)
    first_bleed_s: Mapped[float | None]
    video_duration_s: Mapped[float]

    run: Mapped[AnalysisRun] = relationship(back_populates="index")


class ProducedObject(Base):
    """A DICOM object we wrote (SR, SEG, KOS, key image) and where it lies on disk."""

    __tablename__ = "produced_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("analysis_runs.id", ondelete="CASCADE"),
                                        index=True)
    kind: Mapped[ObjectKind] = mapped_column(_enum(ObjectKind, "object_kind"))
    sop_class_uid: Mapped[str] = mapped_column(sa.String(UID_LEN))
    sop_instance_uid: Mapped[str] = mapped_column(sa.String(UID_LEN), unique=True)
    series_instance_uid: Mapped[str | None] = mapped_column(sa.String(UID_LEN))
    path: Mapped[str] = mapped_column(sa.String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[AnalysisRun] = relationship(back_populates="objects")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="object")


class Delivery(Base):
    """Export of one produced object to one destination, with persistent retry state."""

    __tablename__ = "deliveries"
    __table_args__ = (
        sa.UniqueConstraint("object_id", "destination"),
        sa.Index("ix_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    object_id: Mapped[int] = mapped_column(
        sa.ForeignKey("produced_objects.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(sa.String(300))  # "AE@host:port"
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState, "delivery_state"))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Storage Commitment (PS3.4 Annex J) after sending, when configured: "committed" or
    # "failed: <reason>"; None when not requested (yet).
    commitment: Mapped[str | None] = mapped_column(sa.String(256))
    commitment_at: Mapped[datetime | None]
    # Transaction UID of the Storage Commitment request: the report may come later, on an
    # association the destination opens to our listener (commitment "requested" until then).
    commitment_transaction_uid: Mapped[str | None] = mapped_column(sa.String(64), index=True)

    object: Mapped[ProducedObject] = relationship(back_populates="deliveries")


class WorkerNode(Base):
    """One thread of an ``amagi serve`` process (a worker ``host:pid:wN``, or the listener
    ``host:pid:listener``), registered at start and heartbeating while it runs; several
    processes on several hosts share the table (``amagi status`` lists them)."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)  # as in jobs.worker
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int]
    role: Mapped[str] = mapped_column(sa.String(16))  # the process's: all, listener, worker
    device: Mapped[str | None] = mapped_column(sa.String(32))  # the model's (workers only)
    state: Mapped[str] = mapped_column(sa.String(64))  # idle, running job N, listening, ...
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)  # jobs finished, last error...
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None]
