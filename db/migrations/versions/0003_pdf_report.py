"""The report PDF (Encapsulated PDF) is a produced object kind.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BEFORE = ("sr", "seg", "kos", "key_image")
_AFTER = (*_BEFORE, "pdf")


def _retype(new: tuple[str, ...]) -> None:
    """Replace the CHECK on ``produced_objects.kind`` by one that allows ``new``."""
    bind = op.get_bind()
    # The CHECK that lists the kinds, under whatever name the first revision gave it (SQLite's
    # table copy in batch mode rebuilds the table without it).
    names = [] if bind.dialect.name == "sqlite" else [
        c["name"] for c in sa.inspect(bind).get_check_constraints("produced_objects")
        if "key_image" in c["sqltext"]]
    with op.batch_alter_table("produced_objects") as batch:
        for name in names:
            batch.drop_constraint(op.f(name), type_="check")
        batch.create_check_constraint(
            "object_kind", sa.column("kind").in_(new))


def upgrade() -> None:
    _retype(_AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM produced_objects WHERE kind = 'pdf'")
    _retype(_BEFORE)
