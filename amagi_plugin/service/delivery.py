"""Sends produced objects to their destinations, with persistent exponential-backoff retries.

Deliveries live in the database (``db.deliveries``): an object is owed to a destination
from the moment its run commits until the destination confirmed it (C-STORE Success, or a
STOW-RS answer that stores it), so unsent results survive restarts. An unreachable
destination, a timeout or a server error is retried with backoff; an object the destination
refused for good (a DICOMweb server's HTTP 4xx) is recorded as failed with the server's
reason and waits for ``amagi deliveries retry``. Files are never deleted here.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from amagi_plugin.config import Destination
from amagi_plugin.service.metrics import Metrics
from db import Database
from db.deliveries import (
    DueDelivery,
    claim_due,
    mark_commitment_requested,
    mark_failed,
    mark_rejected,
    mark_sent,
    record_commitment,
    renew_claims,
)
from db.schema import utcnow
from dicom_io.net.scu import SendResult

log = logging.getLogger(__name__)

#: Sends files to a destination: one result per file, in order; raises when nothing could be
#: sent (unreachable, timed out, transient server error): all of them are retried.
SendFn = Callable[[list[Path], Destination], list[SendResult]]
#: Storage Commitment of (sop_class_uid, sop_instance_uid) pairs under a Transaction UID →
#: (committed, reason) per pair, or None when the report will come on a new association.
CommitFn = Callable[[list[tuple[str, str]], Destination, str], list[tuple[bool, str]] | None]


#: How long (s) a round's claim on its deliveries holds unless renewed: no other process sends
#: them meanwhile. A round renews its claims every quarter of this while it sends (however
#: long the associations take); a process that dies leaves them to another after it.
CLAIM_S = 60.0


class _HeldClaims:
    """The deliveries one round claimed and has not settled yet, their claims renewed every
    ``claim_s / 4`` by a thread until the round ends.

    A delivery is settled (marked sent, failed or refused) under :meth:`settling`, which
    holds the renewals off, so that no renewal overwrites the retry time a failure set.
    """

    def __init__(self, database: Database, ids: list[int], claim_s: float) -> None:
        self.database = database
        self.claim_s = claim_s
        self._ids = set(ids)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="amagi-delivery-claims",
                                        daemon=True)

    def __enter__(self) -> _HeldClaims:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @contextmanager
    def settling(self, items: list[DueDelivery]) -> Iterator[None]:
        """Settle ``items`` in the block (its session commits inside); no renewal meanwhile,
        and none of them afterwards."""
        with self._lock:
            yield
            self._ids.difference_update(d.delivery_id for d in items)

    def _renew(self) -> None:
        while not self._done.wait(self.claim_s / 4):
            with self._lock:
                if not self._ids:
                    continue
                try:
                    with self.database.session(write=True) as s:
                        renew_claims(s, sorted(self._ids), self.claim_s)
                except Exception as e:  # the database is away: the claims may run out
                    log.warning("could not renew the claims on %d deliveries being sent "
                                "(another process may send them after %g s): %s",
                                len(self._ids), self.claim_s, e)


class DeliveryLoop(threading.Thread):
    """Polls for due deliveries and sends them, one association per destination and round.

    Each round claims what it sends (``db.deliveries.claim_due``), so the delivery loops of
    several processes sharing one database never send the same object twice.
    """

    claim_s = CLAIM_S

    def __init__(self, database: Database, destinations: Mapping[str, Destination], send: SendFn,
                 retry_initial_s: float, retry_max_s: float, stop: threading.Event,
                 metrics: Metrics | None = None, poll_s: float = 1.0,
                 wakeup: threading.Event | None = None, commit: CommitFn | None = None) -> None:
        super().__init__(name="amagi-delivery", daemon=True)
        self.database = database
        self.destinations = dict(destinations)
        self.send = send
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.stop_event = stop
        self.metrics = metrics
        self.poll_s = poll_s
        self.wakeup = wakeup or threading.Event()  # set when a run commits new deliveries
        self.commit = commit  # None: no Storage Commitment requested

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("delivery round failed; retrying")
                busy = False
            if not busy and self.wakeup.wait(self.poll_s):
                self.wakeup.clear()

    def run_once(self) -> bool:
        """One round over the due deliveries; ``True`` if anything was attempted."""
        with self.database.session() as s:  # claimed: several processes may deliver
            due = claim_due(s, self.claim_s, limit=200)
        if not due:
            return False
        by_dest: dict[str, list[DueDelivery]] = defaultdict(list)
        for d in due:
            by_dest[d.destination].append(d)
        with _HeldClaims(self.database, [d.delivery_id for d in due], self.claim_s) as held:
            for key, items in by_dest.items():
                self._deliver(key, items, held)
        return True

    def _deliver(self, key: str, items: list[DueDelivery], held: _HeldClaims) -> None:
        dest = self.destinations.get(key)
        if dest is None:
            self._failed(items, f"destination {key} is no longer configured", held)
            return
        present = [d for d in items if Path(d.path).is_file()]
        missing = [d for d in items if d not in present]
        if missing:
            self._failed(missing, "result file missing from disk", held)
        if not present:
            return
        try:
            outcomes = self.send([Path(d.path) for d in present], dest)
        except Exception as e:  # unreachable peer, rejected association, TLS failure...
            log.warning("delivery to %s failed: %s", key, e)
            self._failed(present, f"{type(e).__name__}: {e}", held)
            return
        sent = []
        now = utcnow()  # one time for the batch: what failed together is retried together
        with held.settling(present), self.database.session(write=True) as s:
            for d, r in zip(present, outcomes, strict=True):
                if r.ok:
                    mark_sent(s, d.delivery_id)
                    sent.append(d)
                    log.info("delivered %s to %s", d.sop_instance_uid, key)
                    self._count("amagi_deliveries_total", result="sent")
                elif r.rejected:
                    mark_rejected(s, d.delivery_id, r.error or "refused by the destination")
                    log.error("%s refused %s for good: %s (amagi deliveries retry sends it "
                              "again)", key, d.sop_instance_uid, r.error)
                    self._count("amagi_deliveries_total", result="rejected")
                else:
                    mark_failed(s, d.delivery_id, r.error or "not stored by the destination",
                                initial_s=self.retry_initial_s, max_s=self.retry_max_s, now=now)
                    self._count("amagi_deliveries_total", result="retry")
        if sent and self.commit is not None and not dest.is_web:  # DICOMweb has no commitment
            self._request_commitment(dest, sent)

    def _request_commitment(self, dest: Destination, sent: list[DueDelivery]) -> None:
        """Ask the destination to commit to what it just stored; record each answer.

        The transaction is recorded first ("requested"), so a report the destination sends
        on an association of its own, at any time, finds its deliveries.
        """
        from pydicom.uid import generate_uid

        transaction_uid = generate_uid()
        with self.database.session(write=True) as s:
            mark_commitment_requested(s, [d.delivery_id for d in sent], transaction_uid)
        try:
            answers = self.commit([(d.sop_class_uid, d.sop_instance_uid) for d in sent], dest,
                                  transaction_uid)
        except Exception as e:  # the objects were delivered; only the commitment failed
            log.warning("storage commitment from %s failed: %s", dest.key, e)
            answers = [(False, f"{type(e).__name__}: {e}")] * len(sent)
        if answers is None:
            log.info("storage commitment %s of %d object(s) requested from %s; awaiting its "
                     "report on a new association", transaction_uid, len(sent), dest.key)
            return
        with self.database.session(write=True) as s:
            for d, (committed, reason) in zip(sent, answers, strict=True):
                record_commitment(s, d.delivery_id, committed, reason)
        log.info("storage commitment from %s: %d of %d committed", dest.key,
                 sum(1 for c, _ in answers if c), len(sent))

    def _failed(self, items: list[DueDelivery], error: str, held: _HeldClaims) -> None:
        now = utcnow()  # one time for the batch: what failed together is retried together
        with held.settling(items), self.database.session(write=True) as s:
            for d in items:
                mark_failed(s, d.delivery_id, error, initial_s=self.retry_initial_s,
                            max_s=self.retry_max_s, now=now)
                self._count("amagi_deliveries_total", result="retry")

    def _count(self, name: str, **labels: str) -> None:
        if self.metrics:
            self.metrics.inc(name, **labels)
