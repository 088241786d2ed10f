"""An event-free case has no mean or longest event duration: ``NULL``, not 0 s.

The case index of a case without bleeding events leaves the mean and the longest duration
undefined (``None`` in :class:`dicom_io.results.CaseIndex`, no measurement in the SR); the
first schema stored 0 for both. Stored 0s of event-free cases become ``NULL``.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = ("mean_duration_s", "max_duration_s")


def upgrade() -> None:
    with op.batch_alter_table("case_indices") as batch:
        for name in _COLUMNS:
            batch.alter_column(name, existing_type=sa.Double(), nullable=True)
    op.execute("UPDATE case_indices SET mean_duration_s = NULL, max_duration_s = NULL "
               "WHERE event_count = 0")


def downgrade() -> None:
    op.execute("UPDATE case_indices SET mean_duration_s = 0, max_duration_s = 0 "
               "WHERE event_count = 0")
    with op.batch_alter_table("case_indices") as batch:
        for name in _COLUMNS:
            batch.alter_column(name, existing_type=sa.Double(), nullable=False)
