"""Alembic migrations driven from code: the scripts live in :mod:`db.migrations`.

The script directory is found from this package's path, never the working directory, so
``upgrade`` works from an installed wheel. Upgrades take a lock first (``BEGIN IMMEDIATE`` on
SQLite, a transaction-level advisory lock on PostgreSQL) so two processes starting at once do
not both create the schema.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import OperationalError

from db.engine import SQLITE_BEGIN_OPTION, create_engine, mask_url, sqlite_file, unreachable
from db.errors import SchemaError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_LOCK_KEY = 0x414D414749  # "AMAGI": advisory lock held while migrating


def alembic_config(connection: sa.Connection | None = None) -> AlembicConfig:
    """An Alembic configuration pointing at :data:`MIGRATIONS_DIR` (no ``alembic.ini``)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its revisions
        raise RuntimeError(f"no Alembic revisions found in {MIGRATIONS_DIR}")
    return head


def _engine(url_or_engine: str | URL | Engine) -> tuple[Engine, bool]:
    if isinstance(url_or_engine, Engine):
        return url_or_engine, False
    return create_engine(url_or_engine), True


def upgrade(url_or_engine: str | URL | Engine, revision: str = "head") -> str | None:
    """Apply migrations up to ``revision``; returns the revision the database is at after.

    Parameters
    ----------
    url_or_engine
        A database URL or an engine (an engine made here is disposed of afterwards).
    revision
        Target revision (``"head"`` by default).
    """
    engine, owned = _engine(url_or_engine)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
                before = MigrationContext.configure(conn).get_current_revision()
                command.upgrade(alembic_config(conn), revision)
                after = MigrationContext.configure(conn).get_current_revision()
    except OperationalError as e:
        raise unreachable(engine.url, e) from e
    except CommandError as e:  # e.g. the database is at a revision this code does not know
        raise SchemaError(f"database {mask_url(engine.url)}: {e}") from e
    else:
        if before != after:
            log.info("database %s migrated from %s to %s", mask_url(engine.url), before, after)
        return after
    finally:
        if owned:
            engine.dispose()


def status(url_or_engine: str | URL | Engine) -> tuple[str | None, str]:
    """``(current revision or None for an empty database, head revision)``.

    The database is migrated when the two are equal (``amagi doctor`` checks this). A SQLite
    file that does not exist reads as empty and is not created (asking must not write).
    """
    if not isinstance(url_or_engine, Engine):
        path = sqlite_file(url_or_engine)
        if path is not None and not path.exists():
            return None, head_revision()
    engine, owned = _engine(url_or_engine)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        return current, head_revision()
    except OperationalError as e:
        raise unreachable(engine.url, e) from e
    finally:
        if owned:
            engine.dispose()
