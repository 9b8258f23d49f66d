"""Streams benchmark: job GETs while a thousand event streams and a hundred slow clients are open.

    .venv/bin/python benchmarks/streams.py                      # 1000 streams, 100 slow, 10 s
    .venv/bin/python benchmarks/streams.py --streams 200 --seconds 5

Starts the API as benchmarks/service.py does (the command `make run` uses, on a fresh PostgreSQL
database; SQLite when none answers) with no worker: the script plays the workers itself. It
inserts one running job per stream and then measures GET /v1/jobs/{id} at a fixed rate (open
loop, latency from the scheduled moment, benchmarks/service.py's load generator) in three
phases of the same run:

- baseline: nothing else open;
- streams: N event streams open (asyncio sockets, one per job, each read to its first event),
  while --running jobs get a progress write and its notification every second, as that many
  rendering workers would send (their streams' events are counted);
- streams + slow: the same, plus --slow clients that hold connections open: half send a request
  line and then one header byte a second (gunicorn drops them after ONEIRO_API_KEEPALIVE seconds
  without a whole header, and they come back), half send a job submission's headers and then one
  body byte a second.

The crowd (streams and slow clients) and the progress writer run in a process of their own:
in the timing process they would hold its interpreter lock, and a GET's latency would count
the client's waits as well as the service's.

Prints each phase's latencies, its p99 over the baseline's, and the target: p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from service import (  # noqa: E402
    ROOT,
    Client,
    database,
    open_loop,
    percentiles,
    redis_server,
    service,
)

sys.path.insert(0, str(ROOT))

from shared.changes import publish_change  # noqa: E402
from shared.db import create_db_engine, create_session_factory  # noqa: E402
from shared.models import Job, JobStatus, Tenant  # noqa: E402
from shared.params import RenderParams  # noqa: E402

TARGET_P99_MS = 50.0
GET_RATE = 200


def insert_jobs(database_url: str, count: int) -> list[uuid.UUID]:
    """`count` running jobs of the benchmark's tenant, straight into the table."""
    engine = create_db_engine(database_url)
    params = RenderParams().model_dump(mode="json")
    ids = [uuid.uuid4() for _ in range(count)]
    with create_session_factory(engine).begin() as session:
        tenant = session.scalars(sa.select(Tenant).where(Tenant.name == "bench")).one()
        session.add_all(
            Job(
                id=job_id,
                tenant_id=tenant.id,
                status=JobStatus.RUNNING,
                attempt=1,
                params=params,
                input_key=f"inputs/{job_id}.png",
                input_width=64,
                input_height=48,
                progress={},
            )
            for job_id in ids
        )
    engine.dispose()
    return ids


class Crowd:
    """Event streams and slow clients on an asyncio loop of their own thread: an idle socket
    costs the load generator nothing, so its cores stay with the service."""

    def __init__(self, url: str, key: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.key = host, int(port), key
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.events = 0
        self.streams_open = 0
        self.slow_reconnects = 0
        self.failures: list[str] = []
        self.stopping = False
        self.stream_tasks: list[asyncio.Task[None]] = []
        self.slow_tasks: list[asyncio.Task[None]] = []

    def run(self, coroutine: object, timeout: float | None = None) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)  # type: ignore[arg-type]

    async def _stream(self, job_id: uuid.UUID, opened: asyncio.Semaphore) -> None:
        async with opened:  # a few at a time, as people arrive, not all in one instant
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(
                f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {self.key}\r\n\r\n".encode()
            )
            first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 60)
            if b" 200 " not in first.split(b"\r\n", 1)[0]:
                self.failures.append(first.split(b"\r\n", 1)[0].decode())
                writer.close()
                return
        self.streams_open += 1
        try:
            while not self.stopping:
                data = await reader.read(65536)
                if not data:
                    break
                self.events += data.count(b"\nevent: ")
        finally:
            self.streams_open -= 1
            writer.close()

    async def open_streams(self, job_ids: list[uuid.UUID]) -> None:
        """Open one stream per job; returns once each has its first event."""
        opened = asyncio.Semaphore(50)
        self.stream_tasks = [
            asyncio.create_task(self._stream(job_id, opened)) for job_id in job_ids
        ]
        while self.streams_open + len(self.failures) < len(job_ids):
            await asyncio.sleep(0.1)

    async def _slow(self, index: int) -> None:
        headers = index % 2 == 0
        while not self.stopping:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                if headers:
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
                else:
                    writer.write(
                        f"POST /v1/jobs HTTP/1.1\r\nHost: bench\r\n"
                        f"Authorization: Bearer {self.key}\r\n"
                        "Content-Type: multipart/form-data; boundary=x\r\n"
                        "Content-Length: 1000000\r\n\r\n".encode()
                    )
                while not self.stopping and not reader.at_eof():
                    writer.write(b"a")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(65536), 1.0)
                writer.close()
            except OSError:
                await asyncio.sleep(0.1)
            self.slow_reconnects += 1

    async def open_slow(self, count: int) -> None:
        self.slow_tasks = [asyncio.create_task(self._slow(i)) for i in range(count)]

    def stop(self) -> None:
        """Close every connection and the loop."""
        self.stopping = True

        async def close() -> None:
            tasks = [*self.stream_tasks, *self.slow_tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(close(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def progress_writer(
    database_url: str,
    redis_url: str,
    job_ids: list[uuid.UUID],
    stop: threading.Event,
    written: list[int],
) -> threading.Thread:
    """Every second, a progress write and its notification for each job: rendering workers.
    Counts the writes in written[0]."""
    engine = create_db_engine(database_url)
    sessions = create_session_factory(engine)

    def write() -> None:
        step = 0
        while not stop.wait(1.0):
            step += 1
            for job_id in job_ids:
                with sessions.begin() as session:
                    session.execute(
                        sa.update(Job)
                        .where(Job.id == job_id)
                        .values(progress={"fraction": step / 1000, "step": step})
                    )
                publish_change(redis_url, job_id)
                written[0] += 1
        engine.dispose()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


class CrowdProcess:
    """The crowd and the progress writer in a process of their own: in the load generator's
    process they would take its interpreter lock, and a GET's latency would count the
    client's waits as well as the service's (they still share the machine's cores with it)."""

    def __init__(self, url: str, key: str, database_url: str, redis_url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=_crowd_main, args=(child, url, key, database_url, redis_url), daemon=True
        )
        self.process.start()

    def ask(self, command: str, *args: object) -> Any:
        self.connection.send((command, args))
        return self.connection.recv()


def _crowd_main(
    connection: Connection, url: str, key: str, database_url: str, redis_url: str
) -> None:
    crowd = Crowd(url, key)
    stop, written = threading.Event(), [0]
    writer: threading.Thread | None = None
    while True:
        command, args = connection.recv()
        if command == "open_streams":
            crowd.run(crowd.open_streams(*args), timeout=300)
            answer: object = None
        elif command == "write_progress":
            writer = progress_writer(database_url, redis_url, *args, stop, written)
            answer = None
        elif command == "open_slow":
            crowd.run(crowd.open_slow(*args))
            answer = None
        elif command == "counts":
            answer = (crowd.events, written[0], crowd.streams_open)
        else:  # stop
            stop.set()
            if writer is not None:
                writer.join()
            crowd.stop()
            connection.send((crowd.failures, crowd.slow_reconnects))
            return
        connection.send(answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000, help="event streams held open")
    parser.add_argument("--slow", type=int, default=100, help="slow clients in the last phase")
    parser.add_argument("--running", type=int, default=20, help="jobs with progress each second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir, database() as database_url:
        tmp = Path(tmp_dir)
        with redis_server(tmp) as redis_url, service(database_url, redis_url, tmp) as running:
            url, auth = running.url, {"Authorization": f"Bearer {running.key}"}
            job_ids = insert_jobs(database_url, max(args.streams, 1))
            crowd = CrowdProcess(url, running.key, database_url, redis_url)

            def get(client: Client) -> int:
                return client.call("GET", f"/v1/jobs/{job_ids[0]}", headers=auth)[0]

            open_loop(50, 1, url, get)  # warm-up: connections, imports, first queries
            rows.append(("baseline", open_loop(GET_RATE, args.seconds, url, get)))

            started = time.perf_counter()
            crowd.ask("open_streams", job_ids[: args.streams])
            opened_in = time.perf_counter() - started
            crowd.ask("write_progress", job_ids[: args.running])
            events_before, written_before, _ = crowd.ask("counts")
            rows.append(("streams", open_loop(GET_RATE, args.seconds, url, get)))
            time.sleep(0.5)  # the last write's events on their way
            events_after, written_after, _ = crowd.ask("counts")
            events = (events_after - events_before, written_after - written_before)

            crowd.ask("open_slow", args.slow)
            time.sleep(3)  # let the slow clients settle into their dripping
            rows.append(("streams + slow", open_loop(GET_RATE, args.seconds, url, get)))
            still_open = crowd.ask("counts")[2]
            failures, slow_reconnects = crowd.ask("stop")
            stopping = time.perf_counter()
            report(
                args, database_url, rows, failures, slow_reconnects, opened_in, events, still_open
            )
        print(f"\n(the API stopped in {time.perf_counter() - stopping:.1f} s)")


def report(
    args: argparse.Namespace,
    database_url: str,
    rows: list[tuple[str, dict]],
    failures: list[str],
    slow_reconnects: int,
    opened_in: float,
    events: tuple[int, int],
    still_open: int,
) -> None:
    """Print the figures of the run."""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or ''}"
        f" load average at the end {load} (other work on the machine shows here)"
    )
    print(
        f"database: {database_url.split('://')[0]}, GET /v1/jobs/{{id}} at {GET_RATE}/s, "
        f"{args.seconds:g} s per phase, open loop"
    )
    print(
        f"streams: {args.streams} opened in {opened_in:.1f} s ({len(failures)} refused), "
        f"{still_open} still open at the end; {args.running} jobs written and published every "
        f"second: {events[0]} events heard for {events[1]} writes during the streams phase; "
        f"slow clients: {args.slow}, {slow_reconnects} cut off and reconnected\n"
    )
    header = f"{'phase':<18}{'rate/s':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'errors':>8}"
    print(header + "   (latency ms)   p99/baseline")
    baseline_p99 = percentiles(rows[0][1]["latencies"])["p99"]
    for name, result in rows:
        p = percentiles(result["latencies"])
        verdict = (
            ""
            if name == "baseline"
            else (
                f"   {p['p99'] / baseline_p99:.2f}x; target p99 < {TARGET_P99_MS:g} ms: "
                + ("met" if p["p99"] < TARGET_P99_MS else "MISSED")
            )
        )
        print(
            f"{name:<18}{result['rate']:>8.1f}{p['p50']:>8.1f}{p['p95']:>8.1f}"
            f"{p['p99']:>8.1f}{p['max']:>8.1f}{len(result['errors']):>8}{verdict}"
        )


if __name__ == "__main__":
    main()
