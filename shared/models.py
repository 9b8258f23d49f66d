"""The job record: the single source of truth about a render (invariant 1 of
docs/internals/architecture.md)."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints let Alembic create and drop them the same way on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A moment, always timezone-aware in UTC when read, on every database.

    PostgreSQL keeps the zone (and answers in the connection's); SQLite keeps none and hands
    back naive datetimes. Converted here, once, so no reader has to guess. A naive datetime
    written is taken to be UTC, which is what Oneiro stores.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return _in_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return _in_utc(value)


def _in_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _stored_work(context: DefaultExecutionContext) -> float:
    """A new row's work in megapixel-steps, every frame counted (shared/cost.py): computed on
    every insert, so no writer of a job row can leave it out or count it otherwise."""
    from shared.cost import megapixel_steps  # cost imports params; models stays at the root

    row = context.get_current_parameters()  # type: ignore[no-untyped-call]  # SQLAlchemy's own
    return megapixel_steps(
        row["input_width"], row["input_height"], row["params"], row.get("frames")
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    # Not started by its params.start_by: no worker took it in time (shared/dispatch.py).
    EXPIRED = "expired"

    def is_terminal(self) -> bool:
        """Whether the job can no longer change state by itself."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED})


class Tenant(Base):
    """A customer of the service: owns API keys and jobs, and signs its webhooks."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # HMAC-SHA256 key of the tenant's webhook signatures; shown once, when the tenant is made.
    webhook_secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The tenant's share of the farm: the dispatcher weighs its running jobs by 1 / weight, so
    # a tenant of weight 2 gets twice the workers of one of weight 1 when both wait.
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")


class ApiKey(Base):
    """A bearer key of a tenant. Only its SHA-256 is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    # The key's first characters, so an operator can tell keys apart without the secret.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # A tenant's jobs newest first (the list), and its active jobs (the cap, status filter).
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_tenant_status", "tenant_id", "status"),
        # The backlog and the dispatched jobs (shared/dispatch.py): queued rows by enqueued_at,
        # and the jobs with a start deadline (most have none, so the sweep reads few rows).
        Index("ix_jobs_status_enqueued", "status", "enqueued_at"),
        Index("ix_jobs_start_by", "start_by"),
        # Each tenant's backlog in its own order: the dispatcher reads a few jobs of each
        # tenant from it instead of sorting the whole backlog (shared/dispatch.py `choose`).
        Index(
            "ix_jobs_backlog",
            "tenant_id",
            "priority",
            "created_at",
            "id",
            # A queued job's standing sums the work of each tenant's first jobs from it.
            postgresql_include=["work"],
            postgresql_where=text("status = 'queued' AND enqueued_at IS NULL"),
            sqlite_where=text("status = 'queued' AND enqueued_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # Jobs made before tenants existed have none and are seen by no tenant.
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("tenants.id", ondelete="CASCADE")
    )
    status: Mapped[JobStatus] = mapped_column(
        Enum(
            JobStatus,
            name="job_status",
            native_enum=False,
            length=16,
            values_callable=lambda statuses: [s.value for s in statuses],
            create_constraint=True,
        ),
        default=JobStatus.QUEUED,
        index=True,
    )
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_key: Mapped[str] = mapped_column(String(255))
    input_width: Mapped[int] = mapped_column(Integer)
    input_height: Mapped[int] = mapped_column(Integer)
    result_key: Mapped[str | None] = mapped_column(String(255))
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # Counts claims: 1 on the first run. Writes after the claim are fenced on it, so a worker
    # that lost its job cannot overwrite a newer attempt.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the dispatcher last handed the render message to Redis (shared/dispatch.py); None
    # while the queued job waits in the backlog. The relay puts back what Redis lost.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The engine's latest saved state, so a job put back after its worker died resumes there.
    checkpoint_key: Mapped[str | None] = mapped_column(String(255))
    # Where and for which events the job's webhooks go (None: no webhooks).
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)
    # When retention deleted the job's files; the row stays as the record of the job.
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The job's guide image and mask, stored beside its input (None: the job has none).
    guide_key: Mapped[str | None] = mapped_column(String(255))
    mask_key: Mapped[str | None] = mapped_column(String(255))
    # What made the result, as its file carries it (shared/recipes.py); set with the result.
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The recipe this job was asked to render again (the `recipe` part: its JSON, or the
    # source job's, with "job" its id); the worker checks its result against it.
    rerun_of: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # `image` (a still), `animation` (a zoom from one image) or `video` (JOB_KINDS); the frame
    # kinds know their frame count when submitted, so cost and progress count every frame.
    kind: Mapped[str] = mapped_column(String(16), default="image", server_default="image")
    frames: Mapped[int | None] = mapped_column(Integer)
    # params.priority as the rank the dispatcher sorts on (shared/params.py PRIORITIES: lower
    # first), and params.start_by as a moment it can compare in SQL; copies made at submit.
    priority: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    start_by: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The job's work in megapixel-steps (every octave's pixels x steps x passes, x frames),
    # fixed at submit: the estimates, the queue's standing and wait, and the autoscaling
    # signal sum this column instead of costing every queued job's params again.
    work: Mapped[float] = mapped_column(Float, default=_stored_work, server_default="0")


JOB_KINDS = ("image", "animation", "video")
# The kinds rendered frame by frame into a video (worker/frames.py).
FRAME_KINDS = ("animation", "video")


# How long an Idempotency-Key holds: the same key and request within it get the same job.
IDEMPOTENCY_WINDOW = timedelta(hours=24)


class IdempotencyKey(Base):
    """A client's Idempotency-Key: the same key and request within the window get the same job."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Upload(Base):
    """A resumable (tus) upload of a tenant: its bytes go to storage as they arrive; once
    complete, a job may take it as its input, and then it is the job's (its retention)."""

    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    # Upload-Length, and the bytes stored so far (Upload-Offset): the row says how far it got.
    length: Mapped[int] = mapped_column(BigInteger)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    # Upload-Metadata, decoded (filename, filetype ...), as the client sent it.
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Where the whole upload is stored once complete (shared/storage.py upload_key).
    key: Mapped[str] = mapped_column(String(255))
    # S3: the multipart upload, its parts so far ({"PartNumber", "ETag"}) and the bytes past
    # them held in a small object until a part's worth has arrived (S3 parts are >= 5 MiB).
    multipart_id: Mapped[str | None] = mapped_column(String(1024))
    parts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    tail_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # Set while a PATCH writes (one writer at a time); a writer that died holds it no longer.
    busy_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The job whose input it became: from then on it is the job's, and expires with it.
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )


def shown_progress(job: Job) -> dict[str, Any]:
    """The job's progress as clients see it. Octaves count from 1, so a job not yet started
    reads octave 1, step 0. Once the job has ended its progress is final: complete on success,
    with no ETA on any other end (the row keeps the last throttled report until then)."""
    progress: dict[str, Any] = {
        "fraction": 0.0,
        "octave": 1,
        "octaves": job.params.get("octaves"),
        "step": 0,
        "steps": job.params.get("steps"),
        "tiles_done": 0,
        "tiles": None,
        "eta_seconds": None,
        **(job.progress or {}),
    }
    if job.frames is not None:
        progress.setdefault("frame", 0)
        progress.setdefault("frames", job.frames)
    if job.status == JobStatus.SUCCEEDED:
        progress.update(
            fraction=1.0, octave=progress["octaves"], step=progress["steps"], eta_seconds=0.0
        )
        if job.frames is not None:
            progress["frame"] = job.frames
        if progress["tiles"] is not None:
            progress["tiles_done"] = progress["tiles"]
    elif job.status.is_terminal():
        progress["eta_seconds"] = None
    return progress
