"""Migrations from an empty database, on SQLite and a real PostgreSQL; the unreachable-URL error."""

from __future__ import annotations

import socket

import pytest
import sqlalchemy as sa
from alembic import command

import db
from db import migrate
from db.engine import create_engine
from db.schema import Base
from tests.db.conftest import DEMO

TABLES = {"studies", "series", "instances", "jobs", "analysis_runs", "bleeding_events",
          "case_indices", "produced_objects", "deliveries", "workers"}


def test_upgrade_from_empty_matches_the_models(db_url):
    engine = create_engine(db_url)
    try:
        assert migrate.status(engine) == (None, migrate.head_revision())
        assert migrate.upgrade(engine) == migrate.head_revision()
        assert migrate.status(engine) == (migrate.head_revision(),) * 2
        assert migrate.upgrade(engine) == migrate.head_revision()  # idempotent
        insp = sa.inspect(engine)
        assert TABLES | {"alembic_version"} == set(insp.get_table_names())
        for name, table in Base.metadata.tables.items():  # revision == models, column by column
            assert {c["name"] for c in insp.get_columns(name)} == set(table.columns.keys())
            want_ix = {ix.name for ix in table.indexes}
            assert want_ix <= {ix["name"] for ix in insp.get_indexes(name)}
        fks = insp.get_foreign_keys("jobs")
        assert [fk["name"] for fk in fks] == ["fk_jobs_instance_id_instances"]  # named convention
    finally:
        engine.dispose()


def test_no_pending_autogenerate_diff(db_url):
    """The first revision is the full schema: autogenerate finds nothing left to do."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(db_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_open_database_creates_sqlite_parent_and_pragmas(tmp_path):
    path = tmp_path / "deep" / "er" / "amagi.db"
    database = db.open_database(f"sqlite:///{path}")
    try:
        assert path.exists()
        with database.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        database.dispose()


def test_unreachable_postgres_is_one_clear_line():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://amagi:s3cret@127.0.0.1:{port}/amagi"
    with pytest.raises(db.DatabaseUnavailableError) as info:
        db.open_database(url)
    msg = str(info.value)
    assert "\n" not in msg and "s3cret" not in msg
    assert msg.startswith(f"cannot reach database postgresql+psycopg://amagi:***@127.0.0.1:{port}")


def test_unknown_revision_is_a_schema_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'fffffff'"))
    engine.dispose()
    with pytest.raises(db.SchemaError, match="fffffff"):
        db.open_database(url)


def test_read_only_commands_never_migrate(run_cli, tmp_path):
    """``status``, ``cases`` and ``jobs`` on an older schema say how to migrate and change
    nothing; ``amagi db upgrade`` then migrates and they work."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0002")
    env = {"AMAGI_DATABASE_URL": url}
    for argv in (("status",), ("cases", "list"), ("jobs", "retry", "1")):
        r = run_cli(*argv, env=env)
        assert r.code == 1, (argv, r.stderr)
        assert "schema revision 0002" in r.stderr and "amagi db upgrade" in r.stderr
        assert migrate.status(url)[0] == "0002"
    assert run_cli("db", "upgrade", env=env).code == 0
    assert migrate.status(url)[0] == migrate.head_revision()
    assert run_cli("cases", "list", env=env).code == 0


def _old_runs(url: str, revision: str, runs: dict[str, tuple[str, int, float]]) -> dict[str, int]:
    """A database at ``revision`` with one analysed job per entry of ``runs``
    (``weights_kind``, event count, mean and longest duration as stored then); returns
    name → job id. Instances and jobs go through today's API (their tables are unchanged)."""
    from db import queue, records

    migrate.upgrade(url, revision)
    database = db.Database(create_engine(url))
    ids = {}
    try:
        for name, (kind, count, duration) in runs.items():
            uid = f"1.2.3.{len(ids) + 1}"
            with database.session() as s:
                records.record_instance(
                    s, sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.1.1",
                    transfer_syntax_uid="1.2.840.10008.1.2.4.102", study_instance_uid=f"{uid}.0",
                    series_instance_uid=f"{uid}.1", size_bytes=1, spool_path=f"/spool/{uid}")
                ids[name] = queue.enqueue(s, uid, model_name=DEMO[0], model_version=DEMO[1]).job_id
            with database.engine.begin() as conn:
                run = conn.execute(sa.text(
                    "INSERT INTO analysis_runs (job_id, model_name, model_version, weights_kind, "
                    "parameters, timings, created_at) VALUES (:j, :m, :v, :k, '{}', '{}', "
                    "'2025-01-01 00:00:00') RETURNING id"),
                    {"j": ids[name], "m": DEMO[0], "v": DEMO[1], "k": kind}).scalar()
                conn.execute(sa.text(
                    "INSERT INTO case_indices (run_id, event_count, total_duration_s, "
                    "mean_duration_s, max_duration_s, first_bleed_s, video_duration_s) VALUES "
                    "(:r, :n, :t, :d, :d, :f, 60.0)"),
                    {"r": run, "n": count, "t": count * duration, "d": duration,
                     "f": 1.0 if count else None})
    finally:
        database.dispose()
    return ids


def test_event_free_cases_lose_their_zero_durations(db_url):
    """Migration 0004: the 0 s mean and longest duration the first schema stored for a case
    without events become NULL (undefined, as in the SR); measured values stay; downgrading
    puts the 0s back."""
    from db.queries import get_case

    ids = _old_runs(db_url, "0003", {"empty": ("demo-synthetic", 0, 0.0),
                                     "two": ("demo-synthetic", 2, 2.5)})
    migrate.upgrade(db_url, "0004")
    database = db.Database(create_engine(db_url))
    try:
        with database.session() as s:
            empty, two = get_case(s, ids["empty"]).case, get_case(s, ids["two"]).case
        assert (empty.event_count, empty.total_duration_s, empty.mean_duration_s,
                empty.max_duration_s, empty.first_bleed_s) == (0, 0.0, None, None, None)
        assert (two.event_count, two.total_duration_s, two.mean_duration_s,
                two.max_duration_s, two.first_bleed_s) == (2, 5.0, 2.5, 2.5, 1.0)
    finally:
        database.dispose()
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0003")
            rows = conn.execute(sa.text("SELECT event_count, mean_duration_s, max_duration_s "
                                        "FROM case_indices ORDER BY event_count")).all()
        assert [tuple(r) for r in rows] == [(0, 0.0, 0.0), (2, 2.5, 2.5)]
    finally:
        engine.dispose()


def test_weights_kinds_become_the_enum(db_url):
    """Migration 0005: legacy weights kinds map onto WeightsKind (``demo`` → demo-synthetic,
    ``checkpoint`` → user), production values stay, the database refuses any other value,
    and the ORM reads the enum; downgrading keeps the values."""
    from db.queries import get_case
    from dicom_io.results import WeightsKind

    stored = {"demo": "demo-synthetic", "checkpoint": "user", "authors": "authors",
              "user": "user", "demo-synthetic": "demo-synthetic"}
    ids = _old_runs(db_url, "0004", {k: (k, 0, 0.0) for k in stored})
    migrate.upgrade(db_url, "0005")
    database = db.Database(create_engine(db_url))
    try:
        with database.session() as s:
            got = {k: get_case(s, job).weights_kind for k, job in ids.items()}
        assert got == stored and all(type(v) is WeightsKind for v in got.values())
        with pytest.raises(sa.exc.IntegrityError), database.engine.begin() as conn:
            conn.execute(sa.text("UPDATE analysis_runs SET weights_kind = 'checkpoint'"))
    finally:
        database.dispose()
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0004")
            rows = conn.execute(sa.text("SELECT weights_kind FROM analysis_runs")).scalars()
            assert sorted(rows) == sorted(stored.values())
    finally:
        engine.dispose()
