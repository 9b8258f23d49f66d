"""The /v1/jobs routes: submit, status, result."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic_core
from flask import Blueprint, Flask, Response, current_app, g, request
from pydantic import ValidationError
from sqlalchemy import func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import Services
from api.auth import KeyCache, bearer_key, current_tenant, tenant_id
from api.metrics import megapixel_steps, worker_throughput
from api.openapi import BEARER, BINARY, job_responses, spec
from api.problems import Problem, invalid
from api.schemas import JobListQuery, JobOut, JobPage, JobSubmission, SubmitHeaders, encode_cursor
from shared.changes import ChangeFeed, publish_change
from shared.cost import CostRefused, check_limits
from shared.formats import OUTPUT_FORMATS, output_format
from shared.images import EXTENSIONS, ImageRejected, ImageTooLarge, inspect_image
from shared.models import (
    IDEMPOTENCY_WINDOW,
    IdempotencyKey,
    Job,
    JobStatus,
    shown_progress,
    utcnow,
)
from shared.params import RenderParams
from shared.queue import enqueue_render
from shared.recipes import RecipeRefused, recipe_params
from shared.storage import (
    ObjectNotFound,
    StoredObject,
    input_key,
    job_prefix,
    legacy_keys,
    preview_key,
)
from shared.webhooks import WebhookRefused, WebhookSpec, check_target, send_event
from shared.weights import NoWeights, require_weights

log = logging.getLogger(__name__)

blueprint = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

FORM_PARTS = {"image", "params", "webhook", "recipe"}


def services() -> Services:
    return current_app.extensions["oneiro"]  # type: ignore[no-any-return]


def db() -> Session:
    """This request's session, closed when the request ends."""
    if "db" not in g:
        g.db = services().sessions()
    return g.db  # type: ignore[no-any-return]


@blueprint.before_request
def _authenticate() -> None:
    current_tenant()


@blueprint.teardown_app_request
def _close_db(_exc: BaseException | None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


@blueprint.post("")
@spec.validate(
    form=JobSubmission,
    headers=SubmitHeaders,
    resp=job_responses(
        HTTP_200=(JobOut, "The same Idempotency-Key and request were seen: the original job."),
        HTTP_202=(JobOut, "Recorded and queued."),
        errors=(413, 415, 422),
        headers={200: ["Location"], 202: ["Location"]},
    ),
    security=BEARER,
    # The handler reads the parts itself, with RenderParams and WebhookSpec (see JobSubmission).
    skip_validation=True,
)
def submit_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Store the image, record the job, commit, then enqueue it."""
    svc = services()
    params, asked = _read_params()
    try:
        require_weights(svc.settings, params.model)
    except NoWeights as exc:  # accepted, it would fail on the worker: refuse it now
        raise invalid([{"field": "params.model", "message": str(exc)}]) from None
    upload = request.files.get("image")
    if upload is None:
        raise invalid(
            [{"field": "image", "message": "a multipart file part named 'image' is required"}]
        )
    data = upload.read()
    try:
        image_format, width, height = inspect_image(data, svc.settings.max_pixels)
    except ImageTooLarge as exc:
        raise Problem(413, "Image too large", str(exc), limit=svc.settings.max_pixels) from None
    except ImageRejected as exc:
        raise invalid([{"field": "image", "message": str(exc)}]) from None
    try:
        check_limits(width, height, params, svc.settings)
    except CostRefused as exc:
        raise invalid([{"field": exc.field, "message": str(exc)}]) from None

    webhook = _read_webhook()
    idempotency = _idempotency(data, asked, webhook)
    if idempotency is not None:
        original = _replay(*idempotency)
        if original is not None:
            return original

    job_id = uuid.uuid4()
    stored_input = input_key(job_id, EXTENSIONS[image_format])
    svc.storage.put(stored_input, data)
    job = Job(
        id=job_id,
        tenant_id=tenant_id(),
        status=JobStatus.QUEUED,
        params=params.model_dump(mode="json"),
        input_key=stored_input,
        input_width=width,
        input_height=height,
        progress={},
        webhook_url=str(webhook.url) if webhook else None,
        webhook_events=list(webhook.events) if webhook else None,
        enqueued_at=utcnow(),  # cleared by _enqueue if Redis does not take the message
    )
    session = db()
    try:
        # Counted last, just before the insert, so it sees as many committed jobs as it can.
        _check_active_cap()
        session.add(job)
        if idempotency is not None:
            session.flush()  # the job row first: the key refers to it
            session.add(
                IdempotencyKey(
                    tenant_id=tenant_id(),
                    key=idempotency[0],
                    request_hash=idempotency[1],
                    job_id=job_id,
                )
            )
        session.commit()
    except IntegrityError:
        # Another request with the same key won the race; answer as its replay.
        session.rollback()
        svc.storage.delete_prefix(job_prefix(job_id))
        original = _replay(*idempotency) if idempotency is not None else None
        if original is None:
            raise
        return original
    except Exception:
        session.rollback()
        svc.storage.delete_prefix(job_prefix(job_id))  # a refused request leaves nothing behind
        raise
    _enqueue(job)
    return job_json(job, measured_throughput()), 202, {"Location": f"/v1/jobs/{job_id}"}


def _idempotency(
    data: bytes, asked: dict[str, Any], webhook: WebhookSpec | None
) -> tuple[str, str] | None:
    """The request's Idempotency-Key and a fingerprint of what it asks for (image, params and
    webhook), if it has a key."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise invalid([{"field": "Idempotency-Key", "message": "must be 1 to 255 characters"}])
    digest = hashlib.sha256(data)
    digest.update(json.dumps(asked, sort_keys=True).encode())
    if webhook is not None:
        digest.update(webhook.model_dump_json().encode())
    return key, digest.hexdigest()


def _replay(key: str, request_hash: str) -> tuple[dict[str, Any], int, dict[str, str]] | None:
    """The original answer to a repeated key, or None when the key is new (or expired)."""
    session = db()
    seen = session.get(IdempotencyKey, (tenant_id(), key), populate_existing=True)
    if seen is None:
        return None
    created = seen.created_at if seen.created_at.tzinfo else seen.created_at.replace(tzinfo=UTC)
    if created < utcnow() - IDEMPOTENCY_WINDOW:
        session.delete(seen)
        session.commit()
        return None
    if seen.request_hash != request_hash:
        raise invalid(
            [
                {
                    "field": "Idempotency-Key",
                    "message": (
                        "this key was used within 24 hours for a different request; use a new key"
                    ),
                }
            ]
        )
    job = _find(seen.job_id)
    return job_json(job, measured_throughput()), 200, {"Location": f"/v1/jobs/{job.id}"}


def _check_active_cap() -> None:
    """429 when the tenant already has max_active_jobs queued or running.

    A soft cap: submits of one tenant that arrive at the same moment each count the jobs
    committed before them, so the cap can be passed by as many as are in flight together
    (at most the API's threads). Locking the tenant's row until commit would make it exact,
    and would also line up every submit of a busy tenant behind one lock: measured, that
    doubled submit latency at 100 per second (benchmarks/README.md).
    """
    limit = services().settings.max_active_jobs
    active = db().scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant_id(), Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
    )
    if active is not None and active >= limit:
        raise Problem(
            429,
            "Too many active jobs",
            f"this tenant has {active} jobs queued or running; the limit is {limit}: "
            "wait for some to finish or cancel some",
            headers={"Retry-After": "30"},
            limit=limit,
            value=active,
        )


def _read_webhook() -> WebhookSpec | None:
    """The optional 'webhook' part: {"url": ..., "events": [...]}, to a target we may call."""
    text = _form_text("webhook")
    if text is None:
        return None
    try:
        webhook = WebhookSpec.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise invalid(_field_errors("webhook", exc)) from None
    try:
        check_target(str(webhook.url), services().settings.webhook_allow_private)
    except WebhookRefused as exc:
        raise invalid([{"field": "webhook.url", "message": str(exc)}]) from None
    return webhook


def _form_text(name: str) -> str | None:
    """A form part sent as a field or as a file, as text; None when absent."""
    if name in request.files:
        return request.files[name].read().decode("utf-8", errors="replace")
    return request.form.get(name)


def _field_errors(part: str, exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join([part, *map(str, e["loc"])]), "message": e["msg"]} for e in exc.errors()
    ]


def _read_params() -> tuple[RenderParams, dict[str, Any]]:
    # A part with an empty name or none (werkzeug keys that one None) is unknown, not a 500.
    names = (set(request.form) | set(request.files)) - FORM_PARTS
    unknown = sorted({name or "(unnamed part)" for name in names})
    if not request.content_type or not request.content_type.startswith("multipart/form-data"):
        raise Problem(
            415,
            "Unsupported Media Type",
            "send the job as multipart/form-data with an 'image' file part and an "
            "optional 'params' JSON part",
        )
    if unknown:
        raise invalid(
            [
                {
                    "field": name,
                    "message": "unknown form part; expected 'image', 'params', 'webhook' "
                    "and 'recipe'",
                }
                for name in unknown
            ]
        )
    text = _form_text("params") or "{}"
    try:
        # pydantic's parser, which validates the part below: it refuses numbers past its range
        # and nesting past its depth with a ValueError, where json.loads raised RecursionError.
        raw = pydantic_core.from_json(text)
    except ValueError as exc:
        raise invalid([{"field": "params", "message": f"not valid JSON: {exc}"}]) from None
    if not isinstance(raw, dict):
        raise invalid([{"field": "params", "message": "must be a JSON object"}])
    recipe = _read_recipe()
    if recipe is not None:
        if "preset" in raw:
            raise invalid(
                [{"field": "recipe", "message": "give a recipe or a params.preset, not both"}]
            )
        # The recipe's params, overridden by the ones sent: the same look, on a new image.
        raw = {**recipe, **raw}
        text = json.dumps(raw)
    try:
        return RenderParams.model_validate_json(text, strict=True), raw
    except ValidationError as exc:
        raise invalid(_field_errors("params", exc)) from None


def _read_recipe() -> dict[str, Any] | None:
    """The params of the optional 'recipe' part: a job id of this tenant, or a recipe's JSON."""
    text = _form_text("recipe")
    if text is None:
        return None
    try:
        source = uuid.UUID(text.strip())
    except ValueError:
        source = None
    if source is not None:
        job = db().get(Job, source)
        if job is None or job.tenant_id != tenant_id():
            message = f"there is no job {source} of this tenant to take a recipe from"
            raise invalid([{"field": "recipe", "message": message}])
        return dict(job.params)
    try:
        return recipe_params(pydantic_core.from_json(text))
    except ValueError as exc:  # RecipeRefused, or not JSON at all
        message = str(exc) if isinstance(exc, RecipeRefused) else "neither a job id nor JSON"
        raise invalid([{"field": "recipe", "message": message}]) from None


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
    jobs = list(db().scalars(statement))
    page, more = jobs[:limit], len(jobs) > limit
    throughput = measured_throughput()
    return {
        "jobs": [job_json(job, throughput) for job in page],
        "next_cursor": encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    }


@blueprint.get("/<uuid:job_id>")
@spec.validate(resp=job_responses(HTTP_200=JobOut, errors=(404,)), security=BEARER)
def get_job(job_id: uuid.UUID) -> dict[str, Any]:
    """The job's status, progress and resolved params."""
    return job_json(_find(job_id), measured_throughput())


# How long a quiet stream waits before a comment line keeps proxies from closing it.
KEEPALIVE_S = 15.0


def change_feed() -> ChangeFeed:
    """This process's subscription to job changes, shared by all its event streams."""
    feed = current_app.extensions.get("oneiro-changes")
    if feed is None:
        feed = current_app.extensions.setdefault(
            "oneiro-changes", ChangeFeed(services().settings.redis_url)
        )
    return feed  # type: ignore[no-any-return]


def end_streams(app: Flask) -> None:
    """End every event stream of this process now (it is stopping); clients reconnect."""
    feed = app.extensions.get("oneiro-changes")
    if feed is not None:
        feed.close()


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
    last_seen = request.headers.get("Last-Event-ID")
    svc, key, caller, feed = services(), bearer_key(), tenant_id(), change_feed()
    throughput = measured_throughput()  # the stream outlives the request's context
    keys: KeyCache = current_app.extensions["oneiro-keys"]
    reread_s = svc.settings.events_reread_seconds
    recheck_s = svc.settings.events_key_recheck_seconds

    def read() -> dict[str, Any] | None:
        with svc.sessions() as session:
            job = session.get(Job, job_id)
            return None if job is None else job_json(job, throughput)

    def key_is_live() -> bool:
        # Through the API's key cache: a thousand streams of one key cost one read per
        # auth_cache_seconds, and a revoked key's streams end as soon as its requests fail.
        found = keys.caller(key, svc.sessions) if key else None
        return found is not None and found.id == caller

    def stream() -> Iterator[str]:
        nonlocal last_seen
        with feed.watch(job_id) as changed:
            # Spread over the interval, so that streams opened together do not all re-read
            # and re-check together.
            quiet_since = time.monotonic()
            key_checked = quiet_since - random.uniform(0, recheck_s)
            while True:
                changed.clear()  # before the read: a change committed after it wakes us
                state = read()
                read_at = time.monotonic()
                reread_at = read_at + reread_s * random.uniform(0.5, 1.0)
                if state is None:
                    return
                event_id = f"{state['status']}:{state['attempt']}:{state['progress']['fraction']}"
                if event_id != last_seen:
                    last_seen = event_id
                    quiet_since = read_at
                    yield f"id: {event_id}\nevent: {state['status']}\ndata: {json.dumps(state)}\n\n"
                if JobStatus(state["status"]).is_terminal():
                    return
                # Wait for a change; meanwhile keep the connection alive and the key checked.
                while True:
                    now = time.monotonic()
                    if now - key_checked >= recheck_s:
                        if not key_is_live():
                            return
                        key_checked = now
                    if now - quiet_since >= KEEPALIVE_S:
                        quiet_since = now
                        yield ": keep-alive\n\n"
                    if now >= reread_at:
                        break  # a notification may have been lost
                    wake = min(reread_at, quiet_since + KEEPALIVE_S, key_checked + recheck_s)
                    if changed.wait(max(0.0, wake - now)):
                        if feed.closed.is_set():
                            return
                        break

    return Response(
        stream(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@blueprint.get("/<uuid:job_id>/result")
@spec.validate(
    resp=job_responses(
        HTTP_200=(None, "The rendered image, in the job's params.output_format."),
        media={200: {f.media_type: BINARY for f in OUTPUT_FORMATS.values()}},
        errors=(404, 409, 410),
    ),
    security=BEARER,
)
def get_result(job_id: uuid.UUID) -> Response:
    """The rendered image, once the job has succeeded: PNG unless params.output_format asked
    for another format."""
    job = _find(job_id)
    _check_not_expired(job)
    if job.status != JobStatus.SUCCEEDED or job.result_key is None:
        detail = f"job {job_id} is {job.status.value}; its result exists once it has succeeded"
        if job.status == JobStatus.FAILED:
            detail += f" (it failed: {job.error})"
        raise Problem(409, "Result not ready", detail, job_status=job.status.value)
    fmt = output_format(job.params.get("output_format"))
    return _download(
        services().storage.open(job.result_key),
        fmt.media_type,
        {"Content-Disposition": f'inline; filename="{job_id}.{fmt.extension}"'},
    )


@blueprint.get("/<uuid:job_id>/preview")
@spec.validate(
    resp=job_responses(
        HTTP_200=(None, "A small JPEG of the render so far, or of the result."),
        media={200: {"image/jpeg": BINARY}},
        errors=(404, 409, 410),
    ),
    security=BEARER,
)
def get_preview(job_id: uuid.UUID) -> Response:
    """A small JPEG of the render in progress (rewritten every few seconds by the worker), or of
    the result once the job has succeeded."""
    job = _find(job_id)
    _check_not_expired(job)
    stored = _latest_preview(job)
    if stored is None:
        detail = (
            f"job {job_id} ended ({job.status.value}) before its first step, so it has no preview"
            if job.status.is_terminal()
            else f"job {job_id} is {job.status.value} and has no preview yet; the worker "
            "writes one after the first step of its render"
        )
        raise Problem(409, "Preview not ready", detail, job_status=job.status.value)
    return _download(stored, "image/jpeg", {"Cache-Control": "no-store"})


def _download(stored: StoredObject, mimetype: str, headers: dict[str, str]) -> Response:
    """A stored object sent a chunk at a time: a large result or a stalled download holds one
    chunk in memory, not the whole file."""
    return Response(
        stored,
        mimetype=mimetype,
        headers={**headers, "Content-Length": str(stored.size)},
        direct_passthrough=True,
    )


def _latest_preview(job: Job) -> StoredObject | None:
    """The preview of the job's latest attempt; until a resumed attempt writes its first, the
    one before's; for a job stored before per-job folders, its preview under the old key."""
    keys = [preview_key(job.id, n) for n in (job.attempt, job.attempt - 1) if n > 0]
    for key in [*keys, legacy_keys(job.id)[1]]:
        try:
            return services().storage.open(key)
        except ObjectNotFound:
            continue
    return None


def _check_not_expired(job: Job) -> None:
    if job.expired_at is not None:
        raise Problem(
            410,
            "Files expired",
            f"the files of job {job.id} were deleted on {_iso(job.expired_at)} "
            "by the retention policy",
            job_status=job.status.value,
        )


@blueprint.post("/<uuid:job_id>/cancel")
@spec.validate(resp=job_responses(HTTP_200=JobOut, errors=(404, 409)), security=BEARER)
def cancel_job(job_id: uuid.UUID) -> dict[str, Any]:
    """Cancel a queued or running job; a running render stops within one tile batch."""
    job = _transition(
        job_id,
        "canceled",
        [JobStatus.QUEUED, JobStatus.RUNNING],
        status=JobStatus.CANCELED,
        finished_at=utcnow(),
    )
    publish_change(services().settings.redis_url, job_id)
    send_event(services().celery, db(), job_id, "completed")
    return job_json(job, measured_throughput())


@blueprint.post("/<uuid:job_id>/retry")
@spec.validate(
    resp=job_responses(HTTP_202=(JobOut, "Queued again."), errors=(404, 409, 410)), security=BEARER
)
def retry_job(job_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    """Run a failed or canceled job again, as a new attempt of the same job."""
    _check_not_expired(_find(job_id))  # its input is gone
    _check_active_cap()
    job = _transition(
        job_id,
        "retried",
        [JobStatus.FAILED, JobStatus.CANCELED],
        status=JobStatus.QUEUED,
        error=None,
        progress={},
        result_key=None,
        started_at=None,
        finished_at=None,
        worker=None,
        enqueued_at=utcnow(),  # cleared by _enqueue if Redis does not take the message
    )
    publish_change(services().settings.redis_url, job_id)
    _enqueue(job)
    return job_json(job, measured_throughput()), 202


def _transition(job_id: uuid.UUID, verb: str, allowed: list[JobStatus], **values: Any) -> Job:
    """One conditional UPDATE from one of `allowed` statuses; 409 if the job is in another."""
    _find(job_id)  # 404 first
    session = db()
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(allowed))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    job = _find(job_id, fresh=True)
    if changed.rowcount != 1:
        states = " or ".join(status.value for status in allowed)
        raise Problem(
            409,
            f"Job cannot be {verb}",
            f"job {job_id} is {job.status.value}; only {states} jobs can be {verb}",
            job_status=job.status.value,
        )
    return job


def _enqueue(job: Job) -> None:
    """Send a committed job's render message (DESIGN.md invariant 2: commit, then enqueue).

    The row was committed already stamped `enqueued_at`, which spares every submit a second
    write. When Redis does not take the message the stamp is cleared, so the relay sends the
    job on its next round; a crash between commit and send leaves the stamp, and the relay
    sends the job once it has waited relay_after.
    """
    try:
        enqueue_render(services().celery, job.id)
    except Exception:
        log.exception("job %s committed but not enqueued; the relay will enqueue it", job.id)
        try:
            session = db()
            session.execute(update(Job).where(Job.id == job.id).values(enqueued_at=None))
            session.commit()
        except Exception:
            log.exception("job %s: could not mark it unsent; the relay finds it later", job.id)


def _find(job_id: uuid.UUID, fresh: bool = False) -> Job:
    """The calling tenant's job; another tenant's job is as unknown as one that never was."""
    job = db().get(Job, job_id, populate_existing=fresh)
    if job is None or job.tenant_id != tenant_id():
        raise Problem(404, "Job not found", f"there is no job {job_id}")
    return job


@dataclass(frozen=True)
class Throughput:
    """The workers' measured speed: mean megapixel-steps per second, and over how many."""

    rate: float | None
    workers: int


NO_THROUGHPUT = Throughput(None, 0)
# The measured speed changes slowly; one query per API process this often serves every submit
# and poll in between.
THROUGHPUT_TTL_S = 30.0


def measured_throughput() -> Throughput:
    """The mean speed of the workers that finished jobs lately (api.metrics.worker_throughput),
    cached for THROUGHPUT_TTL_S in this app."""
    cache = current_app.extensions.setdefault("oneiro.throughput", {})
    now = time.monotonic()
    if cache.get("until", 0.0) < now:
        rates = worker_throughput(db())
        mean = sum(rates.values()) / len(rates) if rates else None
        cache.update(until=now + THROUGHPUT_TTL_S, value=Throughput(mean, len(rates)))
    return cache["value"]  # type: ignore[no-any-return]


def render_estimate(job: Job, throughput: Throughput) -> dict[str, Any]:
    """How long the job's render should take at the workers' measured speed, or why unknown."""
    # The cost measure of ONEIRO_MAX_WORK and of the throughput metric, in megapixels.
    work = megapixel_steps(job.input_width, job.input_height, job.params)
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


def job_json(job: Job, throughput: Throughput = NO_THROUGHPUT) -> dict[str, Any]:
    """The public representation of a job; its estimate at `throughput`."""
    return {
        "id": str(job.id),
        "status": job.status.value,
        "progress": shown_progress(job),
        "params": job.params,
        "input": {"width": job.input_width, "height": job.input_height},
        "attempt": job.attempt,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "error": job.error,
        "webhook": {"url": job.webhook_url, "events": job.webhook_events}
        if job.webhook_url
        else None,
        "result_url": f"/v1/jobs/{job.id}/result"
        if job.status == JobStatus.SUCCEEDED and job.expired_at is None
        else None,
        "preview_url": f"/v1/jobs/{job.id}/preview",
        "expired": job.expired_at is not None,
        "estimate": render_estimate(job, throughput),
        "recipe": job.recipe,
    }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite keeps no zone; Oneiro stores UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
