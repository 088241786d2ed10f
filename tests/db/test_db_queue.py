"""The durable job queue on SQLite and a real PostgreSQL: idempotency, leases, retries, and
two real processes claiming concurrently."""

from __future__ import annotations

import multiprocessing
import time
from datetime import datetime, timedelta, timezone

import pytest

import db
from db import queue, records
from db.schema import Job
from tests.db.conftest import DEMO

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def _receive(database: db.Database, n: int, prefix: str = "1.2.3") -> list[str]:
    uids = [f"{prefix}.{i}" for i in range(n)]
    with database.session() as s:
        for uid in uids:
            records.record_instance(
                s, sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.4.102", study_instance_uid=f"{prefix}.9",
                series_instance_uid=f"{prefix}.9.1", size_bytes=10, spool_path=f"/spool/{uid}",
                received_at=T0)
    return uids


def _enqueue_all(database, uids, **kw):
    with database.session() as s:
        return [queue.enqueue(s, u, model_name=DEMO[0], model_version=DEMO[1], now=T0, **kw).job_id
                for u in uids]


def test_enqueue_is_idempotent(database):
    (uid,) = _receive(database, 1)
    with database.session() as s:
        first = queue.enqueue(s, uid, model_name=DEMO[0], model_version=DEMO[1])
        again = queue.enqueue(s, uid, model_name=DEMO[0], model_version=DEMO[1])
        other = queue.enqueue(s, uid, model_name=DEMO[0], model_version="3.1")
    with database.session() as s:  # a later session, after commit
        later = queue.enqueue(s, uid, model_name=DEMO[0], model_version=DEMO[1])
        n_jobs = s.query(Job).count()
    assert first.created and not again.created and not later.created and other.created
    assert first.job_id == again.job_id == later.job_id != other.job_id
    assert n_jobs == 2


def test_enqueue_unknown_instance(database):
    with database.session() as s, pytest.raises(db.NotFoundError, match=r"9\.9"):
        queue.enqueue(s, "9.9", model_name=DEMO[0], model_version=DEMO[1])


def test_claim_order_received_release_and_complete(database):
    uids = _receive(database, 3)
    with database.session() as s:
        held = queue.enqueue(s, uids[0], model_name=DEMO[0], model_version=DEMO[1], ready=False)
        ready = [queue.enqueue(s, u, model_name=DEMO[0], model_version=DEMO[1]).job_id
                 for u in uids[1:]]
    assert held.state == db.JobState.RECEIVED
    with database.session() as s:
        first = queue.claim_next(s, "w1", 60, now=T0)
    assert first is not None and first.job_id == ready[0] and first.attempt == 1
    assert first.spool_path == f"/spool/{uids[1]}" and first.study_instance_uid == "1.2.3.9"
    assert first.lease_expires_at == T0 + timedelta(seconds=60)
    with database.session() as s:
        queue.release(s, held.job_id)
    with database.session() as s:
        second = queue.claim_next(s, "w1", 60, now=T0)
    assert second is not None and second.job_id == held.job_id
    with database.session() as s:
        queue.complete(s, first.job_id, "w1", now=T0)
        with pytest.raises(db.LeaseLostError):
            queue.complete(s, first.job_id, "w1")  # already done
        with pytest.raises(db.LeaseLostError):
            queue.heartbeat(s, second.job_id, "someone-else", 60)
    with database.session() as s:
        counts = queue.job_counts(s)
    assert counts[db.JobState.DONE] == 1 and counts[db.JobState.RUNNING] == 1
    assert counts[db.JobState.QUEUED] == 1 and counts[db.JobState.FAILED] == 0


def test_a_series_image_claims_the_spool_files_of_its_series(database):
    """A single-frame image's job stands for its series: the claim lists the series' files
    (from the database, so the worker never lists the spool); a video's claim lists none."""
    vl = "1.2.840.10008.5.1.4.1.1.77.1.1"
    video = _receive(database, 1, prefix="7.7")[0]
    with database.session() as s:
        for i in (2, 0, 1):
            records.record_instance(
                s, sop_instance_uid=f"8.8.{i}", sop_class_uid=vl,
                transfer_syntax_uid="1.2.840.10008.1.2.1", study_instance_uid="8.8.9",
                series_instance_uid="8.8.9.1", size_bytes=10, received_at=T0,
                spool_path=f"/spool/8.8.9/8.8.9.1/8.8.{i}.dcm", number_of_frames=None)
        records.record_instance(  # another series of the same study
            s, sop_instance_uid="8.8.5", sop_class_uid=vl,
            transfer_syntax_uid="1.2.840.10008.1.2.1", study_instance_uid="8.8.9",
            series_instance_uid="8.8.9.2", size_bytes=10, received_at=T0,
            spool_path="/spool/8.8.9/8.8.9.2/8.8.5.dcm")
    _enqueue_all(database, ["8.8.2", video])
    with database.session() as s:
        series = queue.claim_next(s, "w1", 60, now=T0)
    with database.session() as s:
        single = queue.claim_next(s, "w1", 60, now=T0)
    assert series is not None and single is not None
    assert series.series_paths == tuple(f"/spool/8.8.9/8.8.9.1/8.8.{i}.dcm" for i in range(3))
    assert single.spool_path == "/spool/7.7.0" and single.series_paths == ()


def test_claim_needs_fresh_session(database):
    with database.session() as s:
        s.query(Job).count()
        with pytest.raises(RuntimeError, match="open transaction"):
            queue.claim_next(s, "w", 10)


def test_expired_lease_is_reclaimed(database):
    _enqueue_all(database, _receive(database, 1))
    with database.session() as s:
        a = queue.claim_next(s, "dead-worker", 30, now=T0)
    with database.session() as s:  # lease still valid: nothing to claim
        assert queue.claim_next(s, "w2", 30, now=T0 + timedelta(seconds=29)) is None
    with database.session() as s:  # the worker renews it
        assert queue.heartbeat(s, a.job_id, "dead-worker", 30, now=T0 + timedelta(seconds=20)) \
            == T0 + timedelta(seconds=50)
    with database.session() as s:
        assert queue.claim_next(s, "w2", 30, now=T0 + timedelta(seconds=45)) is None
    with database.session() as s:  # then dies: past the lease, another worker takes it
        b = queue.claim_next(s, "w2", 30, now=T0 + timedelta(seconds=51))
    assert b is not None and b.job_id == a.job_id and b.attempt == 2
    with database.session() as s:
        with pytest.raises(db.LeaseLostError):
            queue.heartbeat(s, a.job_id, "dead-worker", 30)
        with pytest.raises(db.LeaseLostError):
            queue.complete(s, a.job_id, "dead-worker")
        queue.complete(s, b.job_id, "w2", now=T0 + timedelta(seconds=60))
    with database.session() as s:
        job = s.get(Job, a.job_id)
        assert job.state == db.JobState.DONE and job.worker == "w2" and job.attempts == 2


def test_expired_lease_on_last_attempt_fails_the_job(database):
    _enqueue_all(database, _receive(database, 1), max_attempts=1)
    with database.session() as s:
        a = queue.claim_next(s, "dead", 10, now=T0)
    with database.session() as s:
        assert queue.claim_next(s, "w2", 10, now=T0 + timedelta(seconds=11)) is None
    with database.session() as s:
        job = s.get(Job, a.job_id)
        assert job.state == db.JobState.FAILED and "lease expired" in job.last_error


def test_retry_budget_and_delay(database):
    (job_id,) = _enqueue_all(database, _receive(database, 1), max_attempts=3)
    now = T0
    for attempt in (1, 2):
        with database.session() as s:
            c = queue.claim_next(s, "w", 60, now=now)
            assert c.job_id == job_id and c.attempt == attempt
        with database.session() as s:
            state = queue.fail(s, job_id, "w", f"boom {attempt}", retry_delay_s=10, now=now)
        assert state == db.JobState.QUEUED
        with database.session() as s:  # waits out the retry delay
            assert queue.claim_next(s, "w", 60, now=now + timedelta(seconds=9)) is None
        now += timedelta(seconds=10)
    with database.session() as s:
        c = queue.claim_next(s, "w", 60, now=now)
        assert c.attempt == 3
    with database.session() as s:
        assert queue.fail(s, job_id, "w", "boom 3", now=now) == db.JobState.FAILED
    with database.session() as s:
        assert queue.claim_next(s, "w", 60, now=now + timedelta(days=1)) is None
        job = s.get(Job, job_id)
        assert job.attempts == 3 and job.last_error == "boom 3" and job.finished_at == now


def _claim_loop(url: str, worker: str, start, out) -> None:
    """Child process: claim and complete jobs until none is left; report the ids."""
    database = db.open_database(url)
    claimed: list[int] = []
    start.wait(30)
    while True:
        with database.session() as s:
            job = queue.claim_next(s, worker, 60)
        if job is None:
            break
        claimed.append(job.job_id)
        time.sleep(0.005)  # "work", so the two processes interleave
        with database.session() as s:
            queue.complete(s, job.job_id, worker)
    database.dispose()
    out.put((worker, claimed))


def test_two_processes_never_claim_the_same_job(database, db_url):
    job_ids = _enqueue_all(database, _receive(database, 40))
    mp = multiprocessing.get_context("spawn")
    start, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_claim_loop, args=(db_url, f"proc{i}", start, out))
             for i in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    a, b = results["proc0"], results["proc1"]
    assert a and b, "both processes should have claimed jobs"
    assert not set(a) & set(b), f"claimed twice: {sorted(set(a) & set(b))}"
    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert sorted(a + b) == sorted(job_ids)
    with database.session() as s:
        assert queue.job_counts(s)[db.JobState.DONE] == 40


def test_permanent_failure_ends_at_once(database):
    (uid,) = _receive(database, 1)
    (job_id,) = _enqueue_all(database, [uid], max_attempts=3)
    with database.session() as s:
        queue.claim_next(s, "w1", 60, now=T0)
    with database.session() as s:
        state = queue.fail(s, job_id, "w1", "too few frames", permanent=True, retry_delay_s=10,
                           now=T0)
    assert state == db.JobState.FAILED
    with database.session() as s:
        job = s.get(Job, job_id)
        assert (job.attempts, job.last_error) == (1, "too few frames")
    with database.session() as s:
        assert queue.claim_next(s, "w1", 60, now=T0 + timedelta(hours=1)) is None


def test_failed_job_is_requeued_by_a_new_enqueue_and_by_hand(database):
    (uid,) = _receive(database, 1)
    (job_id,) = _enqueue_all(database, [uid], max_attempts=2)
    for _ in range(2):
        with database.session() as s:
            queue.claim_next(s, "w1", 60, now=T0 + timedelta(hours=1))
        with database.session() as s:
            queue.fail(s, job_id, "w1", "bad header", now=T0)
    with database.session() as s:
        assert s.get(Job, job_id).state == db.JobState.FAILED
        again = queue.enqueue(s, uid, model_name=DEMO[0], model_version=DEMO[1], ready=False,
                              max_attempts=3)
    assert (again.job_id, again.created, again.requeued) == (job_id, False, True)
    assert again.state == db.JobState.RECEIVED  # waits for its association, as a new job
    with database.session() as s:
        job = s.get(Job, job_id)
        assert (job.attempts, job.max_attempts, job.last_error) == (0, 3, "bad header")
        queue.release(s, job_id)
    with database.session() as s:
        claimed = queue.claim_next(s, "w2", 60)
        assert claimed is not None and claimed.job_id == job_id and claimed.attempt == 1
    # by hand: only failed jobs
    with database.session() as s, pytest.raises(db.JobStateError, match="is running, not failed"):
        queue.requeue(s, job_id)
    with database.session() as s:
        queue.fail(s, job_id, "w2", "still bad", permanent=True)
    with database.session() as s:
        assert queue.requeue(s, job_id) == db.JobState.QUEUED
    with database.session() as s, pytest.raises(db.NotFoundError):
        queue.requeue(s, 424242)
    # a done job is never requeued by a new enqueue
    with database.session() as s:
        queue.claim_next(s, "w3", 60)
    with database.session() as s:
        queue.complete(s, job_id, "w3")
        again = queue.enqueue(s, uid, model_name=DEMO[0], model_version=DEMO[1])
    assert not again.created and not again.requeued and again.state == db.JobState.DONE


def test_leases_of_dead_processes_on_this_host_expire_at_once(database):
    uids = _receive(database, 3)
    ids = _enqueue_all(database, uids)
    for worker in ("hostA:111:w0", "hostA:222:w0", "hostB:111:w0"):
        with database.session() as s:
            queue.claim_next(s, worker, 3600, now=T0)
    with database.session() as s:  # pid 111 is dead on hostA, 222 alive; hostB not ours
        assert queue.expire_dead_leases(s, "hostA", lambda pid: pid != 111, now=T0) == 1
    with database.session() as s:
        retaken = queue.claim_next(s, "hostA:333:w0", 60, now=T0)
        assert retaken is not None and retaken.job_id == ids[0] and retaken.attempt == 2
        assert queue.claim_next(s, "hostA:333:w0", 60, now=T0) is None


def test_a_worker_takes_only_jobs_of_its_model_version(database):
    uids = _receive(database, 2)
    with database.session() as s:
        v1 = queue.enqueue(s, uids[0], model_name="demo", model_version="v1", now=T0).job_id
        v2 = queue.enqueue(s, uids[1], model_name="sf50", model_version="v2", now=T0).job_id
    with database.session() as s:
        assert queue.claim_next(s, "w2", 60, now=T0, model_version="v2").job_id == v2
    with database.session() as s:
        assert queue.claim_next(s, "w2", 60, now=T0, model_version="v2") is None
    with database.session() as s:
        assert queue.claim_next(s, "w1", 60, now=T0, model_version="v1").job_id == v1
