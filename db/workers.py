"""The registry of ``amagi serve`` threads: each process's listener and workers, with heartbeats.

A serve process registers one row per thread at start (:func:`register`), renews them while
it runs (:func:`beat`) and marks them stopped when it stops (:func:`mark_stopped`). A process
killed with SIGKILL leaves its rows behind: they stop heartbeating and :func:`list_workers`
shows them ``stale``; a process started later on the same host marks the rows of dead
processes there ``stopped`` (:func:`stop_dead`). The job a worker runs is read from
``jobs.worker``, which names the worker the same way. Functions take a Session; the caller
commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.schema import Job, JobState, WorkerNode, utcnow

#: Stopped rows older than this are deleted when a process registers.
FORGET_STOPPED_AFTER = timedelta(days=7)


@dataclass(frozen=True)
class Beat:
    """One thread's heartbeat: its state now and what else ``amagi status`` shows of it."""

    name: str
    state: str
    details: dict[str, Any] = field(default_factory=dict)


def register(session: Session, name: str, *, host: str, pid: int, role: str,
             device: str | None = None, state: str = "starting",
             now: datetime | None = None) -> None:
    """Register (or register again, after a restart that reused the name) one thread."""
    now = now or utcnow()
    session.execute(sa.delete(WorkerNode).where(WorkerNode.stopped_at.is_not(None),
                                                WorkerNode.stopped_at < now - FORGET_STOPPED_AFTER))
    row = session.scalar(sa.select(WorkerNode).where(WorkerNode.name == name))
    if row is None:
        row = WorkerNode(name=name)
        session.add(row)
    row.host, row.pid, row.role, row.device, row.state = host, pid, role, device, state
    row.details, row.started_at, row.heartbeat_at, row.stopped_at = {}, now, now, None
    session.flush()


def beat(session: Session, beats: Iterable[Beat], *, now: datetime | None = None) -> int:
    """Renew the heartbeat of registered threads; returns how many rows were updated (a row
    missing, e.g. deleted by hand, is not recreated: the next :func:`register` does)."""
    now = now or utcnow()
    n = 0
    for b in beats:
        result = session.execute(
            sa.update(WorkerNode).where(WorkerNode.name == b.name)
            .values(state=b.state[:64], details=b.details, heartbeat_at=now, stopped_at=None),
            execution_options={"synchronize_session": False})
        n += result.rowcount
    return n


def mark_stopped(session: Session, names: Iterable[str], *, now: datetime | None = None) -> None:
    """The threads ``names`` ended with their process's orderly stop."""
    now = now or utcnow()
    names = list(names)
    if names:
        session.execute(sa.update(WorkerNode).where(WorkerNode.name.in_(names))
                        .values(state="stopped", stopped_at=now),
                        execution_options={"synchronize_session": False})


def stop_dead(session: Session, host: str, pid_alive: Callable[[int], bool], *,
              now: datetime | None = None) -> int:
    """Mark ``stopped`` the rows of processes on ``host`` that no longer exist; returns how
    many. Rows of other hosts are left to go stale (we cannot see their processes)."""
    now = now or utcnow()
    dead = [row_id for row_id, pid in session.execute(
        sa.select(WorkerNode.id, WorkerNode.pid).where(WorkerNode.host == host,
                                                       WorkerNode.stopped_at.is_(None)))
        if not pid_alive(pid)]
    if dead:
        session.execute(sa.update(WorkerNode).where(WorkerNode.id.in_(dead))
                        .values(state="stopped (process gone)", stopped_at=now),
                        execution_options={"synchronize_session": False})
    return len(dead)


def list_workers(session: Session, *, stale_after_s: float, now: datetime | None = None,
                 include_stopped: bool = False, stale_beats: int = 3) -> list[dict[str, Any]]:
    """The registered threads, listeners first then by host, pid and name.

    Each row: ``name, host, pid, role, device, state, job`` (the job it holds, from
    ``jobs.worker``; ``None`` when idle), ``started_at, heartbeat_at, stopped_at``,
    ``age_s`` (seconds since the last heartbeat), ``stale`` (not stopped, and no heartbeat
    for ``stale_beats`` of its own intervals, ``details["heartbeat_s"]``, or for
    ``stale_after_s`` seconds when it did not publish one), and ``details``.
    """
    now = now or utcnow()
    held = {worker: job_id for job_id, worker in session.execute(
        sa.select(Job.id, Job.worker).where(Job.state == JobState.RUNNING,
                                            Job.worker.is_not(None)))}
    query = sa.select(WorkerNode)
    if not include_stopped:
        query = query.where(WorkerNode.stopped_at.is_(None))
    rows = []
    for w in session.scalars(query.order_by(WorkerNode.host, WorkerNode.pid, WorkerNode.name)):
        age = (now - w.heartbeat_at).total_seconds()
        interval = (w.details or {}).get("heartbeat_s")
        limit = stale_beats * float(interval) if isinstance(interval, int | float) \
            else stale_after_s
        rows.append({
            "name": w.name, "host": w.host, "pid": w.pid, "role": w.role, "device": w.device,
            "state": w.state, "job": held.get(w.name), "started_at": w.started_at,
            "heartbeat_at": w.heartbeat_at, "stopped_at": w.stopped_at,
            "age_s": round(age, 1), "stale": w.stopped_at is None and age > limit,
            "details": dict(w.details or {})})
    rows.sort(key=lambda r: not r["name"].endswith(":listener"))
    return rows
