"""The fair queue: tenants' weights, jobs' priority and start deadline, the expired status.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("queued", "running", "succeeded", "failed", "canceled")
AFTER = (*BEFORE, "expired")
BACKLOG = sa.text("status = 'queued' AND enqueued_at IS NULL")


def _status_check(batch: object, statuses: tuple[str, ...]) -> None:
    batch.drop_constraint(op.f("ck_jobs_job_status"), type_="check")  # type: ignore[attr-defined]
    batch.create_check_constraint(  # type: ignore[attr-defined]
        "job_status", sa.column("status").in_(statuses)
    )


def upgrade() -> None:
    op.add_column("tenants", sa.Column("weight", sa.Float(), nullable=False, server_default="1"))
    # SQLite cannot change a CHECK in place: batch mode copies the table.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("start_by", sa.DateTime(timezone=True), nullable=True))
        _status_check(batch, AFTER)
        batch.create_index("ix_jobs_status_enqueued", ["status", "enqueued_at"])
        batch.create_index("ix_jobs_start_by", ["start_by"])
        batch.create_index(
            "ix_jobs_backlog",
            ["tenant_id", "priority", "created_at", "id"],
            postgresql_where=BACKLOG,
            sqlite_where=BACKLOG,
        )


def downgrade() -> None:
    # An expired job was a queued one that never ran: canceled is the nearest older status.
    op.execute("UPDATE jobs SET status = 'canceled' WHERE status = 'expired'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_backlog")
        batch.drop_index("ix_jobs_start_by")
        batch.drop_index("ix_jobs_status_enqueued")
        _status_check(batch, BEFORE)
        batch.drop_column("start_by")
        batch.drop_column("priority")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("weight")
