"""What the farm has ahead of it and how long that takes: the expected wait of a new job
(POST /v1/estimates), the workers the backlog wants (/metrics), and the memory check at submit.

Every figure is an honest estimate from what is measured, not a promise: the work is the
engine's own schedule (shared/cost.py), the speed the workers' measured megapixel-steps per
second over the last hour (api/metrics.py worker_throughput), which include model loading and
image coding, so a farm of small jobs looks slower than its GPUs are.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.cost import GIB, CostRefused, largest_window, peak_memory_bytes
from shared.models import Job, JobStatus
from shared.params import RenderParams
from shared.queue import class_holding, render_queue, worker_classes
from shared.serializer import Throughput
from shared.settings import Settings


@dataclass(frozen=True)
class Backlog:
    """Work the workers of one queue have ahead of them."""

    # Megapixel-steps: every queued job's, and what running jobs have left by their progress.
    work: float = 0.0
    queued: int = 0
    running: int = 0


def backlogs(session: Session, settings: Settings) -> dict[str, Backlog]:
    """The backlog of each render queue (worker class), every queue present: each job's
    stored work (every frame counted), a running job's by what its progress has left."""
    classes = worker_classes(settings)
    work: defaultdict[str, float] = defaultdict(float)
    queued: Counter[str] = Counter()
    running: Counter[str] = Counter()
    if len(classes) == 1:
        # A farm of one class: the queued jobs summed by the database, no row read.
        count, total = session.execute(
            select(func.count(), func.coalesce(func.sum(Job.work), 0.0)).where(
                Job.status == JobStatus.QUEUED
            )
        ).one()
        work[classes[0].queue], queued[classes[0].queue] = float(total), count
        active: tuple[JobStatus, ...] = (JobStatus.RUNNING,)
    else:
        active = (JobStatus.QUEUED, JobStatus.RUNNING)
    rows = session.execute(
        select(
            Job.input_width, Job.input_height, Job.params, Job.status, Job.progress, Job.work
        ).where(Job.status.in_(active))
    ).all()
    for width, height, params, status, progress, job_work in rows:
        queue = render_queue(settings, Job(input_width=width, input_height=height, params=params))
        is_running = status == JobStatus.RUNNING
        work[queue] += job_work * (1.0 - done_fraction(progress) if is_running else 1.0)
        (running if is_running else queued)[queue] += 1
    return {c.queue: Backlog(work[c.queue], queued[c.queue], running[c.queue]) for c in classes}


def done_fraction(progress: dict[str, Any] | None) -> float:
    """The share of its work a running job has done, by its progress (0 to 1)."""
    return min(1.0, max(0.0, float((progress or {}).get("fraction") or 0.0)))


def expected_wait(work_ahead: float, throughput: Throughput) -> float | None:
    """Seconds until `work_ahead` megapixel-steps are rendered by the farm at its measured
    speed (the mean worker's times the workers measured); None when nothing is measured."""
    if throughput.rate is None or throughput.workers == 0:
        return None
    return work_ahead / (throughput.rate * throughput.workers)


def wait_estimate(
    session: Session, settings: Settings, throughput: Throughput
) -> dict[str, object]:
    """A new job's expected wait before a worker starts it, from the work ahead of it."""
    ahead = sum((backlog.work for backlog in backlogs(session, settings).values()), 0.0)
    seconds = expected_wait(ahead, throughput)
    if seconds is None:
        basis = "no estimate yet: no worker has finished a job in the last hour"
    else:
        basis = (
            f"{ahead:.3g} megapixel-steps queued or left of running jobs, at "
            f"{throughput.workers} worker(s) of {throughput.rate:.3g} megapixel-steps per "
            "second measured over the last hour; in submission order, as the farm is now"
        )
    return {
        "seconds": None if seconds is None else round(seconds, 1),
        "work_ahead_megapixel_steps": round(ahead, 3),
        "basis": basis,
    }


def workers_wanted(backlog: Backlog, rate: float | None, target_wait: float) -> int:
    """Workers that would render `backlog` within `target_wait` seconds at `rate` (megapixel-
    steps per second per worker), never fewer than are rendering now (a scale-in must not stop
    a running render); one for any queued job while no speed is measured."""
    if rate is None or rate <= 0:
        needed = 1 if backlog.queued else 0
    else:
        needed = math.ceil(backlog.work / (rate * target_wait) - 1e-9)
    return max(backlog.running, needed)


def check_memory(width: int, height: int, params: RenderParams, settings: Settings) -> None:
    """Raise CostRefused when no worker class of the farm can hold the job's peak memory."""
    need = peak_memory_bytes(width, height, params)
    if class_holding(settings, need) is not None:
        return
    largest = worker_classes(settings)[-1]
    assert largest.memory_bytes is not None  # a class of unknown size holds anything
    window_h, window_w = largest_window(width, height, params)
    where = (
        f"the largest worker class, {largest.name!r}, holds {_gib(largest.memory_bytes)} GiB "
        "(ONEIRO_WORKER_CLASSES)"
        if largest.name
        else f"a worker holds {_gib(largest.memory_bytes)} GiB (ONEIRO_WORKER_MEMORY_GB)"
    )
    raise CostRefused(
        "params",
        f"the job needs about {_gib(need)} GiB of worker memory (its largest octave and tiles "
        f"of {window_w}x{window_h} through {params.model}); {where}: lower max_dim, octaves, "
        "octave_scale or tile_size",
    )


def _gib(size: int) -> str:
    return f"{size / GIB:.1f}"
