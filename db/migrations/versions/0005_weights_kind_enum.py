"""``analysis_runs.weights_kind`` is a :class:`dicom_io.results.WeightsKind` value, checked.

The service always wrote ``demo-synthetic``, ``authors`` or ``user``; the first schema's
comment (and older test data) said ``demo``/``checkpoint``. Stored legacy values are mapped:
``demo`` → ``demo-synthetic``, anything else outside the vocabulary (``checkpoint``: a
checkpoint of unknown origin) → ``user``. The column becomes ``VARCHAR(16)`` with a CHECK on
the three values, as the model's enum column declares.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_KINDS = ("authors", "demo-synthetic", "user")  # WeightsKind, frozen as of this revision


def upgrade() -> None:
    op.execute("UPDATE analysis_runs SET weights_kind = 'demo-synthetic' "
               "WHERE weights_kind = 'demo'")
    op.execute("UPDATE analysis_runs SET weights_kind = 'user' "
               "WHERE weights_kind NOT IN ('authors', 'demo-synthetic', 'user')")
    with op.batch_alter_table("analysis_runs") as batch:
        batch.alter_column("weights_kind", existing_type=sa.String(length=32),
                           type_=sa.String(length=16), existing_nullable=False)
        batch.create_check_constraint("weights_kind", sa.column("weights_kind").in_(_KINDS))


def downgrade() -> None:
    bind = op.get_bind()
    # SQLite's table copy in batch mode rebuilds the table without the CHECK (see 0003).
    names = [] if bind.dialect.name == "sqlite" else [
        c["name"] for c in sa.inspect(bind).get_check_constraints("analysis_runs")
        if "demo-synthetic" in c["sqltext"]]
    with op.batch_alter_table("analysis_runs") as batch:
        for name in names:
            batch.drop_constraint(op.f(name), type_="check")
        batch.alter_column("weights_kind", existing_type=sa.String(length=16),
                           type_=sa.String(length=32), existing_nullable=False)
