"""Storage Commitment Transaction UID per delivery, to match reports that arrive later on
a new association.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("commitment_transaction_uid", sa.String(length=64),
                                   nullable=True))
        batch.create_index(op.f("ix_deliveries_commitment_transaction_uid"),
                           ["commitment_transaction_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index(op.f("ix_deliveries_commitment_transaction_uid"))
        batch.drop_column("commitment_transaction_uid")
