"""POST /v1/estimates: what POST /v1/jobs would make of the same request (its work, render time,
peak memory, worker class and wait), answered without storing anything: no row, no file, no
message, no idempotency record.

The request is read and refused exactly as a submission is (api/submission.py); the render
estimate is the one the job would show (shared/serializer.py), the rest shared/estimates.py."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app

from api.auth import require_key
from api.db import get_db, services
from api.openapi import BEARER, job_responses, spec
from api.schemas import EstimateOut, JobSubmission
from api.submission import read_submission
from api.throughput import measured_throughput
from shared.cost import peak_memory_bytes
from shared.estimates import wait_estimate
from shared.models import Job
from shared.queue import class_holding
from shared.serializer import Throughput, render_estimate
from shared.settings import Settings

blueprint = Blueprint("estimates", __name__, url_prefix="/v1/estimates")
blueprint.before_request(require_key)


@blueprint.post("")
@spec.validate(
    form=JobSubmission,
    resp=job_responses(HTTP_200=(EstimateOut, "What the job would cost."), errors=(413, 415, 422)),
    security=BEARER,
    # Read as POST /v1/jobs reads it (see JobSubmission).
    skip_validation=True,
)
def estimate_job() -> dict[str, Any]:
    """The work, render time, peak memory and expected wait of the job this request would
    submit; nothing is stored. Refused as POST /v1/jobs would refuse it."""
    settings = services().settings
    submission = read_submission(settings)
    params = submission.params.model_dump(mode="json")
    # A job as it would be recorded, never added to a session: its estimate is the one the
    # job itself would show.
    job = Job(
        input_width=submission.width,
        input_height=submission.height,
        params=params,
        kind=submission.kind,
        frames=submission.frames,
    )
    throughput = measured_throughput()
    render = render_estimate(job, throughput)
    memory = peak_memory_bytes(submission.width, submission.height, submission.params)
    worker_class = class_holding(settings, memory)
    return {
        "params": params,
        "input": {"width": submission.width, "height": submission.height},
        "estimate": render,
        "memory": {
            "peak_bytes": memory,
            "worker_class": worker_class.name or None if worker_class else None,
        },
        "wait": _wait(throughput),
        "warnings": _warnings(render, submission.frames, settings),
    }


def _warnings(render: dict[str, Any], frames: int | None, settings: Settings) -> list[str]:
    """What the client should know before sending: a render longer than the soft time limit
    stops there, and the job fails with nothing to show for the hours."""
    seconds = render["render_seconds"]
    if seconds is None or seconds <= settings.soft_time_limit:
        return []
    fewer = "fewer frames, " if frames is not None else ""
    return [
        f"the render should take about {seconds:.0f} s at the measured speed, past the soft "
        f"time limit of {settings.soft_time_limit:.0f} s (ONEIRO_SOFT_TIME_LIMIT), where a "
        f"worker stops it and the job fails: ask for {fewer}fewer steps or octaves, or a "
        "smaller max_dim"
    ]


# The work ahead is summed over every queued and running row: once per WAIT_TTL_S in each API
# process serves the estimates in between, so a burst of them over a long backlog costs one
# read of it. The wait moves by minutes; a few seconds' staleness changes nothing.
WAIT_TTL_S = 5.0


def _wait(throughput: Throughput) -> dict[str, Any]:
    """The expected wait of a job sent now (shared/estimates.py), cached for WAIT_TTL_S."""
    cache = current_app.extensions.setdefault("oneiro.wait", {})
    now = time.monotonic()
    if cache.get("until", 0.0) < now or cache.get("throughput") != throughput:
        wait = wait_estimate(get_db(), services().settings, throughput)
        cache.update(until=now + WAIT_TTL_S, throughput=throughput, value=wait)
    return cache["value"]
