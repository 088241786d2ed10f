"""The durable job queue: functions on a :class:`~sqlalchemy.orm.Session`.

A job is one received instance to analyse with one model version. Its states are
``received → queued → running → done | failed``; a failed attempt goes back to ``queued``
until ``max_attempts`` is spent. A running job holds a *lease*: a worker renews it with
:func:`heartbeat`, and when it expires (the worker died) :func:`claim_next` hands the job to
another worker.

:func:`claim_next` is atomic across processes: ``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL, a ``BEGIN IMMEDIATE`` transaction (the database write lock) on SQLite. It runs in
its own transaction and commits; the other functions leave the commit to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.engine import SQLITE_BEGIN_OPTION
from db.errors import JobStateError, LeaseLostError, NotFoundError
from db.schema import Instance, Job, JobState, Series, Study, utcnow
from dicom_io.sopclasses import is_series_frame

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job it has claimed (times are UTC)."""

    job_id: int
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    spool_path: str
    model_name: str
    model_version: str
    attempt: int  # 1 for the first attempt
    max_attempts: int
    lease_expires_at: datetime
    #: For an image of a single-frame series (its job stands for the series): the spool files
    #: of every recorded image of that series, in path order; empty for any other instance
    #: (analyse ``spool_path``). From the database: a worker never reads headers or lists
    #: spool directories.
    series_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnqueueResult:
    job_id: int
    created: bool  # False: the job already existed (idempotent enqueue)
    state: JobState
    requeued: bool = False  # the job existed, had failed, and is queued again


def _now(now: datetime | None) -> datetime:
    return utcnow() if now is None else now


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")


def enqueue(session: Session, sop_instance_uid: str, *, model_name: str, model_version: str,
            max_attempts: int = 3, ready: bool = True, now: datetime | None = None
            ) -> EnqueueResult:
    """Queue the analysis of a received instance with a model version, once.

    Parameters
    ----------
    session
        Open session; the caller commits.
    sop_instance_uid
        An instance already recorded with :func:`db.records.record_instance`.
    model_name, model_version
        The model; ``(instance, model_version)`` identifies the job.
    max_attempts
        Attempts before the job is marked failed.
    ready
        ``True``: the job is ``queued`` at once. ``False``: it stays ``received`` (e.g. a
        series not complete yet) until :func:`release`.

    Returns
    -------
    EnqueueResult
        ``created`` is ``False`` when the job existed already; it is then left unchanged,
        unless its last attempt had failed: an instance received again (e.g. corrected) is
        worth another try, so the job starts over with fresh attempts (``requeued``).

    Raises
    ------
    NotFoundError
        No instance with that SOP Instance UID was recorded.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be 1 or more, got {max_attempts!r}")
    now = _now(now)
    instance_id = session.scalar(
        sa.select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid))
    if instance_id is None:
        raise NotFoundError(f"no received instance {sop_instance_uid}")
    existing = session.scalar(sa.select(Job).where(Job.instance_id == instance_id,
                                                   Job.model_version == model_version))
    if existing is not None:
        if existing.state == JobState.FAILED:
            state = requeue(session, existing.id, ready=ready, max_attempts=max_attempts, now=now)
            return EnqueueResult(existing.id, False, state, requeued=True)
        return EnqueueResult(existing.id, False, existing.state)
    state = JobState.QUEUED if ready else JobState.RECEIVED
    job = Job(instance_id=instance_id, model_name=model_name, model_version=model_version,
              state=state, attempts=0, max_attempts=max_attempts, created_at=now,
              updated_at=now, queued_at=now if ready else None)
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:  # another process enqueued it between our select and insert
        existing = session.scalar(sa.select(Job).where(Job.instance_id == instance_id,
                                                       Job.model_version == model_version))
        if existing is None:
            raise
        return EnqueueResult(existing.id, False, existing.state)
    log.info("job %d queued: instance %s, model %s %s", job.id, sop_instance_uid, model_name,
             model_version)
    return EnqueueResult(job.id, True, state)


def requeue(session: Session, job_id: int, *, ready: bool = True,
            max_attempts: int | None = None, now: datetime | None = None) -> JobState:
    """Give a ``failed`` job a fresh start: attempts back to 0, ``queued`` (or ``received``
    when ``ready`` is ``False``, until :func:`release`). The caller commits.

    Its last error is kept until the next attempt ends. Returns the new state.

    Raises
    ------
    NotFoundError
        No job ``job_id``.
    JobStateError
        The job is not ``failed`` (queued, running and done jobs are left alone).
    """
    now = _now(now)
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    if job.state != JobState.FAILED:
        raise JobStateError(f"job {job_id} is {JobState(job.state).value}, not failed; "
                            "only a failed job can be queued again")
    job.state = JobState.QUEUED if ready else JobState.RECEIVED
    job.attempts, job.worker, job.lease_expires_at = 0, None, None
    job.not_before, job.finished_at, job.updated_at = None, None, now
    job.queued_at = now if ready else None
    if max_attempts is not None:
        job.max_attempts = max_attempts
    session.flush()
    log.info("job %d queued again (it had failed: %s)", job.id, job.last_error or "no error")
    return job.state


def release(session: Session, job_id: int, *, now: datetime | None = None) -> None:
    """Move a ``received`` job to ``queued`` (no-op for a job already past that state)."""
    now = _now(now)
    session.execute(sa.update(Job).where(Job.id == job_id, Job.state == JobState.RECEIVED)
                    .values(state=JobState.QUEUED, queued_at=now, updated_at=now))


def claim_next(session: Session, worker: str, lease_s: float, *, now: datetime | None = None,
               model_version: str | None = None) -> ClaimedJob | None:
    """Atomically take the oldest runnable job for ``worker``, or ``None`` when there is none.

    Runnable: ``queued`` and past its retry delay, or ``running`` with an expired lease (its
    worker is presumed dead). A job whose lease expired on its last attempt is marked
    ``failed`` instead. Runs in its own transaction and commits before returning.

    Parameters
    ----------
    session
        A session with no transaction open (a fresh one).
    worker
        Name of the claiming worker (e.g. ``host:pid:thread``).
    lease_s
        Lease length in seconds; renew it with :func:`heartbeat` before it runs out.
    model_version
        Take only jobs of this model version (a worker runs the jobs of its own model; jobs
        of other models wait for workers that run those); ``None``: any job.
    """
    _check_positive("lease_s", lease_s)
    if session.in_transaction():
        raise RuntimeError("claim_next needs a session without an open transaction")
    now = _now(now)
    session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
    try:
        expired = sa.and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
        session.execute(
            sa.update(Job).where(expired, Job.attempts >= Job.max_attempts)
            .values(state=JobState.FAILED, worker=None, lease_expires_at=None, finished_at=now,
                    updated_at=now, last_error="lease expired on the last attempt"),
            execution_options={"synchronize_session": False})
        runnable = sa.or_(
            sa.and_(Job.state == JobState.QUEUED,
                    sa.or_(Job.not_before.is_(None), Job.not_before <= now)),
            expired)
        if model_version is not None:
            runnable = sa.and_(runnable, Job.model_version == model_version)
        job_id = session.scalar(sa.select(Job.id).where(runnable).order_by(Job.id).limit(1)
                                .with_for_update(skip_locked=True))
        if job_id is None:
            session.commit()
            return None
        job = session.get_one(Job, job_id, populate_existing=True)
        if job.state == JobState.RUNNING:
            log.warning("job %d: lease of worker %s expired; reclaimed by %s", job.id,
                        job.worker, worker)
        lease = now + timedelta(seconds=lease_s)
        job.state, job.worker, job.lease_expires_at = JobState.RUNNING, worker, lease
        job.attempts += 1
        job.started_at, job.updated_at, job.not_before = now, now, None
        inst, spool, series, study, sop_class, frames, series_id = session.execute(
            sa.select(Instance.sop_instance_uid, Instance.spool_path, Series.series_instance_uid,
                      Study.study_instance_uid, Instance.sop_class_uid, Instance.number_of_frames,
                      Series.id).select_from(Instance)
            .join(Series, Series.id == Instance.series_id).join(Study, Study.id == Series.study_id)
            .where(Instance.id == job.instance_id)).one()
        members: tuple[str, ...] = ()
        if is_series_frame(sop_class, frames):
            members = tuple(sorted(session.scalars(
                sa.select(Instance.spool_path).where(Instance.series_id == series_id))))
        claimed = ClaimedJob(job.id, inst, series, study, spool, job.model_name,
                             job.model_version, job.attempts, job.max_attempts, lease,
                             series_paths=members)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return claimed


def _owned(job_id: int, worker: str):
    return sa.and_(Job.id == job_id, Job.worker == worker, Job.state == JobState.RUNNING)


def heartbeat(session: Session, job_id: int, worker: str, lease_s: float, *,
              now: datetime | None = None) -> datetime:
    """Renew ``worker``'s lease on a running job; returns the new expiry (UTC).

    Raises
    ------
    LeaseLostError
        The job is not running under ``worker`` any more (reclaimed, finished or unknown).
    """
    _check_positive("lease_s", lease_s)
    now = _now(now)
    lease = now + timedelta(seconds=lease_s)
    result = session.execute(sa.update(Job).where(_owned(job_id, worker))
                             .values(lease_expires_at=lease, updated_at=now),
                             execution_options={"synchronize_session": False})
    if result.rowcount != 1:
        raise LeaseLostError(f"job {job_id} is no longer held by worker {worker}")
    return lease


def complete(session: Session, job_id: int, worker: str, *, now: datetime | None = None) -> None:
    """Mark a job ``done``.

    Raises
    ------
    LeaseLostError
        The job is not running under ``worker``.
    """
    now = _now(now)
    result = session.execute(
        sa.update(Job).where(_owned(job_id, worker))
        .values(state=JobState.DONE, lease_expires_at=None, finished_at=now, updated_at=now,
                last_error=None),
        execution_options={"synchronize_session": False})
    if result.rowcount != 1:
        raise LeaseLostError(f"job {job_id} is no longer held by worker {worker}")


def fail(session: Session, job_id: int, worker: str, error: str, *, retry_delay_s: float = 0.0,
         permanent: bool = False, now: datetime | None = None) -> JobState:
    """Record a failed attempt: back to ``queued`` (after ``retry_delay_s`` seconds) while
    attempts remain, else ``failed``. Returns the new state.

    ``permanent=True`` (input that no attempt can ever analyse: too few frames, no pixel
    data, an unreadable stream) marks the job ``failed`` at once, whatever attempts remain.

    Raises
    ------
    LeaseLostError
        The job is not running under ``worker``.
    """
    if retry_delay_s < 0:
        raise ValueError(f"retry_delay_s must be 0 or more, got {retry_delay_s!r}")
    now = _now(now)
    job = session.scalar(sa.select(Job).where(_owned(job_id, worker)))
    if job is None:
        raise LeaseLostError(f"job {job_id} is no longer held by worker {worker}")
    job.last_error = error[:MAX_ERROR_CHARS]
    job.lease_expires_at, job.worker, job.updated_at = None, None, now
    if permanent or job.attempts >= job.max_attempts:
        job.state, job.finished_at = JobState.FAILED, now
        log.warning("job %d failed after %d attempt(s)%s", job.id, job.attempts,
                    " (the input can never succeed)" if permanent else "")
    else:
        job.state, job.queued_at = JobState.QUEUED, now
        job.not_before = now + timedelta(seconds=retry_delay_s)
    session.flush()
    return job.state


def expire_dead_leases(session: Session, host: str, pid_alive: Callable[[int], bool], *,
                       now: datetime | None = None) -> int:
    """Expire now the leases of running jobs held by workers of dead processes on ``host``.

    Worker names are ``host:pid:wN`` (see ``amagi_plugin.service.worker.worker_name``); a
    restarted server thus takes its own killed run's jobs at once instead of after a full
    lease. Jobs of live processes and other hosts are left alone. Returns how many.
    """
    now = _now(now)
    dead = []
    for job_id, worker in session.execute(
            sa.select(Job.id, Job.worker).where(Job.state == JobState.RUNNING,
                                                Job.worker.like(f"{host}:%"))):
        parts = (worker or "").split(":")
        if len(parts) >= 3 and parts[-2].isdigit() and not pid_alive(int(parts[-2])):
            dead.append(job_id)
    if dead:
        session.execute(sa.update(Job).where(Job.id.in_(dead), Job.state == JobState.RUNNING)
                        .values(lease_expires_at=now - timedelta(seconds=1), updated_at=now),
                        execution_options={"synchronize_session": False})
    return len(dead)


def job_counts(session: Session) -> dict[JobState, int]:
    """Number of jobs in each state (every state present, zeros included)."""
    counts = dict.fromkeys(JobState, 0)
    for state, n in session.execute(sa.select(Job.state, sa.func.count()).group_by(Job.state)):
        counts[JobState(state)] = n
    return counts


def received_jobs(session: Session) -> list[tuple[int, str, str, datetime]]:
    """Jobs still ``received`` (waiting for their association or series to complete):
    ``(job_id, sop_instance_uid, series_instance_uid, received_at)``, oldest first."""
    rows = session.execute(
        sa.select(Job.id, Instance.sop_instance_uid, Series.series_instance_uid,
                  Instance.received_at)
        .join(Instance, Instance.id == Job.instance_id)
        .join(Series, Series.id == Instance.series_id)
        .where(Job.state == JobState.RECEIVED).order_by(Instance.received_at))
    return [(r[0], r[1], r[2], r[3]) for r in rows]
