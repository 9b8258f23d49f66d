"""Dispatch benchmark: how long from a worker slot freeing to the next job's message in Redis,
with a short backlog and a long one.

    .venv/bin/python benchmarks/dispatch.py                   # 100 vs 10,000 queued jobs
    .venv/bin/python benchmarks/dispatch.py --queued 100000 --rounds 50

On a fresh PostgreSQL database (benchmarks/service.py's; SQLite when none answers) and a
fresh SQLite file, migrated by Alembic. The backlog is spread over 50 tenants with mixed
priorities, as the fair order has the most to do then. One worker slot is announced and one
job runs. Each round plays what a worker does when it finishes: the running job succeeds,
then the worker dispatches (shared/dispatch.py: the expiry sweep, the slot count, the fair
order over the whole backlog, the mark, the commit, the send); the clock stops once the chosen
job's message is in Redis. The job is then claimed, so the next round frees its slot again.

Prints each backlog's median and p95 pickup, the long backlog's over the short one's, and the
target: p95 under 100 ms with 10,000 queued jobs.

Then a queued job's standing (what a GET of it adds: its position and the work ahead of it)
for the backlog's last job, read STANDING_READS times: the one indexed query on stored work
(shared/standing.py) against the old way, measured in the same run (the whole dispatch order
read, and every job ahead costed from its params); target p99 under 10 ms with 10,000 queued.
And a /metrics scrape's database part (the backlog per worker class, workers wanted).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from service import ROOT, database, redis_server  # noqa: E402

sys.path.insert(0, str(ROOT))

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402

from api.metrics import OneiroCollector  # noqa: E402
from shared.cost import megapixel_steps  # noqa: E402
from shared.db import create_db_engine, create_session_factory  # noqa: E402
from shared.dispatch import announce_slot, choose, dispatch  # noqa: E402
from shared.models import Job, JobStatus, Tenant, utcnow  # noqa: E402
from shared.params import PRIORITIES, RenderParams  # noqa: E402
from shared.queue import create_celery, queue_keys, waiting_render_jobs  # noqa: E402
from shared.settings import load_settings  # noqa: E402
from shared.standing import dispatch_order, queue_standings  # noqa: E402
from shared.transitions import claim_job, succeed  # noqa: E402

TARGET_P95_MS = 100.0
TARGET_STANDING_P99_MS = 10.0
# Times the queue's last job's standing is read.
STANDING_READS = 200
OLD_STANDING_READS = 20
TENANTS = 50
PARAMS = RenderParams.model_validate({"steps": 10, "octaves": 3, "seed": 1}).model_dump(mode="json")


def fill(database_url: str, queued: int) -> None:
    """Migrate, then add `queued` backlog jobs over TENANTS tenants, and one running job."""
    config = Config(toml_file=str(ROOT / "pyproject.toml"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")
    engine = create_db_engine(database_url)
    rng = random.Random(7)
    tenants = [
        {"id": uuid.uuid4(), "name": f"t{n}", "webhook_secret": "x", "weight": 1.0 + n % 3}
        for n in range(TENANTS)
    ]
    start = utcnow() - timedelta(hours=1)
    rows = [
        {
            "id": uuid.uuid4(),
            "tenant_id": rng.choice(tenants)["id"],
            "status": JobStatus.QUEUED,
            "params": PARAMS,
            "input_key": "x",
            "input_width": 64,
            "input_height": 64,
            "progress": {},
            "attempt": 0,
            "priority": rng.choice(list(PRIORITIES.values())),
            "created_at": start + timedelta(milliseconds=n),
        }
        for n in range(queued + 1)
    ]
    with engine.begin() as connection:
        connection.execute(sa.insert(Tenant), tenants)
        for at in range(0, len(rows), 5000):
            connection.execute(sa.insert(Job), rows[at : at + 5000])
    if engine.dialect.name == "postgresql":
        # What autovacuum would do soon after a bulk insert: the planner's row counts.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sa.text("ANALYZE"))
    engine.dispose()


def measure(
    database_url: str, redis_url: str, queued: int, rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """Pickup times (ms) of `rounds` freed slots with `queued` jobs waiting, and the times of
    the fair-order query alone (choose one job, rolled back)."""
    fill(database_url, queued)
    settings = load_settings(
        database_url=database_url,
        redis_url=redis_url,
        queue=f"oneiro-bench-{uuid.uuid4().hex[:8]}",
        dispatch_lookahead=0,
    )
    engine = create_db_engine(database_url)
    sessions = create_session_factory(engine)
    celery = create_celery(settings)
    announce_slot(settings, "bench:1")
    times, queries, scrapes = [], [], []
    standings: list[list[float]] = []
    try:
        with sessions() as session:
            running = dispatch(session, celery, settings).sent[0]
            claim_job(session, running, "bench:1")
            session.commit()
            for _ in range(rounds):
                started = time.perf_counter()
                succeed(session, running, session.get_one(Job, running).attempt, "r")
                session.commit()
                (running,) = dispatch(session, celery, settings).sent
                times.append((time.perf_counter() - started) * 1000)
                assert running in waiting_render_jobs(settings)
                claim_job(session, running, "bench:1")
                session.commit()
                started = time.perf_counter()
                choose(session, 1)
                queries.append((time.perf_counter() - started) * 1000)
                session.rollback()
            # What a GET of the queue's last job adds: its position and start estimate.
            last = dispatch_order(session)[-1]
            for reads, timed in ((STANDING_READS, queue_standings), (OLD_STANDING_READS, _old)):
                timings = []
                for _ in range(reads):
                    started = time.perf_counter()
                    timed(session, [last], 1.0, 1)
                    timings.append((time.perf_counter() - started) * 1000)
                    session.rollback()
                standings.append(timings)
            # A scrape's database part: every family /metrics reads from the job rows.
            collector = OneiroCollector(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
            for _ in range(5):
                started = time.perf_counter()
                list(collector._database_families(session))
                scrapes.append((time.perf_counter() - started) * 1000)
                session.rollback()
    finally:
        with redis.Redis.from_url(redis_url) as client:
            client.delete(*queue_keys(settings.queue), f"oneiro:{settings.queue}:slots")
        celery.close()
        engine.dispose()
    return times, queries, standings, scrapes


def _old(session: Any, job_ids: list[uuid.UUID], rate: float, slots: int) -> dict[uuid.UUID, Any]:
    """The standing as it was before the work column: the whole dispatch order read, and the
    work of every job ahead costed from its params (without c7c75c0's per-process memo, which
    only hid the cost from the second read of a process on)."""
    order = dispatch_order(session)
    wanted = set(job_ids)
    last = max(n for n, job_id in enumerate(order) if job_id in wanted)
    rows = session.execute(
        sa.select(Job.id, Job.input_width, Job.input_height, Job.params, Job.frames).where(
            Job.id.in_(order[: last + 1])
        )
    )
    work = {i: megapixel_steps(w, h, p, f) for i, w, h, p, f in rows}
    ahead, found = 0.0, {}
    for n, job_id in enumerate(order[: last + 1], 1):
        if job_id in wanted:
            found[job_id] = {"position": n, "estimated_start_seconds": ahead / (rate * slots)}
        ahead += work[job_id]
    return found


def summary(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), statistics.quantiles(times, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        for kind in ("postgresql", "sqlite"):
            results = {}
            for queued in (args.baseline, args.queued):
                with contextlib.ExitStack() as stack:
                    url = (
                        stack.enter_context(database())
                        if kind == "postgresql"
                        else f"sqlite:///{tmp}/{kind}-{queued}.db"
                    )
                    if not url.startswith(kind):
                        print(f"{kind}: not answering; skipped")
                        break
                    results[queued] = measure(url, redis_url, queued, args.rounds)
            if len(results) < 2:
                continue
            report(kind, results, args.baseline, args.queued)


def report(kind: str, results: dict[int, Any], baseline: int, queued: int) -> None:
    for size, (times, queries, (standings, old), scrapes) in results.items():
        (median, p95), (q_median, q_p95) = summary(times), summary(queries)
        print(
            f"{kind}: {size:>6} queued: pickup median {median:.1f} ms, p95 {p95:.1f} ms; "
            f"fair-order query median {q_median:.1f} ms, p95 {q_p95:.1f} ms"
        )
        p99 = statistics.quantiles(standings, n=100)[-1]
        print(
            f"{kind}: {size:>6} queued: the last job's standing median "
            f"{statistics.median(standings):.2f} ms, p99 {p99:.2f} ms ({len(standings)} reads); "
            f"the old way median {statistics.median(old):.1f} ms: "
            f"{statistics.median(old) / statistics.median(standings):.1f}x slower; "
            f"a /metrics scrape's database part median {statistics.median(scrapes):.1f} ms"
        )
    long_p95, short_p95 = summary(results[queued][0])[1], summary(results[baseline][0])[1]
    query_ratio = summary(results[queued][1])[0] / summary(results[baseline][1])[0]
    verdict = "met" if long_p95 < TARGET_P95_MS else "MISSED"
    print(
        f"{kind}: pickup p95 with {queued} queued is {long_p95 / short_p95:.2f}x that with "
        f"{baseline} (query median {query_ratio:.2f}x); target p95 < {TARGET_P95_MS:g} ms: "
        f"{verdict}"
    )
    standing_p99 = statistics.quantiles(results[queued][2][0], n=100)[-1]
    verdict = "met" if standing_p99 < TARGET_STANDING_P99_MS else "MISSED"
    print(
        f"{kind}: standing p99 with {queued} queued {standing_p99:.2f} ms; target p99 < "
        f"{TARGET_STANDING_P99_MS:g} ms: {verdict}"
    )


if __name__ == "__main__":
    main()
