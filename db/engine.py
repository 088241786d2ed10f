"""One engine per process: :func:`open_database` and the :class:`Database` it returns.

SQLite connections get ``journal_mode=WAL``, ``foreign_keys=ON`` and a busy timeout, and their
transactions are begun by us (``BEGIN``, or ``BEGIN IMMEDIATE`` when a connection carries the
execution option ``sqlite_begin="IMMEDIATE"``: the job queue uses it to claim atomically).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from db.errors import DatabaseUnavailableError, DatabaseURLError

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_BEGIN_OPTION = "sqlite_begin"


def mask_url(url: str | URL) -> str:
    """The URL as text with its password replaced by ``***``."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def _parse_url(url: str | URL) -> URL:
    try:
        return make_url(url)
    except ArgumentError as e:
        raise DatabaseURLError(f"not a database URL: {mask_url(url)!s}") from e


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; ``None`` for other backends, in-memory databases
    and ``file:`` URIs."""
    parsed = _parse_url(url)
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or db in (None, "", ":memory:") \
            or db.startswith("file:"):
        return None
    return Path(db).expanduser()


def create_engine(url: str | URL, **kw: Any) -> Engine:
    """Make an engine for ``url``; SQLite gets its parent directory and its pragmas.

    Raises
    ------
    DatabaseUnavailableError
        The URL is malformed, its driver is missing, or the SQLite directory cannot be made.
    """
    parsed = _parse_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    path = sqlite_file(parsed)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatabaseUnavailableError(
                f"cannot create the directory of database {mask_url(parsed)}: {e.strerror}") from e
    if parsed.get_backend_name() == "postgresql":
        kw.setdefault("pool_pre_ping", True)
        kw.setdefault("connect_args", {}).setdefault("connect_timeout", 10)
    try:
        engine = sa.create_engine(parsed, **kw)
    except (NoSuchModuleError, ImportError) as e:
        raise DatabaseUnavailableError(f"no driver for database {mask_url(parsed)}: {e}") from e
    if is_sqlite:
        _install_sqlite_hooks(engine)
    return engine


def unreachable(url: str | URL, exc: BaseException) -> DatabaseUnavailableError:
    """A one-line error for a database that cannot be reached (password masked)."""
    orig = getattr(exc, "orig", None) or exc
    reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return DatabaseUnavailableError(f"cannot reach database {mask_url(url)}: {reason}")


class Database:
    """An engine and its session factory; make one per process with :func:`open_database`.

    Parameters
    ----------
    engine
        The process's engine.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        """The URL with the password masked (safe to log)."""
        return mask_url(self.engine.url)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session that commits when the block ends normally and rolls back on an exception.

        ``write=True`` takes SQLite's write lock at once (``BEGIN IMMEDIATE``): a session that
        reads and then writes would otherwise fail with "database is locked" when another
        writer committed in between (SQLite cannot upgrade a read transaction). Concurrent
        writers then wait up to the busy timeout instead. No effect on PostgreSQL.
        """
        with self._sessions() as s:
            if write:
                s.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def raw_session(self) -> Session:
        """A session the caller commits and closes itself."""
        return self._sessions()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"
