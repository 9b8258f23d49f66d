"""The /v1/jobs routes: submit, list, status, events, result, preview, cancel, retry.

What a submission holds is read in api/submission.py and recorded (files, row, commit) by
api/intake.py, its Idempotency-Key in api/idempotency.py; every change of a job's state is a
function of shared/transitions.py; a job is shown by shared/serializer.py."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import redis
from flask import Blueprint, Response, request
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as BaseResponse

from api.auth import require_key, tenant_id
from api.db import get_db, services
from api.downloads import ANSWERS, HEADERS, send_stored
from api.idempotency import fingerprint, original_job
from api.intake import KeyTaken, record_job
from api.openapi import BEARER, BINARY, job_responses, spec
from api.problems import Problem
from api.schemas import JobListQuery, JobOut, JobPage, JobSubmission, SubmitHeaders, encode_cursor
from api.streams import event_stream
from api.submission import check_active_cap, read_submission
from api.throughput import measured_throughput
from shared import transitions
from shared.changes import publish_change
from shared.dispatch import announced_slots, safely_dispatch
from shared.formats import ANIMATED_FORMATS, MP4, OUTPUT_FORMATS, result_format
from shared.models import Job, JobStatus
from shared.serializer import iso, job_json, job_url
from shared.standing import queue_standings
from shared.storage import (
    ObjectNotFound,
    StoredObject,
    legacy_keys,
    preview_key,
)
from shared.webhooks import send_event

log = logging.getLogger(__name__)

blueprint = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
blueprint.before_request(require_key)

Answer = tuple[dict[str, Any], int, dict[str, str]]


@blueprint.post("")
@spec.validate(
    form=JobSubmission,
    headers=SubmitHeaders,
    resp=job_responses(
        HTTP_200=(JobOut, "The same Idempotency-Key and request were seen: the original job."),
        HTTP_202=(JobOut, "Recorded and queued."),
        errors=(409, 413, 415, 422),
        headers={200: ["Location"], 202: ["Location"]},
    ),
    security=BEARER,
    # The handler reads the parts itself, with RenderParams and WebhookSpec (see JobSubmission).
    skip_validation=True,
)
def submit_job() -> Answer:
    """Store the image, record the job, commit, then enqueue it."""
    svc = services()
    submission = read_submission(svc.settings)
    idempotency = fingerprint(submission)
    if idempotency is not None:
        original = _replay(*idempotency)
        if original is not None:
            return original

    session = get_db()
    try:
        job = record_job(svc, session, submission, tenant_id(), idempotency)
    except KeyTaken:
        # Another request with the same key won the race; answer as its replay.
        original = _replay(*idempotency) if idempotency is not None else None
        if original is None:
            raise
        return original
    # The job waits in the backlog; the dispatcher sends it now if a slot is free and its turn
    # has come (shared/dispatch.py).
    safely_dispatch(session, svc.celery, svc.settings)
    return _answer(job, 202)


def _replay(key: str, request_hash: str) -> Answer | None:
    """The original answer to a repeated key, or None when the key is new (or expired)."""
    job_id = original_job(get_db(), tenant_id(), key, request_hash)
    return None if job_id is None else _answer(_find(job_id), 200)


def _answer(job: Job, status: int) -> Answer:
    return _shown(job), status, {"Location": job_url(job.id)}


def _shown(job: Job) -> dict[str, Any]:
    """The job's JSON, with where it stands if it is queued."""
    return _shown_all([job])[0]


def _shown_all(jobs: list[Job]) -> list[dict[str, Any]]:
    """The jobs' JSON: their estimates at the measured speed, and the queued ones' standing
    (one read of the queue for them all)."""
    throughput = measured_throughput()
    queued = [job.id for job in jobs if job.status == JobStatus.QUEUED]
    standings = {}
    if queued:
        try:
            slots = announced_slots(services().settings)
        except redis.RedisError:
            slots = 0  # no estimate of when, but the position stands
        standings = queue_standings(get_db(), queued, throughput.rate, slots)
    return [job_json(job, throughput, standings.get(job.id)) for job in jobs]


@blueprint.get("")
@spec.validate(
    query=JobListQuery, resp=job_responses(HTTP_200=JobPage, errors=(422,)), security=BEARER
)
def list_jobs(query: JobListQuery) -> dict[str, Any]:
    """Jobs, newest first, optionally of one status, a page at a time (`cursor`)."""
    status, limit, after = query.status, query.limit, query.cursor
    statement = (
        select(Job)
        .where(Job.tenant_id == tenant_id())
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit + 1)
    )
    if status is not None:
        statement = statement.where(Job.status == status)
    if after is not None:
        statement = statement.where(tuple_(Job.created_at, Job.id) < after)
    jobs = list(get_db().scalars(statement))
    page, more = jobs[:limit], len(jobs) > limit
    return {
        "jobs": _shown_all(page),
        "next_cursor": encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    }


@blueprint.get("/<uuid:job_id>")
@spec.validate(resp=job_responses(HTTP_200=JobOut, errors=(404,)), security=BEARER)
def get_job(job_id: uuid.UUID) -> dict[str, Any]:
    """The job's status, progress and resolved params."""
    return _shown(_find(job_id))


@blueprint.get("/<uuid:job_id>/events")
@spec.validate(
    resp=job_responses(
        HTTP_200=(None, "An event stream: `event` is the status, `data` the job as JSON."),
        media={200: {"text/event-stream": {"schema": {"type": "string"}}}},
        errors=(404,),
    ),
    security=BEARER,
)
def job_events(job_id: uuid.UUID) -> Response:
    """Server-Sent Events: the job as JSON each time its status or progress changes, until it
    ends. An event's id names the state it carries; a client reconnecting with Last-Event-ID
    gets the next change, not the state it already has.

    A stream reads the job when a change is published (shared/changes.py), and otherwise
    only every events_reread_seconds; it ends when its key is revoked (checked every
    events_key_recheck_seconds)."""
    _find(job_id)
    return Response(
        event_stream(job_id, request.headers.get("Last-Event-ID")),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@blueprint.get("/<uuid:job_id>/result")
@spec.validate(
    resp=job_responses(
        HTTP_200=(
            None,
            "The rendered image, in the job's params.output_format; an animation or video "
            "job's MP4, or the animated gif or webp an animation asked for.",
        ),
        **ANSWERS,
        media={
            code: {
                f.media_type: BINARY
                for f in (*OUTPUT_FORMATS.values(), *ANIMATED_FORMATS.values(), MP4)
            }
            for code in (200, 206)
        },
        headers=HEADERS,
        errors=(404, 409, 410, 416),
    ),
    security=BEARER,
)
def get_result(job_id: uuid.UUID) -> BaseResponse:
    """The rendered image, once the job has succeeded: PNG unless params.output_format asked
    for another format; an animation or video job's MP4 (H.264), or the animated GIF or WebP
    an animation asked for."""
    job = _find(job_id)
    _check_not_expired(job)
    if job.status != JobStatus.SUCCEEDED or job.result_key is None:
        detail = f"job {job_id} is {job.status.value}; its result exists once it has succeeded"
        if job.status == JobStatus.FAILED:
            detail += f" (it failed: {job.error})"
        raise Problem(409, "Result not ready", detail, job_status=job.status.value)
    fmt = result_format(job.kind, job.params.get("output_format"))
    return send_stored(
        job.result_key,
        services().storage.open(job.result_key),
        fmt.media_type,
        f'inline; filename="{job_id}.{fmt.extension}"',
    )


@blueprint.get("/<uuid:job_id>/preview")
@spec.validate(
    resp=job_responses(
        HTTP_200=(None, "A small JPEG of the render so far, or of the result."),
        **ANSWERS,
        media={200: {"image/jpeg": BINARY}, 206: {"image/jpeg": BINARY}},
        headers=HEADERS,
        errors=(404, 409, 410, 416),
    ),
    security=BEARER,
)
def get_preview(job_id: uuid.UUID) -> BaseResponse:
    """A small JPEG of the render in progress (rewritten every few seconds by the worker), or of
    the result once the job has succeeded."""
    job = _find(job_id)
    _check_not_expired(job)
    found = _latest_preview(job)
    if found is None:
        detail = (
            f"job {job_id} ended ({job.status.value}) before its first step, so it has no preview"
            if job.status.is_terminal()
            else f"job {job_id} is {job.status.value} and has no preview yet; the worker "
            "writes one after the first step of its render"
        )
        raise Problem(409, "Preview not ready", detail, job_status=job.status.value)
    return send_stored(*found, "image/jpeg")


def _latest_preview(job: Job) -> tuple[str, StoredObject] | None:
    """The preview of the job's latest attempt; until a resumed attempt writes its first, the
    one before's; for a job stored before per-job folders, its preview under the old key."""
    keys = [preview_key(job.id, n) for n in (job.attempt, job.attempt - 1) if n > 0]
    for key in [*keys, legacy_keys(job.id).preview]:
        try:
            return key, services().storage.open(key)
        except ObjectNotFound:
            continue
    return None


def _check_not_expired(job: Job) -> None:
    if job.expired_at is not None:
        raise Problem(
            410,
            "Files expired",
            f"the files of job {job.id} were deleted on {iso(job.expired_at)} "
            "by the retention policy",
            job_status=job.status.value,
        )


@blueprint.post("/<uuid:job_id>/cancel")
@spec.validate(resp=job_responses(HTTP_200=JobOut, errors=(404, 409)), security=BEARER)
def cancel_job(job_id: uuid.UUID) -> dict[str, Any]:
    """Cancel a queued or running job; a running render stops within one tile batch."""
    job = _transition(job_id, "canceled", transitions.CANCELABLE, transitions.cancel)
    send_event(services().celery, get_db(), job_id, "completed")
    # A canceled job frees the slot it held (running or dispatched) for the next in turn.
    safely_dispatch(get_db(), services().celery, services().settings)
    return _shown(job)


@blueprint.post("/<uuid:job_id>/retry")
@spec.validate(
    resp=job_responses(HTTP_202=(JobOut, "Queued again."), errors=(404, 409, 410)), security=BEARER
)
def retry_job(job_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    """Run a failed, canceled or expired job again, as a new attempt of the same job."""
    _check_not_expired(_find(job_id))  # its input is gone
    check_active_cap(get_db(), tenant_id(), services().settings.max_active_jobs)
    _transition(job_id, "retried", transitions.RETRYABLE, transitions.retry)
    safely_dispatch(get_db(), services().celery, services().settings)
    return _shown(_find(job_id)), 202


def _transition(
    job_id: uuid.UUID,
    verb: str,
    allowed: tuple[JobStatus, ...],
    change: Callable[[Session, uuid.UUID], bool],
) -> Job:
    """Make one change of the job's state, commit and publish it; 409 if the job is in none of
    the `allowed` statuses."""
    _find(job_id)  # 404 first
    session = get_db()
    changed = change(session, job_id)
    session.commit()
    job = _find(job_id, fresh=True)
    if not changed:
        states = " or ".join(status.value for status in allowed)
        raise Problem(
            409,
            f"Job cannot be {verb}",
            f"job {job_id} is {job.status.value}; only {states} jobs can be {verb}",
            job_status=job.status.value,
        )
    publish_change(services().settings.redis_url, job_id)
    return job


def _find(job_id: uuid.UUID, fresh: bool = False) -> Job:
    """The calling tenant's job; another tenant's job is as unknown as one that never was."""
    job = get_db().get(Job, job_id, populate_existing=fresh)
    if job is None or job.tenant_id != tenant_id():
        raise Problem(404, "Job not found", f"there is no job {job_id}")
    return job
