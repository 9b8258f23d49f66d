"""Several machines on one: workers in network namespaces of their own, joined by veth links.

The root namespace plays the services host (PostgreSQL through a proxy on each link, Redis
bound to the links, the API); two namespaces play GPU machines, each running a worker that
reaches the services only over its link. Cutting a link is a machine falling off the network.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import STDOUT
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from dev.launcher import api_command
from dev.localredis import redis_server_binary
from shared.dispatch import dispatch
from shared.models import Job, JobStatus
from shared.queue import create_celery, redis_answers
from shared.settings import Settings
from tests.utils import (
    CHELSEA,
    ROOT,
    Proxy,
    free_port,
    http_answers,
    kill_process,
    new_key,
    process_env,
    start_worker,
    wait_for,
)
from worker.maintenance import reap_stale_jobs, relay_queued_jobs

pytestmark = pytest.mark.chaos


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Host:
    name: str
    namespace: str
    link: str  # the root side of its veth pair: down = the host is off the network
    address: str  # the services' address as this host sees it
    proxy: Proxy | None = None
    worker: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class Cluster:
    hosts: list[Host]
    api: str
    settings: Settings
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _namespaces_work() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"oneiro-probe-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot make a network namespace here: {exc}"
    ip("netns", "del", probe)
    return None


@pytest.fixture
def cluster(settings: Settings, database_url: str, tmp_path: Path) -> Iterator[Cluster]:
    reason = _namespaces_work()
    if reason:
        pytest.skip(reason)
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("hosts share a database server; SQLite is a local file")
    tag = secrets.token_hex(2)
    subnet = secrets.randbelow(200) + 20
    hosts = [
        Host(f"host{i}", f"oneiro-{tag}-h{i}", f"o{tag}h{i}", f"10.231.{subnet}.{4 * i + 1}")
        for i in (1, 2)
    ]
    made: list[Host] = []
    processes: list[subprocess.Popen[bytes]] = []
    redis_port = free_port()
    try:
        for i, host in enumerate(hosts, start=1):
            peer = f"o{tag}p{i}"
            ip("netns", "add", host.namespace)
            made.append(host)
            ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", host.namespace)
            ip("addr", "add", f"{host.address}/30", "dev", host.link)
            ip("link", "set", host.link, "up")
            inside = f"10.231.{subnet}.{4 * i + 2}"
            for command in (
                ["addr", "add", f"{inside}/30", "dev", peer],
                ["link", "set", peer, "up"],
                ["link", "set", "lo", "up"],
            ):
                ip("netns", "exec", host.namespace, "ip", *command)
            host.proxy = Proxy((url.host or "127.0.0.1", url.port or 5432), bind=host.address)

        redis = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                *[h.address for h in hosts],
                # Bound only to loopback and this test's own links, so no password is needed.
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
        )
        processes.append(redis)
        local_redis = f"redis://127.0.0.1:{redis_port}/0"
        deadline = time.monotonic() + 10
        while not redis_answers(local_redis, 0.2):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

        worker_env = {
            "ONEIRO_CHECKPOINT_EVERY": "1",
            "ONEIRO_HEARTBEAT_INTERVAL": "0.5",
            "ONEIRO_PROGRESS_INTERVAL": "0.2",
        }
        api_port = free_port()
        api_log = (tmp_path / "api.log").open("wb")
        processes.append(
            subprocess.Popen(
                api_command(f"127.0.0.1:{api_port}"),
                cwd=ROOT,
                stdout=api_log,
                stderr=STDOUT,
                env=process_env(settings, REDIS_URL=local_redis, **worker_env),
            )
        )
        api_log.close()
        for host in hosts:
            assert host.proxy is not None
            host.log = tmp_path / f"{host.name}.log"
            # It reaches the services over its link alone: through its proxy and Redis's
            # address on the link.
            host.worker = start_worker(
                settings,
                host.log,
                prefix=["ip", "netns", "exec", host.namespace],
                hostname=f"{host.name}@%h",
                env={
                    **worker_env,
                    "ONEIRO_WORKER_NAME": host.name,
                    "DATABASE_URL": url.set(
                        host=host.address, port=host.proxy.port
                    ).render_as_string(hide_password=False),
                    "REDIS_URL": f"redis://{host.address}:{redis_port}/0",
                },
            )
        api = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: http_answers(f"{api}/healthz"), 30, "the API")
        yield Cluster(
            hosts, api, settings.model_copy(update={"redis_url": local_redis, "lease_seconds": 3.0})
        )
    finally:
        for host in hosts:
            if host.worker is not None:
                kill_process(host.worker)
            if host.proxy is not None:
                host.proxy.close()
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        for host in made:
            subprocess.run(["ip", "link", "del", host.link], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)


def submit(cluster: Cluster, **params: Any) -> uuid.UUID:
    import json

    with CHELSEA.open("rb") as image:
        response = requests.post(
            f"{cluster.api}/v1/jobs",
            headers={"Authorization": f"Bearer {new_key(cluster.settings.database_url)}"},
            files={"image": image},
            data={"params": json.dumps(params)},
            timeout=10,
        )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


def wait_rows(
    sessions: sessionmaker[Session], ids: list[uuid.UUID], check: Any, timeout: float, what: str
) -> list[Job]:
    def rows() -> list[Job] | None:
        with sessions() as session:
            found = [session.get_one(Job, job_id) for job_id in ids]
        return found if check(found) else None

    return wait_for(rows, timeout, what, every=0.1)  # type: ignore[no-any-return]


def test_jobs_spread_over_both_hosts(cluster: Cluster, sessions: sessionmaker[Session]) -> None:
    ids = [submit(cluster, steps=6, octaves=2, max_dim=160, seed=i) for i in range(6)]

    done = wait_rows(
        sessions, ids, lambda rows: all(r.status.is_terminal() for r in rows), 240, "six jobs"
    )

    assert {r.status for r in done} == {JobStatus.SUCCEEDED}
    assert {(r.worker or "").split(":")[0] for r in done} == {"host1", "host2"}


def test_a_host_cut_off_mid_render_loses_its_job_to_the_other(
    cluster: Cluster, sessions: sessionmaker[Session]
) -> None:
    job_id = submit(cluster, steps=12, octaves=3, max_dim=200, seed=3)
    (running,) = wait_rows(
        sessions,
        [job_id],
        lambda rows: (
            rows[0].status == JobStatus.RUNNING and rows[0].progress.get("fraction", 0) > 0.15
        ),
        120,
        "the render",
    )
    victim = next(h for h in cluster.hosts if (running.worker or "").startswith(h.name + ":"))
    survivor = next(h for h in cluster.hosts if h is not victim)

    ip("link", "set", victim.link, "down")  # the machine falls off the network
    celery = create_celery(cluster.settings)
    deadline = time.monotonic() + 60
    requeued: list[uuid.UUID] = []
    while not requeued:  # what beat does every few seconds
        assert time.monotonic() < deadline, "the reaper never saw the lease expire"
        time.sleep(0.5)
        with sessions() as maintenance:
            requeued, _ = reap_stale_jobs(maintenance, cluster.settings)
            relay_queued_jobs(maintenance, celery, cluster.settings)
            dispatch(maintenance, celery, cluster.settings)  # the job put back, to the survivor
    celery.close()

    (done,) = wait_rows(
        sessions,
        [job_id],
        lambda rows: rows[0].status.is_terminal(),
        180,
        "the job on the other host",
    )
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.attempt == 2 and (done.worker or "").startswith(survivor.name + ":")
    assert (
        survivor.log is not None and f"job {job_id} resumes at octave" in survivor.log.read_text()
    )
