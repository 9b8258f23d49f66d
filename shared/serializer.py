"""A job as clients see it. One function names its fields, for the API's answers (the fields of
`JobOut`, api/schemas.py, which the tests check it against) and for the job in a webhook's body
(a part of the same fields), so the two cannot drift apart."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.cost import megapixel_steps
from shared.models import Job, JobStatus, shown_progress


@dataclass(frozen=True)
class Throughput:
    """The workers' measured speed: mean megapixel-steps per second, and over how many."""

    rate: float | None
    workers: int


NO_THROUGHPUT = Throughput(None, 0)

# The fields of the job a webhook carries (with its `url`): what a receiver acts on.
WEBHOOK_FIELDS = ("id", "status", "attempt", "progress", "error")


def job_url(job_id: uuid.UUID) -> str:
    """The job's URL in the API (its Location)."""
    return f"/v1/jobs/{job_id}"


def job_json(
    job: Job, throughput: Throughput = NO_THROUGHPUT, standing: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The public representation of a job (JobOut); its estimate at `throughput`, and while it
    is queued where it stands (`standing`, shared/standing.py)."""
    return {
        **_fields(job),
        "estimate": render_estimate(job, throughput),
        "queue": standing if job.status == JobStatus.QUEUED else None,
    }


def webhook_job_json(job: Job) -> dict[str, Any]:
    """The job in a webhook event's body: some of job_json's fields, and its URL."""
    shown = _fields(job)
    return {
        **{name: shown[name] for name in WEBHOOK_FIELDS},
        "url": job_url(job.id),
        "result_url": shown["result_url"],
    }


def _fields(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "status": job.status.value,
        "progress": shown_progress(job),
        "params": job.params,
        "input": {"width": job.input_width, "height": job.input_height},
        "attempt": job.attempt,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "error": job.error,
        "webhook": {"url": job.webhook_url, "events": job.webhook_events}
        if job.webhook_url
        else None,
        "result_url": f"{job_url(job.id)}/result"
        if job.status == JobStatus.SUCCEEDED and job.expired_at is None
        else None,
        "preview_url": f"{job_url(job.id)}/preview",
        "expired": job.expired_at is not None,
        "recipe": job.recipe,
        "kind": job.kind or "image",
        "frames": job.frames,
    }


def render_estimate(job: Job, throughput: Throughput) -> dict[str, Any]:
    """How long the job's render should take at the workers' measured speed, or why unknown."""
    work = job_work(job)
    if throughput.rate is None:
        return {
            "render_seconds": None,
            "megapixel_steps": round(work, 3),
            "basis": "no estimate yet: no worker has finished a job in the last hour",
        }
    return {
        "render_seconds": round(work / throughput.rate, 1),
        "megapixel_steps": round(work, 3),
        "basis": f"at {throughput.rate:.3g} megapixel-steps per second, the mean speed of "
        f"{throughput.workers} worker(s) over the last hour",
    }


def job_work(job: Job) -> float:
    """The job's work in megapixel-steps, every frame counted: its stored column, or for a
    job not yet stored (POST /v1/estimates) what the column will hold (shared/models.py)."""
    if job.work is not None:
        return job.work
    # The cost measure of ONEIRO_MAX_WORK and of the throughput metric, in megapixels.
    return megapixel_steps(job.input_width, job.input_height, job.params, job.frames)


def iso(moment: datetime | None) -> str | None:
    """An ISO 8601 UTC time ending in Z (the database's columns read aware, shared/models.py)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
