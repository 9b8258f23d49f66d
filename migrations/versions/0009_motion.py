"""Jobs have a kind (image, animation, video) and, for the frame kinds, a frame count.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        # Every job before this one is a still.
        batch.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="image")
        )
        batch.add_column(sa.Column("frames", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("frames")
        batch.drop_column("kind")
