"""Opening the case store: the one place that connects, creates and migrates.

It sits above :mod:`db.engine` (connections) and :mod:`db.migrate` (Alembic), which import
neither this module nor each other's callers.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from db import migrate
from db.engine import Database, create_engine, mask_url, sqlite_file, unreachable
from db.errors import DatabaseMissingError, SchemaError

log = logging.getLogger(__name__)


def open_database(url: str | URL, *, upgrade: bool = True, create: bool = True,
                  read_only: bool = False) -> Database:
    """Open the case store at ``url``, creating or upgrading its schema to the head revision.

    Parameters
    ----------
    url
        SQLAlchemy URL: ``sqlite:///PATH`` (the parent directory is created) or
        ``postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME``.
    upgrade
        Apply pending Alembic migrations (default). ``False`` only checks that the database
        answers (``amagi db current`` uses it).
    create
        ``False``: a SQLite file that does not exist is an error instead of a new, empty
        database.
    read_only
        For commands that only read or requeue (``amagi status``, ``cases``, ``jobs``):
        implies ``create=False`` and ``upgrade=False``, and a schema other than the head
        revision is a :class:`~db.errors.SchemaError` that says how to migrate, rather than
        a migration run behind the user's back.

    Raises
    ------
    DatabaseUnavailableError
        The database cannot be reached; the one-line message names the URL without password.
    DatabaseMissingError
        ``create=False`` and the SQLite file does not exist.
    SchemaError
        ``read_only`` and the schema is not at this code's head revision.
    """
    if read_only:
        create = upgrade = False
    path = sqlite_file(url)
    if not create and path is not None and not path.exists():
        raise DatabaseMissingError(
            f"no database at {mask_url(url)}: nothing received yet, or another "
            "storage.var_dir / database.url")
    engine = create_engine(url)
    try:
        if upgrade:
            migrate.upgrade(engine)
        else:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            if read_only:
                current, head = migrate.status(engine)
                if current != head:
                    raise SchemaError(
                        f"database {mask_url(engine.url)} is at schema revision "
                        f"{current or '(none)'}, this code needs {head}: run 'amagi db "
                        "upgrade' (or start 'amagi serve', which migrates)")
    except OperationalError as e:
        engine.dispose()
        raise unreachable(engine.url, e) from e
    except SchemaError:
        engine.dispose()
        raise
    log.info("database %s opened", mask_url(engine.url))
    return Database(engine)
