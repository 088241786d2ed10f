"""Alembic revisions of the case store (driven by :mod:`db.migrate`, no ``alembic.ini``)."""
