"""``amagi serve --role listener|worker``: separate processes sharing one real PostgreSQL and
one storage directory, DCMTK on loopback.

One listener and two workers, each ``amagi serve`` in its own process and working directory;
DCMTK storescu pushes videos; the worker analysing the long one is killed with SIGKILL; the
other takes the job after its lease, and every result reaches the DCMTK storescp exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from db import open_database
from db.schema import AnalysisRun, Delivery, DeliveryState, Instance, Job, JobState, ProducedObject
from db.workers import list_workers
from tests.amagi_plugin.serve_support import StoreSCP, free_port, make_video, running, storescu
from tests.amagi_plugin.serve_support import wait_until as _wait_until
from tests.db.conftest import pg_server  # noqa: F401  (the session's PostgreSQL server)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Serve:
    """One ``amagi serve`` process in its own working directory (its log beside it)."""

    def __init__(self, role: str, workdir: Path, args: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.role, self.workdir = role, workdir
        self.log = workdir / "serve.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        env.pop("AMAGI_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "amagi_plugin", "serve", "--role", role, *args],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> int | None:
        if self.alive():
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.mark.slow
def test_listener_and_two_workers_share_postgres_and_survive_a_killed_worker(
        tmp_path, tiny_checkpoint, pg_server, run_cli) -> None:  # noqa: F811
    url = pg_server.new_database()
    shared = tmp_path / "shared"  # the storage directory every process shares
    port = free_port()
    (tmp_path / "in").mkdir()
    long_video = make_video(tmp_path / "in" / "long.dcm", seconds=8.0, size=(160, 208))
    short = [make_video(tmp_path / "in" / f"short{i}.dcm", seconds=1.0, seed=i + 1)
             for i in range(3)]
    with running(StoreSCP(tmp_path / "pacs")) as pacs:
        common = ["--database-url", url, "--set", f"storage.var_dir={shared}",
                  "--set", "storage.reserve_mb=16", "--set", "model.name=amagi_tiny",
                  "--set", f"model.checkpoint={tiny_checkpoint}",
                  "--set", "analysis.threshold=1e-6", "--set", "worker.lease_s=3",
                  "--set", "service.heartbeat_s=1", "--set", "delivery.retry_initial_s=0.5",
                  "--set", "delivery.retry_max_s=2",
                  # the same port for everyone: a worker that bound it would stop the listener
                  "--port", str(port), "--bind-address", "127.0.0.1"]
        workers = [Serve("worker", tmp_path / f"worker{i}",
                         [*common, "--destination", pacs.destination]) for i in (1, 2)]
        procs = list(workers)
        database = open_database(url, upgrade=False) if _migrated(url) else None
        try:
            database = database or _wait_database(url, workers)
            wait_until(lambda: _idle_workers(database) == 2, 120, procs,
                       what="two registered idle workers")
            listener = Serve("listener", tmp_path / "listener", common)
            procs.append(listener)
            wait_until(lambda: _listening(port), 120, procs, what="the listener to listen")

            r = storescu(port, long_video)
            assert r.returncode == 0, r.stderr
            long_job = wait_until(lambda: _running_job(database), 60, procs, interval=0.05,
                                  what="the long video's job to run")
            r = storescu(port, *short)
            assert r.returncode == 0, r.stderr
            job_id, holder = long_job
            victim = next(w for w in workers if f":{w.pid}:" in holder)
            survivor = next(w for w in workers if w is not victim)
            time.sleep(0.5)
            assert _job(database, job_id).state == JobState.RUNNING  # still analysing
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(timeout=30)
            procs.remove(victim)

            wait_until(lambda: _counts(database).get(JobState.DONE) == 4, 240, procs,
                       interval=0.5, what="four jobs done")
            n_objects = _scalar(database, sa.select(sa.func.count()).select_from(ProducedObject))
            assert n_objects >= 16  # SR, SEG, key image, KOS (and the PDF) per video
            wait_until(lambda: _sent(database) == n_objects, 120, procs,
                       what="every result delivered")
            time.sleep(3)  # a second copy would arrive now

            # Every video analysed once, the killed worker's job taken over after its lease.
            with database.session() as s:
                jobs = s.scalars(sa.select(Job).order_by(Job.id)).all()
                runs = s.scalar(sa.select(sa.func.count()).select_from(AnalysisRun))
                instances = s.scalar(sa.select(sa.func.count()).select_from(Instance))
                dels = s.execute(sa.select(Delivery.state, Delivery.attempts,
                                           Delivery.destination)).all()
                produced = set(s.scalars(sa.select(ProducedObject.sop_instance_uid)))
                paths = list(s.scalars(sa.select(ProducedObject.path)))
                spool = list(s.scalars(sa.select(Instance.spool_path)))
            assert instances == 4 and len(jobs) == 4 and runs == 4
            assert {j.state for j in jobs} == {JobState.DONE}
            by_id = {j.id: j for j in jobs}
            assert by_id[job_id].attempts == 2 and by_id[job_id].worker.split(":")[1] == str(
                survivor.pid)
            assert all(j.attempts == 1 for j in jobs if j.id != job_id)
            assert all(f":{listener.pid}:" not in j.worker for j in jobs)  # it never analyses
            # Each result delivered exactly once: one successful C-STORE per object, and the
            # peer holds each object once.
            assert len(dels) == n_objects
            assert {(d.state.value, d.attempts, d.destination) for d in dels} == {
                ("sent", 1, pacs.destination)}
            received = pacs.received()
            uids = [ds.SOPInstanceUID for ds in received]
            assert len(received) == len(pacs.files()) == n_objects
            assert sorted(uids) == sorted(produced)
            # Everything lies in the shared storage directory, none in the working ones.
            assert all(Path(p).is_relative_to(shared) for p in [*paths, *spool])
            for proc in [listener, *workers]:
                assert not (proc.workdir / "var").exists()

            # amagi status (from yet another directory) lists every serve thread.
            res = run_cli("status", cwd=tmp_path,
                          env={"AMAGI_DATABASE_URL": url})
            assert res.code == 0, res.stderr
            lines = res.stdout.splitlines()
            row = {str(p.pid): next(ln for ln in lines if f" {p.pid} " in ln)
                   for p in (listener, victim, survivor)}
            assert " listener " in row[str(listener.pid)] and "listening" in row[str(listener.pid)]
            assert "GONE" in row[str(victim.pid)] and " worker " in row[str(victim.pid)]
            assert "GONE" not in row[str(survivor.pid)] and "STALE" not in row[str(survivor.pid)]
            assert " cpu " in row[str(survivor.pid)] and "idle" in row[str(survivor.pid)]
        finally:
            codes = {p.role + str(p.pid): p.stop() for p in procs}
            if database is not None:
                database.dispose()
        assert set(codes.values()) == {0}, codes
        database = open_database(url, upgrade=False)
        try:
            with database.session() as s:
                rows = list_workers(s, stale_after_s=60, include_stopped=True)
        finally:
            database.dispose()
        states = {r["pid"]: r["state"] for r in rows}
        assert states[listener.pid] == states[survivor.pid] == "stopped"  # an orderly stop


def test_shared_roles_refuse_sqlite(run_cli, tmp_path) -> None:
    for role in ("listener", "worker"):
        r = run_cli("serve", "--role", role, "--set", f"storage.var_dir={tmp_path / 'var'}")
        assert r.code == 2, r.stderr
        assert f"service.role = {role}" in r.stderr and "needs PostgreSQL" in r.stderr
        assert r.stderr.count("\n") == 1
    assert not (tmp_path / "var").exists()  # refused before touching anything


# -- helpers --------------------------------------------------------------------------------
def wait_until(predicate, timeout: float, procs: list[Serve], interval: float = 0.2,
               what: str = "condition"):
    """:func:`serve_support.wait_until` that fails at once, with its log, when a process died."""

    def check():
        for p in procs:
            if not p.alive():
                raise AssertionError(f"amagi serve --role {p.role} exited "
                                     f"{p.proc.returncode} while waiting for {what}:\n{p.tail()}")
        return predicate()

    try:
        return _wait_until(check, timeout, interval=interval, what=what)
    except AssertionError as e:
        if "timed out" in str(e):
            logs = "\n".join(f"--- {p.role} {p.pid}:\n{p.tail()}" for p in procs)
            raise AssertionError(f"{e}\n{logs}") from None
        raise


def _migrated(url: str) -> bool:
    from db import migrate

    current, head = migrate.status(url)
    return current == head


def _wait_database(url: str, procs: list[Serve]):
    """The database once a serve process has migrated it (they do it at start)."""
    wait_until(lambda: _migrated(url), 120, procs, what="the database to be migrated")
    return open_database(url, upgrade=False)


def _scalar(database, query):
    with database.session() as s:
        return s.scalar(query)


def _idle_workers(database) -> int:
    with database.session() as s:
        return sum(1 for r in list_workers(s, stale_after_s=60)
                   if r["role"] == "worker" and r["state"] == "idle")


def _running_job(database) -> tuple[int, str] | None:
    with database.session() as s:
        row = s.execute(sa.select(Job.id, Job.worker).where(Job.state == JobState.RUNNING)).first()
    return (row[0], row[1]) if row else None


def _job(database, job_id: int) -> Job:
    with database.session() as s:
        return s.get_one(Job, job_id)


def _counts(database) -> dict[JobState, int]:
    from db.queue import job_counts

    with database.session() as s:
        return job_counts(s)


def _sent(database) -> int:
    with database.session() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(Delivery)
                        .where(Delivery.state == DeliveryState.SENT))
