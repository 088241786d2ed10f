"""Fixtures for the case store: a SQLite file and a real PostgreSQL server started here.

The PostgreSQL server is the Debian one (``/usr/lib/postgresql/<newest>/bin``): ``initdb``
into a temporary directory, ``pg_ctl start`` on a free loopback port with its socket in that
directory, stopped and removed at the end of the session. ``initdb`` and ``postgres`` refuse
to run as root, so under root (CI) they run as the unprivileged ``postgres`` system user.
When the server cannot be started the PostgreSQL tests FAIL (they are never skipped).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import db
from dicom_io.results import BleedingEvent, CaseIndex, WeightsKind

PG_ROOT = Path("/usr/lib/postgresql")
PG_SUPERUSER = "amagi"
RUN_AS = "postgres"  # the system user created by the Debian package


def _newest_pg_bin() -> Path:
    candidates = [p / "bin" for p in PG_ROOT.glob("*") if (p / "bin" / "initdb").exists()]
    if not candidates:
        pytest.fail(f"PostgreSQL server binaries not found under {PG_ROOT}/*/bin "
                    "(install the Debian 'postgresql' package: make system-deps)", pytrace=False)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    return max(candidates, key=version)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1:``port``."""

    def __init__(self) -> None:
        self.bin = _newest_pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="amagi-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(RUN_AS)
            except KeyError:
                pytest.fail(f"running as root and there is no '{RUN_AS}' user to run PostgreSQL "
                            "as", pytrace=False)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._prefix = ["runuser", "-u", RUN_AS, "--"]

    def _run(self, *cmd: str) -> None:
        proc = subprocess.run([*self._prefix, *cmd], capture_output=True, text=True, timeout=120,
                              cwd=self.dir)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            pytest.fail(f"PostgreSQL could not be started: {' '.join(cmd[:2])} exited "
                        f"{proc.returncode}: {proc.stderr.strip()[-1500:]}\n{log}", pytrace=False)

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_SUPERUSER,
                  "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C")
        for attempt in range(3):  # the free port may be taken between probe and bind
            self.port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                    f"-c unix_socket_directories={self.dir} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off")
            cmd = [*self._prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                   str(self.log), "-o", opts, "-w", "-t", "60", "start"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.dir)
            if proc.returncode == 0:
                return
            if attempt == 2:
                log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                pytest.fail(f"PostgreSQL could not be started on 127.0.0.1:{self.port}: "
                            f"{proc.stderr.strip()}\n{log}", pytrace=False)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database on this server; returns its SQLAlchemy URL."""
        import psycopg

        name = f"amagi_test_{next(self._names)}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=PG_SUPERUSER,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run([*self._prefix, str(self.bin / "pg_ctl"), "-D", str(self.data),
                            "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60,
                           cwd=self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend (a fresh database per test)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'amagi.db'}"
    return request.getfixturevalue("pg_server").new_database()


@pytest.fixture
def database(db_url: str) -> Iterator[db.Database]:
    """The case store at :func:`db_url`, migrated to head."""
    database = db.open_database(db_url)
    yield database
    database.dispose()


# A small cohort whose every filter result is known (see tests/db/test_db_queries.py).
VIDEO_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.1.1"  # Video Endoscopic Image Storage
H264_HP41 = "1.2.840.10008.1.2.4.102"


def _utc(*args: int):
    from datetime import datetime, timezone

    return datetime(*args, tzinfo=timezone.utc)


#: Models as the service enqueues them (``ModelSpec.name``, ``ModelSpec.version``): the bundled
#: demo, and the authors' SF50 checkpoint configured by its file (version = file stem).
DEMO = ("amagi-demo-amagi_tiny", "3.0")
AUTHORS = ("amagi_sf50", "split1_SF50")
SPOOL = "/var/lib/amagi/spool"  # <spool>/<study>/<series>/<sop>.dcm, as dicom_io.net.spool writes
#: What the worker records of a run: the analysis options and the model's architecture.
PARAMETERS = {"prediction_hz": 10.0, "threshold": 0.5, "smoothing": "morphology",
              "smoothing_s": 1.0, "bf16": False, "fast": False}
ARCH = {DEMO[0]: "amagi_tiny", AUTHORS[0]: "amagi_sf50"}
TIMINGS = {"decode": 0.412, "transforms": 0.105, "video_network": 1.5, "post_processing": 0.002,
           "total": 2.031}

COHORT = {
    # letter: (study uid, study date, description, received, model name, model version,
    #          final state, events as (start_s, end_s), video duration s)
    "A": ("1.2.826.0.1.1", (2024, 3, 5), "Gastrectomy", (2024, 3, 5, 10, 0), *DEMO,
          "done", [(10.0, 40.0), (100.0, 145.0)], 600.0),
    "B": ("1.2.826.0.1.2", (2024, 2, 10), "Colectomy", (2024, 2, 10, 9, 0), *DEMO,
          "done", [(5.0, 8.0)], 300.0),
    "C": ("1.2.826.0.1.3", (2024, 4, 1), "Gastrectomy", (2024, 4, 1, 12, 0), *DEMO,
          "done", [], 400.0),
    "D": ("1.2.826.0.1.3", (2024, 4, 1), "Gastrectomy", (2024, 4, 1, 12, 5), *AUTHORS,
          "done", [(20.0, 55.0), (60.0, 70.0), (200.0, 231.0)], 900.0),
    "F": ("1.2.826.0.1.5", None, None, (2024, 6, 1, 8, 0), *DEMO, "failed", [], 0.0),
    "E": ("1.2.826.0.1.4", (2024, 5, 20), "Gastrectomy", (2024, 5, 20, 7, 30), *DEMO,
          "queued", [], 0.0),
}


FPS = 30.0
#: What the service stores as the weights of each cohort model (``ModelSpec.weights``).
WEIGHTS = {DEMO[0]: WeightsKind.DEMO_SYNTHETIC, AUTHORS[0]: WeightsKind.AUTHORS}


def cohort_event(start_s: float, end_s: float) -> BleedingEvent:
    """An event as the analysis makes it on a :data:`FPS` video predicted at every frame:
    1-based frame numbers, from the frame at ``start_s`` to the last frame before ``end_s``,
    the key frame in the middle."""
    return BleedingEvent(start_s=start_s, end_s=end_s, duration_s=end_s - start_s,
                         start_frame=round(start_s * FPS) + 1, end_frame=round(end_s * FPS),
                         key_frame=round((start_s + end_s) / 2 * FPS) + 1,
                         peak_probability=0.9, mean_probability=0.7)


def build_cohort(database: db.Database) -> dict[str, int]:
    """Record the :data:`COHORT` through the public API; returns letter → case id."""
    from datetime import date

    from db import queue, records

    ids: dict[str, int] = {}
    for letter, (study, sdate, desc, recv, model, version, state, events, dur) in COHORT.items():
        sop = f"{study}.{ord(letter)}"
        with database.session() as s:
            records.record_instance(
                s, sop_instance_uid=sop, sop_class_uid=VIDEO_SOP_CLASS,
                transfer_syntax_uid=H264_HP41, study_instance_uid=study,
                series_instance_uid=f"{sop}.1", size_bytes=1000 + ord(letter),
                spool_path=f"{SPOOL}/{study}/{sop}.1/{sop}.dcm", calling_ae="ENDO1",
                received_at=_utc(*recv),
                study_date=date(*sdate) if sdate else None, study_description=desc,
                modality="ES", patient_id=f"PID-{letter}", store_patient_id=letter == "A")
            res = queue.enqueue(s, sop, model_name=model, model_version=version,
                                max_attempts=1 if state == "failed" else 3)
            ids[letter] = res.job_id
        if state == "queued":
            continue
        with database.session() as s:
            claimed = queue.claim_next(s, "cohort-worker", 60.0)
            assert claimed is not None and claimed.job_id == res.job_id
        with database.session() as s:
            if state == "failed":
                queue.fail(s, res.job_id, "cohort-worker", "decoder error: bad stream")
                continue
            evs = [cohort_event(a, b) for a, b in events]
            records.record_run(s, res.job_id, weights_kind=WEIGHTS[model], events=evs,
                               index=CaseIndex.from_events(evs, dur),
                               parameters={**PARAMETERS, "arch": ARCH[model]}, timings=TIMINGS)
            queue.complete(s, res.job_id, "cohort-worker")
    return ids


@pytest.fixture
def cohort(database: db.Database) -> dict[str, int]:
    return build_cohort(database)
