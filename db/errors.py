"""Exceptions of the :mod:`db` package.

Each carries an ``exit_code`` (an ``int`` matching ``amagi_plugin.errors.ExitCode``) so the CLI
can turn it into one line and a status without :mod:`db` importing the plugin layer.
"""

from __future__ import annotations


class DbError(Exception):
    """Base of the case store's errors; the message is one user-facing line."""

    exit_code: int = 1


class DatabaseUnavailableError(DbError):
    """The database URL cannot be reached or opened (the message names it, password masked)."""

    exit_code = 1


class SchemaError(DbError):
    """The schema is missing, older than the code, or newer than the code."""

    exit_code = 1


class NotFoundError(DbError):
    """A case, job or object that was asked for does not exist."""

    exit_code = 3


class AmbiguousCaseError(DbError):
    """A study UID that names several cases was given where one case is needed."""

    exit_code = 3


class LeaseLostError(DbError):
    """A worker touched a job it no longer holds (lease expired and reclaimed, or finished)."""

    exit_code = 1


class JobStateError(DbError):
    """An operation asked of a job in a state that does not allow it (requeue a done job)."""

    exit_code = 3
