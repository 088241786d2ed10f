"""Claims on deliveries (SQLite and a real PostgreSQL): what one sender claimed is not due for
another until the claim runs out, and two real processes never send the same delivery."""

from __future__ import annotations

import multiprocessing
import time
from datetime import timedelta

import pytest

import db
from db import deliveries, records
from db.schema import AnalysisRun
from tests.db.conftest import build_cohort
from tests.db.test_db_queue import T0

DEST = "PACS@127.0.0.1:104"


def _owe(database: db.Database, n: int) -> list[int]:
    """``n`` produced objects of one case, each owed to :data:`DEST` since ``T0``."""
    ids = build_cohort(database)
    with database.session() as s:
        run_id = s.query(AnalysisRun).filter_by(job_id=ids["A"]).one().id
        out = []
        for i in range(n):
            obj = records.record_object(s, run_id, kind="sr", sop_class_uid="1.2.3",
                                        sop_instance_uid=f"2.25.{i + 1}", path=f"/r/{i}.dcm")
            out.append(deliveries.schedule_delivery(s, obj.id, DEST, now=T0).id)
    return out


def test_claimed_deliveries_wait_for_the_claim_to_run_out(database):
    d1, d2 = _owe(database, 2)
    with database.session() as s:
        claimed = deliveries.claim_due(s, 30, now=T0)
    assert [d.delivery_id for d in claimed] == [d1, d2] and claimed[0].path == "/r/0.dcm"
    with database.session() as s:
        assert deliveries.claim_due(s, 30, now=T0 + timedelta(seconds=29)) == []
        deliveries.mark_sent(s, d1, now=T0 + timedelta(seconds=1))
    with database.session() as s:  # the sender of d2 died: d2 is due again, d1 is sent
        (again,) = deliveries.claim_due(s, 30, now=T0 + timedelta(seconds=31))
    assert again.delivery_id == d2 and again.attempts == 0
    with database.session() as s, pytest.raises(RuntimeError, match="open transaction"):
        s.execute(db.engine.sa.text("SELECT 1"))
        deliveries.claim_due(s, 30)
    with database.session() as s, pytest.raises(ValueError, match="claim_s"):
        deliveries.claim_due(s, 0)


def test_a_renewed_claim_holds_while_the_sender_works_and_only_pending_ones_renew(database):
    d1, d2 = _owe(database, 2)
    with database.session() as s:
        deliveries.claim_due(s, 30, now=T0)
    with database.session(write=True) as s:
        deliveries.mark_sent(s, d1, now=T0 + timedelta(seconds=10))
        # still sending d2 at 20 s: its claim now runs to 50 s; the sent d1 is left alone
        assert deliveries.renew_claims(s, [d1, d2], 30, now=T0 + timedelta(seconds=20)) == 1
        assert deliveries.renew_claims(s, [], 30) == 0
    with database.session() as s:
        assert deliveries.claim_due(s, 30, now=T0 + timedelta(seconds=45)) == []
        sent = s.get(db.schema.Delivery, d1)
        assert sent.next_attempt_at is None and sent.state == db.DeliveryState.SENT
    with database.session() as s:  # the sender died after 20 s: d2 is due after 50 s
        (again,) = deliveries.claim_due(s, 30, now=T0 + timedelta(seconds=51))
    assert again.delivery_id == d2
    with database.session() as s, pytest.raises(ValueError, match="claim_s"):
        deliveries.renew_claims(s, [d2], 0)


def _send_loop(url: str, name: str, barrier, out) -> None:
    """Child process: claim a few deliveries at a time and mark them sent, until none. Both
    processes hold their first claim at once (the barrier), then race."""
    database = db.open_database(url)
    sent: list[int] = []
    barrier.wait(60)
    first = True
    while True:
        with database.session() as s:
            due = deliveries.claim_due(s, 600, limit=3)
        if first:
            barrier.wait(60)
            first = False
        if not due:
            break
        time.sleep(0.01)  # "sending", so the two processes interleave
        with database.session(write=True) as s:
            for d in due:
                deliveries.mark_sent(s, d.delivery_id)
                sent.append(d.delivery_id)
    database.dispose()
    out.put((name, sent))


def test_two_processes_never_send_the_same_delivery(database, db_url):
    owed = _owe(database, 40)
    mp = multiprocessing.get_context("spawn")
    barrier, out = mp.Barrier(2), mp.Queue()
    procs = [mp.Process(target=_send_loop, args=(db_url, f"p{i}", barrier, out))
             for i in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    a, b = results["p0"], results["p1"]
    assert a and b, "both processes should have sent some"
    assert not set(a) & set(b), f"sent twice: {sorted(set(a) & set(b))}"
    assert sorted(a + b) == sorted(owed)
    with database.session() as s:
        rows = s.query(db.schema.Delivery).all()
        assert {(r.state, r.attempts) for r in rows} == {(db.DeliveryState.SENT, 1)}


def test_a_claim_that_waited_for_the_write_lock_takes_what_was_owed_meanwhile(tmp_path):
    """SQLite: a sender whose claim waits while a worker records a run's objects (the worker
    holds the write lock) takes all of them once the worker commits, not only those owed
    before the claim began waiting (the run's objects would go in two associations)."""
    import threading

    database = db.open_database(f"sqlite:///{tmp_path / 'amagi.db'}")
    ids = build_cohort(database)
    claimed: list[deliveries.DueDelivery] = []
    with database.session(write=True) as s:  # the worker's transaction: the lock is held
        run_id = s.query(AnalysisRun).filter_by(job_id=ids["A"]).one().id
        def send() -> None:
            with database.raw_session() as own:
                claimed.extend(deliveries.claim_due(own, 30))

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.5)  # the sender is waiting for the lock
        for i in range(3):  # owed now, after the sender began to wait
            obj = records.record_object(s, run_id, kind="sr", sop_class_uid="1.2.3",
                                        sop_instance_uid=f"2.25.{i + 1}", path=f"/r/{i}.dcm")
            deliveries.schedule_delivery(s, obj.id, DEST)
    sender.join(30)
    assert not sender.is_alive()
    assert [d.sop_instance_uid for d in claimed] == ["2.25.1", "2.25.2", "2.25.3"]
    database.dispose()
