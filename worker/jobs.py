"""Running one job on a worker: claim it, render it, store the result, record the outcome.

The job's state writes themselves (claim, beats, progress, checkpoint, success, failure) are
shared/transitions.py's, each a short conditional transaction here; this module decides when
to make them, and runs the render between them.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session
from tenacity import (
    before_sleep_log,
    retry,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from shared import transitions
from shared.changes import publish_change
from shared.controls import decode_mask
from shared.cost import GIB
from shared.formats import output_format, result_format
from shared.images import (
    ImageRejected,
    as_depth,
    decode_image,
    decode_rgb,
    encode_jpeg,
    fit_within,
)
from shared.logs import log_context
from shared.models import FRAME_KINDS, Job, JobStatus
from shared.params import RenderParams
from shared.queue import job_memory, worker_memory
from shared.recipes import (
    WeightsMismatch,
    check_weights,
    encode_result,
    rerun_verdict,
)
from shared.storage import (
    ObjectNotFound,
    StorageError,
    checkpoint_key,
    frames_prefix,
    legacy_keys,
    preview_key,
    result_key,
    video_result_key,
)
from shared.transitions import LostJob, claim_job
from shared.weights import NoWeights
from worker.outputs import put_fenced, put_preview, render_recipe, weights_of
from worker.runtime import Runtime
from worker.shutdown import shutting_down
from worker.throttle import Throttle
from worker.watchers import DATABASE_DOWN, Heartbeat, ProgressReporter, ShouldStop, job_event

__all__ = ["LostJob", "claim_job", "run_job"]

log = logging.getLogger(__name__)

# The database may be away for a while (a restart, a failover). State changes wait for it with
# back-off instead of failing a render that took an hour; progress and checkpoints, which the
# next write supersedes, are skipped instead (DATABASE_DOWN).
wait_for_database = retry(
    retry=retry_if_exception_type(DATABASE_DOWN),
    wait=wait_exponential(multiplier=0.5, max=10),
    stop=stop_after_delay(600),
    before_sleep=before_sleep_log(log, logging.WARNING),
    reraise=True,
)


def run_job(job_id: uuid.UUID, runtime: Runtime) -> JobStatus | None:
    """Claim, render, store and record one job. Safe to call twice: a second call does nothing.

    Returns the job's final status, or None when the claim was lost.
    """
    with log_context(job_id=str(job_id), worker=runtime.name):
        attempt = wait_for_database(_claim)(runtime, job_id)
        if attempt is None:
            log.info("job %s is not queued; nothing to do", job_id)
            return None
        publish_change(runtime.settings.redis_url, job_id)
        with log_context(attempt=attempt):
            return _run_claimed(job_id, attempt, runtime)


def _run_claimed(job_id: uuid.UUID, attempt: int, runtime: Runtime) -> JobStatus | None:
    log.info("job %s attempt %d claimed by %s", job_id, attempt, runtime.name)
    job_event(runtime, job_id, "started")
    try:
        with Heartbeat(runtime, job_id, attempt) as heartbeat:
            stored, recipe = _render(job_id, attempt, runtime, heartbeat)
    except LostJob as exc:
        if shutting_down.is_set() and _hand_back(runtime, job_id, attempt):
            return None
        _lost(runtime, job_id, attempt, exc)
        return None
    except Exception as exc:
        log.exception("job %s failed", job_id)
        return _fail(runtime, job_id, attempt, _readable(exc))
    try:
        _record_end(
            runtime,
            job_id,
            attempt,
            functools.partial(transitions.succeed, result_key=stored, recipe=recipe),
        )
    except LostJob as exc:
        # Canceled (or taken) between the result's write and this record.
        _lost(runtime, job_id, attempt, exc)
        return None
    log.info("job %s succeeded", job_id)
    return JobStatus.SUCCEEDED


def _lost(runtime: Runtime, job_id: uuid.UUID, attempt: int, exc: LostJob) -> None:
    """Tidy up after an attempt that lost its job: the result it may have stored is recorded
    by no one, and a canceled job's checkpoints will not be resumed."""

    def read() -> tuple[JobStatus, str | None, str, str | None]:
        with runtime.sessions() as session:
            job = session.get_one(Job, job_id)
            return job.status, job.result_key, job.kind, job.params.get("output_format")

    status, recorded, kind, format_name = wait_for_database(read)()
    extension = result_format(kind, format_name).extension
    own = result_key(job_id, attempt, extension)
    # The attempt in the key means no other attempt ever wrote it; the row's key is checked
    # anyway, in case this attempt's finish did commit and only its answer was lost.
    for key in (own, video_result_key(job_id, attempt, extension)):
        if recorded != key:
            runtime.storage.delete(key)
    if status == JobStatus.CANCELED:
        log.info("job %s was canceled; render stopped", job_id)
        _drop_checkpoints(runtime, job_id, attempt)
    else:
        log.warning("%s", exc)


def _hand_back(runtime: Runtime, job_id: uuid.UUID, attempt: int) -> bool:
    """Put the job of a worker that is shutting down back in the backlog (its checkpoints kept);
    whether it was still this attempt's to put back (not canceled or taken meanwhile).

    render_job's dispatch after the task then sends it to the next free slot at once."""

    def put_back() -> None:
        with runtime.sessions.begin() as session:
            transitions.hand_back(session, job_id, attempt)

    try:
        wait_for_database(put_back)()
    except LostJob:
        return False
    publish_change(runtime.settings.redis_url, job_id)
    log.info("job %s attempt %d handed back: this worker is shutting down", job_id, attempt)
    return True


def _drop_checkpoints(runtime: Runtime, job_id: uuid.UUID, attempt: int) -> None:
    """Delete the checkpoints and stored frames of this attempt and the ones before it (never
    a newer one's)."""
    for key in [checkpoint_key(job_id, n) for n in range(attempt, 0, -1)] + [
        legacy_keys(job_id).checkpoint
    ]:
        runtime.storage.delete(key)
    for n in range(attempt, 0, -1):
        runtime.storage.delete_prefix(frames_prefix(job_id, n))


def _claim(runtime: Runtime, job_id: uuid.UUID) -> int | None:
    with runtime.sessions.begin() as session:
        return claim_job(session, job_id, runtime.name)


def _record_end(
    runtime: Runtime,
    job_id: uuid.UUID,
    attempt: int,
    end: Callable[[Session, uuid.UUID, int], None],
) -> None:
    """Record how the job ended (`end`: transitions.succeed or fail; fenced on its attempt,
    waiting for the database), then tell watchers and drop its checkpoints."""

    def record() -> None:
        with runtime.sessions.begin() as session:
            end(session, job_id, attempt)

    wait_for_database(record)()
    publish_change(runtime.settings.redis_url, job_id)
    _drop_checkpoints(runtime, job_id, attempt)
    job_event(runtime, job_id, "completed")


def _render(
    job_id: uuid.UUID, attempt: int, runtime: Runtime, heartbeat: Heartbeat
) -> tuple[str, dict[str, Any]]:
    """Render the job; return where its result is stored and the recipe it carries."""
    with runtime.sessions() as session:
        job = session.get_one(Job, job_id)
        params = RenderParams.model_validate(job.params)
        _check_memory(runtime, job)
        input_key, recorded_checkpoint = job.input_key, job.checkpoint_key
        controls = job.guide_key, job.mask_key
        rerun_of = job.rerun_of
        kind, frames = job.kind, job.frames
    # Every kind stops at its max_run_seconds (frame jobs once ran past it unchecked).
    should_stop = ShouldStop(runtime, job_id, attempt, heartbeat, params.max_run_seconds)
    if rerun_of is not None:
        # Before the render: a recipe's look cannot be had on other weights (the API refused
        # what it could know; a worker given other weights than the API's finds it here).
        check_weights(rerun_of, params.model, weights_of(runtime, params))
    if kind in FRAME_KINDS:  # an animation or a video: frame by frame (worker/frames.py)
        from worker.frames import render_frames

        stored, recipe = render_frames(
            job_id, attempt, runtime, should_stop, kind, params, input_key, frames or 1
        )
        return stored, _judged(recipe, rerun_of)
    fmt = output_format(params.output_format)
    try:
        decoded = decode_image(runtime.storage.get(input_key))
        # A 16-bit output dreams on 16-bit pixels (an 8-bit input's, widened), and the engine
        # makes 16-bit pixels from its floats; an 8-bit output dreams as it always did.
        image = fit_within(as_depth(decoded.pixels, fmt.bits), params.max_dim)
    except ObjectNotFound:
        raise StorageError(
            f"the input image of this job is missing from storage ({input_key})"
        ) from None
    guide, mask = (_control(runtime, key) for key in controls)
    model = None if runtime.settings.dry_run else runtime.dream_model(params)
    dreamed = (
        image
        if model is None
        else _dream(
            job_id,
            attempt,
            runtime,
            should_stop,
            image,
            params,
            model,
            recorded_checkpoint,
            guide,
            mask,
        )
    )
    recipe = _judged(render_recipe(runtime, params, model, guide, mask), rerun_of)
    size = runtime.settings.preview_size
    stored = result_key(job_id, attempt, fmt.extension)
    put_fenced(
        runtime, should_stop, stored, encode_result(dreamed, params, recipe, decoded.icc_profile)
    )
    preview_image = encode_jpeg(fit_within(as_depth(dreamed, 8), size))
    put_fenced(runtime, should_stop, preview_key(job_id, attempt), preview_image)
    return stored, recipe


def _judged(recipe: dict[str, Any], rerun_of: dict[str, Any] | None) -> dict[str, Any]:
    """The recipe, with how faithfully it re-ran `rerun_of` when it was a re-run."""
    if rerun_of is not None:
        # Rendered on another backend, precision, engine or device, or with params changed,
        # it is the recipe's look but not its pixels: the result says so, in its file too.
        recipe["rerun"] = rerun_verdict(rerun_of, recipe)
    return recipe


class TooLargeForWorker(RuntimeError):
    """The job needs more memory than this worker holds (a farm described wrongly, or a job
    accepted before it shrank); the message says how much of each."""


def _check_memory(runtime: Runtime, job: Job) -> None:
    """Fail a job this worker cannot hold with a reason, before it runs out of memory trying."""
    holds, needs = worker_memory(runtime.settings), job_memory(job)
    if holds is not None and needs > holds:
        raise TooLargeForWorker(
            f"the job needs about {needs / GIB:.1f} GiB of worker memory; this worker holds "
            f"{holds / GIB:.1f} GiB (ONEIRO_WORKER_MEMORY_GB or its class in "
            "ONEIRO_WORKER_CLASSES): lower max_dim, octaves or tile_size, or add a larger class"
        )


def _control(runtime: Runtime, key: str | None) -> bytes | None:
    """The bytes of the job's guide or mask stored under `key`, if it has one."""
    if key is None:
        return None
    try:
        return runtime.storage.get(key)
    except ObjectNotFound:
        raise StorageError(f"a file of this job is missing from storage ({key})") from None


def _dream(
    job_id: uuid.UUID,
    attempt: int,
    runtime: Runtime,
    should_stop: ShouldStop,
    image: Any,
    params: RenderParams,
    model: Any,
    recorded_checkpoint: str | None,
    guide: bytes | None = None,
    mask: bytes | None = None,
) -> Any:
    """Run the engine on the job's image, with progress, previews, checkpoints and cancel."""
    # Imported here: TensorFlow loads in the process that renders, never in Celery's parent.
    from worker.engine import Canceled, DreamState, preview, render
    from worker.engine.controls import Controls

    resume = None
    saved = _latest_checkpoint(runtime, job_id, attempt, recorded_checkpoint)
    if saved is not None:
        resume = DreamState.from_bytes(runtime.storage.get(saved))
        log.info("job %s resumes at octave %d step %d", job_id, resume.octave + 1, resume.step)

    own = checkpoint_key(job_id, attempt)

    def save(state: DreamState) -> None:
        put_fenced(runtime, should_stop, own, state.to_bytes())
        try:
            with runtime.sessions.begin() as session:
                transitions.record_checkpoint(session, job_id, attempt, own)
        except DATABASE_DOWN:
            log.warning("job %s: checkpoint saved, database away; not recorded", job_id)

    def save_at_stop(state: DreamState) -> None:
        # Only for a worker shutting down, whose job is still this attempt's until it is handed
        # back (put_fenced would refuse: should_stop says stop). A canceled or taken job's
        # state is never resumed.
        if not shutting_down.is_set():
            return
        runtime.storage.put(own, state.to_bytes())
        try:
            with runtime.sessions.begin() as session:
                transitions.record_checkpoint(session, job_id, attempt, own)
        except DATABASE_DOWN:
            log.warning("job %s: checkpoint saved at the stop, database away", job_id)

    size = runtime.settings.preview_size
    # At most every preview_interval seconds: a JPEG of a few tens of kB, overwritten.
    previews = Throttle(runtime.settings.preview_interval)

    def show(planar: Any) -> None:
        if not previews.take():
            return
        put_preview(runtime, should_stop, encode_jpeg(preview(planar, size)))

    try:
        return render(
            image,
            params,
            model,
            on_progress=ProgressReporter(runtime, job_id, attempt),
            should_stop=should_stop,
            on_checkpoint=save,
            checkpoint_every=runtime.settings.checkpoint_every,
            resume=resume,
            on_step=show,
            on_stop=save_at_stop,
            controls=Controls(
                guide=None if guide is None else decode_rgb(guide),
                mask=None if mask is None else decode_mask(mask),
                mask_model=runtime.mask_model(params) if mask is not None else None,
            ),
        )
    except Canceled:
        raise LostJob(
            f"job {job_id} attempt {attempt} was canceled or taken from this worker"
        ) from None


def _latest_checkpoint(
    runtime: Runtime, job_id: uuid.UUID, attempt: int, recorded: str | None
) -> str | None:
    """The checkpoint a new attempt resumes from: the latest earlier attempt's that exists,
    looked up by name so one saved while the database was away counts; else the one the row
    records (a job checkpointed under the older, per-job key)."""
    earlier = [checkpoint_key(job_id, n) for n in range(attempt - 1, 0, -1)]
    for key in [*earlier, *([recorded] if recorded else [])]:
        if runtime.storage.exists(key):
            return key
    return None


def _fail(runtime: Runtime, job_id: uuid.UUID, attempt: int, message: str) -> JobStatus | None:
    try:
        _record_end(runtime, job_id, attempt, functools.partial(transitions.fail, error=message))
    except LostJob as exc:
        log.warning("%s", exc)
        return None
    return JobStatus.FAILED


# An unexpected error's share of what the user reads: a line, not a library's dump. The whole
# exception, traceback and all, is in the worker's log (run_job logs it).
MAX_ERROR_CHARS = 300


def _readable(exc: Exception) -> str:
    from shared.video import VideoRejected
    from worker.engine import WeightsUnavailable

    # Ours: a sentence on what is wrong, one on what to do (a refused input's says which).
    if isinstance(
        exc,
        WeightsUnavailable
        | StorageError
        | NoWeights
        | WeightsMismatch
        | TooLargeForWorker
        | ImageRejected
        | VideoRejected,
    ):
        return str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        return "the render ran past the time limit (ONEIRO_SOFT_TIME_LIMIT) and was stopped"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return _short(
        f"the render failed ({type(exc).__name__}{': ' + first_line if first_line else ''}); "
        "the worker's log has the details"
    )


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
