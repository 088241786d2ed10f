"""Migrations from an empty database, on SQLite and a real PostgreSQL; the unreachable-URL error."""

from __future__ import annotations

import socket

import pytest
import sqlalchemy as sa

import db
from db import migrate
from db.engine import create_engine
from db.schema import Base

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
