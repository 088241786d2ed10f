"""The registry of serve threads on SQLite and a real PostgreSQL: registration, heartbeats,
stale and dead processes, the job each worker holds."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

import db
from db import queue, workers
from db.engine import create_engine
from db.schema import WorkerNode
from tests.db.test_db_queue import T0, _enqueue_all, _receive


def _names(rows):
    return [r["name"] for r in rows]


def test_register_beat_stale_and_stop(database):
    with database.session() as s:
        workers.register(s, "h1:10:w0", host="h1", pid=10, role="worker", device="cuda:0",
                         now=T0)
        workers.register(s, "h1:10:w1", host="h1", pid=10, role="worker", device="cuda:1",
                         now=T0)
        workers.register(s, "h0:5:listener", host="h0", pid=5, role="listener", now=T0)
    later = T0 + timedelta(seconds=20)
    with database.session() as s:
        n = workers.beat(s, [workers.Beat("h1:10:w0", "idle", {"jobs_finished": 2}),
                             workers.Beat("h0:5:listener", "listening"),
                             workers.Beat("nobody:1:w0", "idle")], now=later)
        assert n == 2  # an unknown name is not created
    with database.session() as s:
        rows = workers.list_workers(s, stale_after_s=15, now=later + timedelta(seconds=1))
    assert _names(rows) == ["h0:5:listener", "h1:10:w0", "h1:10:w1"]  # listeners first
    by = {r["name"]: r for r in rows}
    assert by["h1:10:w0"]["details"] == {"jobs_finished": 2} and by["h1:10:w0"]["state"] == "idle"
    assert by["h1:10:w0"]["device"] == "cuda:0" and by["h1:10:w0"]["role"] == "worker"
    assert not by["h1:10:w0"]["stale"] and not by["h0:5:listener"]["stale"]
    assert by["h1:10:w1"]["stale"] and by["h1:10:w1"]["age_s"] == 21.0  # no beat since T0
    assert by["h1:10:w0"]["heartbeat_at"] == later
    with database.session() as s:  # a thread that beats every 30 s is not stale after 21 s
        workers.beat(s, [workers.Beat("h1:10:w1", "idle", {"heartbeat_s": 30})], now=T0)
        rows = workers.list_workers(s, stale_after_s=15, now=later + timedelta(seconds=1))
        assert [r["stale"] for r in rows] == [False, False, False]
        rows = workers.list_workers(s, stale_after_s=15, now=T0 + timedelta(seconds=91))
        assert {r["name"]: r["stale"] for r in rows}["h1:10:w1"]  # 3 beats of 30 s missed
    with database.session() as s:
        workers.mark_stopped(s, ["h1:10:w0", "h1:10:w1"], now=later)
    with database.session() as s:
        assert _names(workers.list_workers(s, stale_after_s=15, now=later)) == ["h0:5:listener"]
        stopped = workers.list_workers(s, stale_after_s=15, now=later, include_stopped=True)
    assert {r["name"]: (r["state"], r["stale"]) for r in stopped}["h1:10:w1"] == ("stopped", False)


def test_dead_processes_of_this_host_are_marked_stopped(database):
    with database.session() as s:
        for pid in (10, 11):
            workers.register(s, f"h1:{pid}:w0", host="h1", pid=pid, role="all", now=T0)
        workers.register(s, "h2:10:w0", host="h2", pid=10, role="worker", now=T0)
    with database.session() as s:
        assert workers.stop_dead(s, "h1", lambda pid: pid == 11, now=T0) == 1
    with database.session() as s:
        rows = {r["name"]: r for r in workers.list_workers(s, stale_after_s=60, now=T0,
                                                            include_stopped=True)}
    assert rows["h1:10:w0"]["state"] == "stopped (process gone)"
    assert rows["h1:10:w0"]["stopped_at"] == T0
    assert rows["h1:11:w0"]["stopped_at"] is None and rows["h2:10:w0"]["stopped_at"] is None


def test_current_job_comes_from_the_queue(database):
    job_ids = _enqueue_all(database, _receive(database, 2))
    with database.session() as s:
        workers.register(s, "h1:10:w0", host="h1", pid=10, role="worker", now=T0)
        workers.register(s, "h1:10:w1", host="h1", pid=10, role="worker", now=T0)
    with database.session() as s:
        claimed = queue.claim_next(s, "h1:10:w1", 60, now=T0)
    assert claimed is not None and claimed.job_id == job_ids[0]
    with database.session() as s:
        rows = {r["name"]: r["job"] for r in workers.list_workers(s, stale_after_s=60, now=T0)}
    assert rows == {"h1:10:w0": None, "h1:10:w1": job_ids[0]}
    with database.session() as s:
        queue.complete(s, job_ids[0], "h1:10:w1", now=T0)
    with database.session() as s:
        assert workers.list_workers(s, stale_after_s=60, now=T0)[1]["job"] is None


def test_register_again_resets_the_row_and_old_stopped_rows_are_forgotten(database):
    with database.session() as s:
        workers.register(s, "h1:10:w0", host="h1", pid=10, role="worker", now=T0)
        workers.register(s, "h1:12:w0", host="h1", pid=12, role="worker", now=T0)
        workers.mark_stopped(s, ["h1:10:w0", "h1:12:w0"], now=T0)
    later = T0 + workers.FORGET_STOPPED_AFTER + timedelta(seconds=1)
    with database.session() as s:  # pid 12 reused after a reboot; pid 10's row is old
        workers.register(s, "h1:12:w0", host="h1", pid=12, role="all", device="cpu", now=later)
    with database.session() as s:
        rows = s.query(WorkerNode).all()
        assert [(r.name, r.role, r.device, r.stopped_at, r.started_at) for r in rows] == [
            ("h1:12:w0", "all", "cpu", None, later)]


def test_workers_migration_down_and_up(db_url):
    """The revision that adds the table (found by its file name, whatever its number)
    downgrades to the one before and upgrades again."""
    from alembic import command
    from alembic.script import ScriptDirectory

    from db import migrate

    script = ScriptDirectory.from_config(migrate.alembic_config())
    (rev,) = [r for r in script.walk_revisions() if r.path.endswith("_workers.py")]
    database = db.open_database(db_url)
    with database.session() as s:
        workers.register(s, "h:1:w0", host="h", pid=1, role="worker", now=T0)
    database.dispose()
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), rev.down_revision)
        assert "workers" not in sa.inspect(engine).get_table_names()
        assert migrate.upgrade(engine) == migrate.head_revision()
        assert "workers" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
