"""Exceptions of the :mod:`db` package.

Each message is one user-facing line; the exit status each maps to is chosen by the
plugin layer (``amagi_plugin.errors.exit_code_for``), so :mod:`db` never imports it.
"""

from __future__ import annotations


class DbError(Exception):
    """Base of the case store's errors; the message is one user-facing line."""


class DatabaseUnavailableError(DbError):
    """The database URL cannot be reached or opened (the message names it, password masked)."""


class DatabaseURLError(DatabaseUnavailableError):
    """The database URL cannot be parsed (a configuration mistake, not an outage)."""


class DatabaseMissingError(DatabaseUnavailableError):
    """A read-only command found no SQLite file: nothing has been stored there yet."""


class SchemaError(DbError):
    """The schema is missing, older than the code, or newer than the code."""


class NotFoundError(DbError):
    """A case, job or object that was asked for does not exist."""


class AmbiguousCaseError(DbError):
    """A study UID that names several cases was given where one case is needed."""


class LeaseLostError(DbError):
    """A worker touched a job it no longer holds (lease expired and reclaimed, or finished)."""


class JobStateError(DbError):
    """An operation asked of a job in a state that does not allow it (requeue a done job)."""

