"""Each job's work (megapixel-steps, every frame counted) in a column, for one indexed standing.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BACKLOG = sa.text("status = 'queued' AND enqueued_at IS NULL")
BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("work", sa.Float(), nullable=False, server_default="0"))
    _fill_work()
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_backlog")
        batch.create_index(
            "ix_jobs_backlog",
            ["tenant_id", "priority", "created_at", "id"],
            postgresql_include=["work"],
            postgresql_where=BACKLOG,
            sqlite_where=BACKLOG,
        )


def _fill_work() -> None:
    """Every existing job's work, from the one cost function (as a new row's is)."""
    from shared.cost import megapixel_steps

    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Uuid()),
        sa.column("input_width", sa.Integer()),
        sa.column("input_height", sa.Integer()),
        sa.column("params", sa.JSON()),
        sa.column("frames", sa.Integer()),
        sa.column("work", sa.Float()),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(jobs.c.id, jobs.c.input_width, jobs.c.input_height, jobs.c.params, jobs.c.frames)
    ).all()
    update = (
        sa.update(jobs).where(jobs.c.id == sa.bindparam("job_id")).values(work=sa.bindparam("w"))
    )
    for at in range(0, len(rows), BATCH):
        connection.execute(
            update,
            [
                {"job_id": job_id, "w": megapixel_steps(width, height, params, frames)}
                for job_id, width, height, params, frames in rows[at : at + BATCH]
            ],
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_backlog")
        batch.create_index(
            "ix_jobs_backlog",
            ["tenant_id", "priority", "created_at", "id"],
            postgresql_where=BACKLOG,
            sqlite_where=BACKLOG,
        )
        batch.drop_column("work")
