"""Export of produced objects to destinations, with persistent exponential-backoff retries.

Each (object, destination) pair is one row: ``pending`` until sent (``sent``) or given up
(``failed``: when a ``max_attempts`` is passed, or the destination refused the object for
good, :func:`mark_rejected`). A failed row keeps its reason and is owed again by
:func:`retry_failed` (``amagi deliveries retry``). ``next_attempt_at`` lives in the
database, so retries survive restarts: after a restart :func:`deliveries_due` lists what is
owed. Functions take a Session; the caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.engine import SQLITE_BEGIN_OPTION
from db.errors import NotFoundError
from db.schema import Delivery, DeliveryState, ProducedObject, utcnow

MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class DueDelivery:
    """A delivery to attempt now."""

    delivery_id: int
    destination: str
    object_id: int
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    attempts: int


def schedule_delivery(session: Session, object_id: int, destination: str, *,
                      now: datetime | None = None) -> Delivery:
    """Owe ``destination`` (``"AE@host:port"``) a produced object; idempotent per pair."""
    if session.get(ProducedObject, object_id) is None:
        raise NotFoundError(f"no produced object {object_id}")
    row = session.scalar(sa.select(Delivery).where(Delivery.object_id == object_id,
                                                   Delivery.destination == destination))
    if row is None:
        now = now or utcnow()
        row = Delivery(object_id=object_id, destination=destination, state=DeliveryState.PENDING,
                       attempts=0, next_attempt_at=now, created_at=now)
        session.add(row)
        session.flush()
    return row


def deliveries_due(session: Session, *, now: datetime | None = None, limit: int = 100
                   ) -> list[DueDelivery]:
    """Pending deliveries whose next attempt time has come, oldest first."""
    now = now or utcnow()
    rows = session.execute(
        sa.select(Delivery.id, Delivery.destination, ProducedObject.id,
                  ProducedObject.sop_instance_uid, ProducedObject.sop_class_uid,
                  ProducedObject.path, Delivery.attempts)
        .join(ProducedObject, ProducedObject.id == Delivery.object_id)
        .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit))
    return [DueDelivery(*r) for r in rows]


def claim_due(session: Session, claim_s: float, *, now: datetime | None = None,
              limit: int = 100) -> list[DueDelivery]:
    """Atomically take the due deliveries for one sender: as :func:`deliveries_due`, and their
    next attempt moves ``claim_s`` seconds ahead, so that no other process sends them
    meanwhile; :func:`mark_sent` or :func:`mark_failed` then records the outcome. A sender
    that dies leaves them due again after ``claim_s``; one still sending keeps them with
    :func:`renew_claims`.

    Runs in its own transaction and commits: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (two
    senders take disjoint rows), ``BEGIN IMMEDIATE`` (the write lock) on SQLite.

    Parameters
    ----------
    session
        A session with no transaction open (a fresh one).
    claim_s
        How long the claim holds (s) unless renewed.
    """
    if not claim_s > 0:
        raise ValueError(f"claim_s must be greater than 0, got {claim_s!r}")
    if session.in_transaction():
        raise RuntimeError("claim_due needs a session without an open transaction")
    session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
    # The time is read once the write lock is held: a transaction that owed deliveries and
    # committed while this one waited for the lock has them all due, none left for later.
    now = now or utcnow()
    try:
        ids = list(session.scalars(
            sa.select(Delivery.id)
            .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit)
            .with_for_update(skip_locked=True)))
        due = []
        if ids:
            rows = {r[0]: DueDelivery(*r) for r in session.execute(
                sa.select(Delivery.id, Delivery.destination, ProducedObject.id,
                          ProducedObject.sop_instance_uid, ProducedObject.sop_class_uid,
                          ProducedObject.path, Delivery.attempts)
                .join(ProducedObject, ProducedObject.id == Delivery.object_id)
                .where(Delivery.id.in_(ids)))}
            due = [rows[i] for i in ids]
            session.execute(sa.update(Delivery).where(Delivery.id.in_(ids))
                            .values(next_attempt_at=now + timedelta(seconds=claim_s)),
                            execution_options={"synchronize_session": False})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return due


def renew_claims(session: Session, delivery_ids: list[int], claim_s: float, *,
                 now: datetime | None = None) -> int:
    """Extend a sender's claims on ``delivery_ids`` (from :func:`claim_due`) to ``claim_s``
    seconds from now, while it is still sending them: a claim can then be short (a sender
    that dies frees its deliveries soon) and still outlast a long send. Deliveries no longer
    pending are left alone. Returns how many were renewed; the caller commits."""
    if not claim_s > 0:
        raise ValueError(f"claim_s must be greater than 0, got {claim_s!r}")
    if not delivery_ids:
        return 0
    now = now or utcnow()
    result = session.execute(
        sa.update(Delivery)
        .where(Delivery.id.in_(delivery_ids), Delivery.state == DeliveryState.PENDING)
        .values(next_attempt_at=now + timedelta(seconds=claim_s)),
        execution_options={"synchronize_session": False})
    return result.rowcount


def mark_sent(session: Session, delivery_id: int, *, now: datetime | None = None) -> None:
    """Record a successful C-STORE of the object to the destination."""
    now = now or utcnow()
    row = _get(session, delivery_id)
    row.state, row.sent_at, row.last_attempt_at = DeliveryState.SENT, now, now
    row.attempts += 1
    row.next_attempt_at, row.last_error = None, None
    session.flush()


def retry_delay_s(attempts: int, initial_s: float, max_s: float) -> float:
    """Delay before the next try after ``attempts`` failures: ``initial_s · 2^(attempts-1)``,
    capped at ``max_s`` (seconds)."""
    if attempts < 1:
        raise ValueError(f"attempts must be 1 or more, got {attempts!r}")
    if not (initial_s > 0 and max_s > 0):
        raise ValueError(f"retry delays must be > 0, got initial_s={initial_s!r}, max_s={max_s!r}")
    return min(max_s, initial_s * 2.0 ** min(attempts - 1, 60))


def mark_failed(session: Session, delivery_id: int, error: str, *, initial_s: float,
                max_s: float, max_attempts: int | None = None, now: datetime | None = None
                ) -> DeliveryState:
    """Record a failed attempt and schedule the next one with exponential backoff.

    Parameters
    ----------
    initial_s, max_s
        First retry delay and the cap (seconds); the delay doubles per failure.
    max_attempts
        Give up (state ``failed``) after this many attempts; ``None`` retries forever.
    """
    now = now or utcnow()
    row = _get(session, delivery_id)
    row.attempts += 1
    row.last_attempt_at, row.last_error = now, error[:MAX_ERROR_CHARS]
    if max_attempts is not None and row.attempts >= max_attempts:
        row.state, row.next_attempt_at = DeliveryState.FAILED, None
    else:
        row.next_attempt_at = now + timedelta(seconds=retry_delay_s(row.attempts, initial_s, max_s))
    session.flush()
    return row.state


def mark_rejected(session: Session, delivery_id: int, error: str, *,
                  now: datetime | None = None) -> None:
    """Record that the destination refused the object for good (e.g. a DICOMweb server's
    HTTP 4xx): state ``failed`` with the reason, no further automatic attempt."""
    now = now or utcnow()
    row = _get(session, delivery_id)
    row.attempts += 1
    row.last_attempt_at, row.last_error = now, error[:MAX_ERROR_CHARS]
    row.state, row.next_attempt_at = DeliveryState.FAILED, None
    session.flush()


def retry_failed(session: Session, destination: str | None = None, *,
                 now: datetime | None = None) -> int:
    """Owe the failed deliveries again (all, or those to ``destination``): they become
    ``pending``, due now, keeping their attempt count and last error. Returns how many."""
    now = now or utcnow()
    query = sa.update(Delivery).where(Delivery.state == DeliveryState.FAILED)
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    result = session.execute(query.values(state=DeliveryState.PENDING, next_attempt_at=now)
                             .execution_options(synchronize_session=False))
    session.flush()
    return int(result.rowcount or 0)


def _get(session: Session, delivery_id: int) -> Delivery:
    row = session.get(Delivery, delivery_id)
    if row is None:
        raise NotFoundError(f"no delivery {delivery_id}")
    return row


def sent_awaiting_commitment(session: Session, destination: str, *, limit: int = 500
                             ) -> list[DueDelivery]:
    """Deliveries sent to ``destination`` whose Storage Commitment was not requested yet."""
    rows = session.execute(
        sa.select(Delivery.id, Delivery.destination, ProducedObject.id,
                  ProducedObject.sop_instance_uid, ProducedObject.sop_class_uid,
                  ProducedObject.path, Delivery.attempts)
        .join(ProducedObject, ProducedObject.id == Delivery.object_id)
        .where(Delivery.state == DeliveryState.SENT, Delivery.destination == destination,
               Delivery.commitment.is_(None))
        .order_by(Delivery.id).limit(limit))
    return [DueDelivery(*r) for r in rows]


#: ``Delivery.commitment`` while the report of a request is awaited.
COMMITMENT_REQUESTED = "requested"


def record_commitment(session: Session, delivery_id: int, committed: bool, reason: str = "", *,
                      now: datetime | None = None) -> None:
    """Record the destination's Storage Commitment answer for one delivered object."""
    row = _get(session, delivery_id)
    row.commitment = "committed" if committed else f"failed: {reason or 'no reason given'}"[:256]
    row.commitment_at = now or utcnow()
    session.flush()


def mark_commitment_requested(session: Session, delivery_ids: list[int], transaction_uid: str
                              ) -> None:
    """Record that commitment of these deliveries was requested under ``transaction_uid``
    (before the request goes out, so a report that comes at once finds them)."""
    for delivery_id in delivery_ids:
        row = _get(session, delivery_id)
        row.commitment, row.commitment_at = COMMITMENT_REQUESTED, None
        row.commitment_transaction_uid = transaction_uid
    session.flush()


def record_commitment_report(session: Session, transaction_uid: str, committed: set[str],
                             failed: dict[str, str], *, from_ae: str | None = None,
                             now: datetime | None = None) -> int:
    """Apply a Storage Commitment report to the deliveries of its transaction.

    Parameters
    ----------
    committed
        SOP Instance UIDs the destination committed to.
    failed
        SOP Instance UID → reason, for those it did not.
    from_ae
        The AE title that sent the report: only deliveries to ``from_ae@...`` are updated.

    Returns
    -------
    int
        How many deliveries were updated (0: an unknown transaction, or another sender's).
        Objects of the transaction the report does not mention are failed with that reason.
    """
    query = (sa.select(Delivery, ProducedObject.sop_instance_uid)
             .join(ProducedObject, ProducedObject.id == Delivery.object_id)
             .where(Delivery.commitment_transaction_uid == transaction_uid))
    if from_ae is not None:
        query = query.where(Delivery.destination.startswith(f"{from_ae}@", autoescape=True))
    rows = session.execute(query).all()
    for row, uid in rows:
        if uid in committed and uid not in failed:
            record_commitment(session, row.id, True, now=now)
        else:
            record_commitment(session, row.id, False,
                              failed.get(uid, "not in the commitment report"), now=now)
    return len(rows)
