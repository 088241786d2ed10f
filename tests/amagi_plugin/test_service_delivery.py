"""The delivery loop's claims (SQLite and a real PostgreSQL): a send that outlasts the claim
keeps it, so no other process sends the same object meanwhile, and a failure's retry time is
not overwritten by a renewal."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from amagi_plugin.config import Destination
from amagi_plugin.service.delivery import CLAIM_S, DeliveryLoop
from db import Database, DeliveryState, deliveries, records
from db.schema import AnalysisRun, Delivery
from db.schema import utcnow as db_now
from dicom_io.net.scu import SendResult
from tests.db.conftest import build_cohort, database, db_url, pg_server  # noqa: F401

DEST = Destination.parse("PACS@127.0.0.1:104")


def _owe(database: Database, folder: Path, n: int) -> list[int]:  # noqa: F811
    """``n`` result files on disk, each owed to :data:`DEST`."""
    ids = build_cohort(database)
    out = []
    with database.session() as s:
        run_id = s.query(AnalysisRun).filter_by(job_id=ids["A"]).one().id
        for i in range(n):
            path = folder / f"{i}.dcm"
            path.write_bytes(b"result")
            obj = records.record_object(s, run_id, kind="sr", sop_class_uid="1.2.3",
                                        sop_instance_uid=f"2.25.{i + 1}", path=str(path))
            out.append(deliveries.schedule_delivery(s, obj.id, DEST.key).id)
    return out


def _loop(database: Database, send, claim_s: float, **kw) -> DeliveryLoop:  # noqa: F811
    loop = DeliveryLoop(database, {DEST.key: DEST}, send, retry_initial_s=kw.get("retry", 1.0),
                        retry_max_s=1000.0, stop=threading.Event())
    loop.claim_s = claim_s
    return loop


def test_a_send_longer_than_the_claim_keeps_it(database: Database, tmp_path) -> None:  # noqa: F811
    owed = _owe(database, tmp_path, 3)
    release, calls = threading.Event(), []

    def slow_send(paths: list[Path], dest: Destination) -> list[SendResult]:
        calls.append(list(paths))
        assert release.wait(30)
        return [SendResult(p, None, 0, True, None) for p in paths]

    # a claim of 1.5 s renewed every 0.375 s: a loaded machine may stall a renewal a few
    # tenths of a second without the claim running out
    first = _loop(database, slow_send, claim_s=1.5)
    sender = threading.Thread(target=first.run_once)
    sender.start()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert calls, "the first loop never sent"
    other = _loop(database, lambda p, d: pytest.fail("sent twice"), claim_s=1.5)
    for _ in range(30):  # 4.5 s, 3 claims long: still held by the first loop
        assert other.run_once() is False
        time.sleep(0.15)
    release.set()
    sender.join(30)
    assert len(calls) == 1 and len(calls[0]) == 3
    with database.session() as s:
        rows = s.query(Delivery).filter(Delivery.id.in_(owed)).all()
        assert {(r.state, r.attempts) for r in rows} == {(DeliveryState.SENT, 1)}
    assert CLAIM_S <= 60  # a process that dies while sending frees its deliveries within it


def test_a_failure_keeps_its_retry_time(database: Database, tmp_path) -> None:  # noqa: F811
    (owed,) = _owe(database, tmp_path, 1)

    def failing_send(paths: list[Path], dest: Destination) -> list[SendResult]:
        time.sleep(0.35)  # a few renewals happen while "sending"
        raise ConnectionError("peer unreachable")

    loop = _loop(database, failing_send, claim_s=0.2, retry=100.0)
    before = db_now()
    assert loop.run_once() is True
    time.sleep(0.3)  # a renewal after the failure would move the retry to 0.2 s from now
    with database.session() as s:
        row = s.get(Delivery, owed)
        assert row.state == DeliveryState.PENDING and row.attempts == 1
        assert "peer unreachable" in row.last_error
        next_at = row.next_attempt_at.replace(tzinfo=None)
        assert next_at >= before.replace(tzinfo=None) + timedelta(seconds=50), next_at


@pytest.mark.parametrize("how", ["raised", "refused one by one"])
def test_what_failed_together_is_retried_together(database: Database, tmp_path,  # noqa: F811
                                                  how: str) -> None:
    """Objects sent in one request that failed share one retry time, so the next round sends
    them again in one request, not split by the microseconds between their bookkeeping."""
    owed = _owe(database, tmp_path, 5)
    calls: list[int] = []

    def failing_send(paths: list[Path], dest: Destination) -> list[SendResult]:
        calls.append(len(paths))
        if how == "raised":
            raise ConnectionError("peer unreachable")
        return [SendResult(p, None, 0xA700, False, "HTTP 503: archive busy") for p in paths]

    loop = _loop(database, failing_send, claim_s=30.0, retry=1.0)
    assert loop.run_once() is True
    with database.session() as s:
        rows = [s.get(Delivery, i) for i in owed]
        assert all(r.state == DeliveryState.PENDING and r.attempts == 1 for r in rows)
        assert len({r.next_attempt_at for r in rows}) == 1, [r.next_attempt_at for r in rows]
    time.sleep(1.1)
    assert loop.run_once() is True
    assert calls == [5, 5]
