"""The case store: schema, migrations, the durable job queue and the ``amagi cases`` queries.

Entry point: :func:`open_database` (one per process) returns a :class:`Database`; everything
else is a function taking a :class:`~sqlalchemy.orm.Session` from ``Database.session()``:
:mod:`db.queue`, :mod:`db.records`, :mod:`db.deliveries`, :mod:`db.queries`; migrations in
:mod:`db.migrate`. This package imports neither torch nor pynetdicom.
"""

from __future__ import annotations

from db.engine import Database, mask_url
from db.errors import (
    AmbiguousCaseError,
    DatabaseUnavailableError,
    DbError,
    JobStateError,
    LeaseLostError,
    NotFoundError,
    SchemaError,
)
from db.schema import DeliveryState, JobState, ObjectKind
from db.store import open_database

__all__ = [
    "AmbiguousCaseError",
    "Database",
    "DatabaseUnavailableError",
    "DbError",
    "DeliveryState",
    "JobState",
    "JobStateError",
    "LeaseLostError",
    "NotFoundError",
    "ObjectKind",
    "SchemaError",
    "mask_url",
    "open_database",
]
