"""What runs beside a render on the worker and speaks for it to the job row: the cancel check
the engine asks before every tile batch, the heartbeat that proves the attempt alive, and the
progress reporter with its webhook events. worker/jobs.py runs the render between them."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from shared import transitions
from shared.changes import publish_change
from shared.transitions import LostJob
from shared.webhooks import Event, send_event
from worker.runtime import Runtime
from worker.shutdown import shutting_down
from worker.throttle import Throttle

log = logging.getLogger(__name__)

# The database being away (a restart, a failover): what the writes here skip, and what
# worker/jobs.py's state changes wait out.
DATABASE_DOWN = (OperationalError, InterfaceError)


def job_event(runtime: Runtime, job_id: uuid.UUID, event: Event) -> None:
    """Queue a webhook event of the job, if it asked for one; never fails the render."""
    try:
        with runtime.sessions() as session:
            send_event(runtime.celery(), session, job_id, event)
    except DATABASE_DOWN:
        log.warning("job %s: webhook event %s skipped, database away", job_id, event)


class ShouldStop:
    """Asked by the engine before every tile batch: should the render stop, because the job was
    canceled or is no longer this attempt's, or because the worker is shutting down
    (worker/shutdown.py; worker/jobs.py then hands the job back)? (Then `_put_fenced` writes
    nothing either.)

    One indexed read per batch, so a cancel stops the render within one batch. A job whose
    params.max_run_seconds has passed since this attempt started is canceled here, with that
    reason, and stops the same way.
    """

    def __init__(
        self,
        runtime: Runtime,
        job_id: uuid.UUID,
        attempt: int,
        heartbeat: Heartbeat,
        max_run_seconds: float | None = None,
    ) -> None:
        self.runtime, self.job_id, self.attempt = runtime, job_id, attempt
        self.heartbeat = heartbeat
        self.max_run_seconds = max_run_seconds
        # Counted from the claim, near enough: the claim committed just before the render.
        self.started = time.monotonic()

    def __call__(self) -> bool:
        if shutting_down.is_set() or self.heartbeat.lost.is_set():
            return True
        if self._overran():
            return True
        try:
            with self.runtime.sessions() as session:
                return not transitions.is_current(session, self.job_id, self.attempt)
        except DATABASE_DOWN:
            return False  # the heartbeat and the lease decide while the database is away

    def _overran(self) -> bool:
        """Cancel the job if this attempt has run past its max_run_seconds; whether it did."""
        limit = self.max_run_seconds
        if limit is None or time.monotonic() - self.started < limit:
            return False
        try:
            with self.runtime.sessions.begin() as session:
                transitions.cancel_overrun(session, self.job_id, self.attempt, limit)
        except LostJob:
            return True  # canceled or taken meanwhile: stop all the same
        except DATABASE_DOWN:
            return False  # tried again at the next batch
        log.warning("job %s ran past its max_run_seconds (%gs); canceled", self.job_id, limit)
        publish_change(self.runtime.settings.redis_url, self.job_id)
        job_event(self.runtime, self.job_id, "completed")
        return True


class Heartbeat:
    """Proves, every heartbeat_interval seconds, that this worker still holds the job.

    Runs beside the render in a thread of its own, so a step that takes minutes still beats.
    When the row says the job is no longer this attempt's, `lost` is set and the render stops
    at its next tile batch.
    """

    def __init__(self, runtime: Runtime, job_id: uuid.UUID, attempt: int) -> None:
        self.runtime, self.job_id, self.attempt = runtime, job_id, attempt
        self.lost = threading.Event()
        self._stop = threading.Event()
        # A new thread starts with an empty context; the copy keeps its log records tagged with
        # the job like the render's.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._beat,),
            name=f"heartbeat-{job_id}",
            daemon=True,
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.runtime.settings.heartbeat_interval):
            try:
                with self.runtime.sessions.begin() as session:
                    transitions.beat(session, self.job_id, self.attempt)
            except LostJob:
                self.lost.set()
                return
            except Exception:  # the database may be away for a moment; the lease allows it
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)


class ProgressReporter:
    """Writes engine progress into the job row, at most once per progress_interval.

    The engine reports after every tile batch; time alone decides which reports are written
    (the final state is written with the result).
    """

    def __init__(self, runtime: Runtime, job_id: uuid.UUID, attempt: int) -> None:
        self.runtime, self.job_id, self.attempt = runtime, job_id, attempt
        self.writes = Throttle(runtime.settings.progress_interval)
        # The first progress event one interval after the claim (its `started` event).
        self.events = Throttle(runtime.settings.webhook_progress_interval, closed_first=True)

    def __call__(self, progress: Any) -> None:
        now = time.monotonic()
        if not self.writes.due(now):
            return
        self.writes.mark(now)
        try:
            with self.runtime.sessions.begin() as session:
                transitions.write_progress(
                    session, self.job_id, self.attempt, progress_json(progress)
                )
        except DATABASE_DOWN:
            log.warning("job %s: progress not written, database away", self.job_id)
            return
        publish_change(self.runtime.settings.redis_url, self.job_id)
        if self.events.due(now):
            job_event(self.runtime, self.job_id, "progress")
            # Counted from when the event was made, not from before the write that preceded
            # it (whose time varies): events are never closer than the interval.
            self.events.mark()


def progress_json(progress: Any) -> dict[str, Any]:
    """The job row's `progress` for an engine Progress."""
    return {
        "fraction": round(progress.fraction, 6),
        "octave": progress.octave,
        "octaves": progress.octaves,
        "step": progress.step,
        "steps": progress.steps,
        "tiles_done": progress.tiles_done,
        "tiles": progress.tiles,
        "eta_seconds": None if progress.eta_seconds is None else round(progress.eta_seconds, 1),
        # An animation's or a video's frame (worker/engine/motion.py FrameProgress).
        **(
            {"frame": progress.frame, "frames": progress.frames}
            if hasattr(progress, "frame")
            else {}
        ),
    }
