"""Storage Commitment outcome per delivery.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("commitment", sa.String(length=256), nullable=True))
        batch.add_column(sa.Column("commitment_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("commitment_at")
        batch.drop_column("commitment")
