"""Workers by size (issue 15.5): each worker class on its own queue, a job sent to the smallest
class that holds its peak memory by every send (submit, retry, the relay), and rendered there."""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from api import create_app
from dev.launcher import render_workers
from shared.cost import peak_memory_bytes
from shared.dispatch import (
    CANDIDATES_PER_SLOT,
    announce_slot,
    dispatch,
    slots_by_queue,
    slots_key,
    withdraw_slot,
)
from shared.models import Job, JobStatus, utcnow
from shared.params import RenderParams
from shared.queue import create_celery, render_queues, waiting_render_jobs, worker_queue
from shared.settings import Settings, load_settings
from shared.storage import Storage
from shared.transitions import claim_job
from tests.utils import (
    authed_client,
    drop_queues,
    image_bytes,
    make_job,
    queued_job_ids,
    running_worker,
    wait_for,
)
from worker.maintenance import relay_queued_jobs

SMALL = ((64, 64), {"steps": 1, "octaves": 1, "seed": 1})
LARGE = ((300, 200), {"steps": 1, "octaves": 1, "seed": 1})


def need_gib(job: tuple[tuple[int, int], dict[str, Any]]) -> float:
    (width, height), params = job
    return peak_memory_bytes(width, height, RenderParams(**params)) / 2**30


@pytest.fixture
def farm(settings: Settings) -> Any:
    """The test's settings with two classes: `gpu` holds SMALL, `large` also LARGE."""
    classes = f"gpu:{need_gib(SMALL) + 0.001:.4f},large:{need_gib(LARGE) + 0.001:.4f}"
    farm = settings.model_copy(update={"worker_classes": classes})
    yield farm
    drop_queues(settings.redis_url, *render_queues(farm))


def send(client: FlaskClient, job: tuple[tuple[int, int], dict[str, Any]]) -> str:
    size, params = job
    answer = client.post(
        "/v1/jobs",
        data={"image": (io.BytesIO(image_bytes(size)), "a.png"), "params": json.dumps(params)},
    )
    assert answer.status_code == 202, answer.get_data(as_text=True)
    return answer.get_json()["id"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def api_on(farm: Settings, lookahead: int) -> Iterator[tuple[Settings, FlaskClient]]:
    """The farm with `dispatch_lookahead` set, and a client of an API serving it."""
    farm = farm.model_copy(update={"dispatch_lookahead": lookahead})
    app = create_app(farm)
    try:
        yield farm, authed_client(app)
    finally:
        app.extensions["oneiro"].engine.dispose()


def test_the_smallest_class_keeps_the_queue_and_larger_ones_get_their_own() -> None:
    farm = load_settings(queue="gpu", worker_classes="gpu:24, gpu-large:80")
    assert render_queues(farm) == ["gpu", "gpu-gpu-large"]
    assert worker_queue(farm) == "gpu"
    assert worker_queue(farm.model_copy(update={"worker_class": "gpu-large"})) == "gpu-gpu-large"
    # Without classes: the queue as it always was.
    assert render_queues(load_settings(queue="gpu")) == ["gpu"]
    # `make run` starts a worker of each class, each saying its class.
    workers = render_workers(farm)
    assert [w.env for w in workers] == [
        {"ONEIRO_WORKER_CLASS": "gpu"},
        {"ONEIRO_WORKER_CLASS": "gpu-large"},
    ]
    assert [w.command[w.command.index("--queues") + 1] for w in workers] == render_queues(farm)
    assert [w.name for w in render_workers(load_settings(queue="gpu"))] == ["worker"]


def test_a_job_goes_to_the_smallest_class_that_holds_it_on_every_send(
    farm: Settings, session: Session
) -> None:
    app = create_app(farm)
    client = authed_client(app)
    # A free slot in each class: each submit's dispatch sends its job at once.
    announce_slot(farm, "gpu-slot")
    announce_slot(farm.model_copy(update={"worker_class": "large"}), "large-slot")
    small, large = send(client, SMALL), send(client, LARGE)
    large_queue = f"{farm.queue}-large"
    assert queued_job_ids(farm) == [small]
    assert queued_job_ids(farm, large_queue) == [large]
    # Lost from Redis: the relay, reading both queues to tell a waiting message from a lost
    # one, puts each back in the backlog, and the next dispatch sends it again to its class.
    assert waiting_render_jobs(farm) == {uuid.UUID(small), uuid.UUID(large)}
    drop_queues(farm.redis_url, *render_queues(farm))
    later = utcnow() + timedelta(seconds=farm.relay_after + 1)
    relayed = relay_queued_jobs(session, create_celery(farm), farm, now=later)
    assert sorted(map(str, relayed)) == sorted([small, large])
    dispatch(session, create_celery(farm), farm)
    assert queued_job_ids(farm) == [small]
    assert queued_job_ids(farm, large_queue) == [large]
    # A retry too.
    drop_queues(farm.redis_url, *render_queues(farm))
    assert client.post(f"/v1/jobs/{large}/cancel").status_code == 200
    assert client.post(f"/v1/jobs/{large}/retry").status_code == 202
    assert queued_job_ids(farm, large_queue) == [large]
    for name in ("gpu-slot", "large-slot"):
        withdraw_slot(farm, name)
    app.extensions["oneiro"].engine.dispose()


def test_a_free_slot_of_one_class_is_not_spent_on_a_job_of_another(
    farm: Settings, session: Session
) -> None:
    with api_on(farm, lookahead=0) as (farm, client):
        small, large = send(client, SMALL), send(client, LARGE)  # no slot yet: both wait
        large_queue = f"{farm.queue}-large"
        # A large worker is free: the large job goes, though the small one is older and first in
        # fair order; the small one waits in the backlog for a slot of its class.
        announce_slot(farm.model_copy(update={"worker_class": "large"}), "large-worker")
        dispatch(session, create_celery(farm), farm)
        assert queued_job_ids(farm, large_queue) == [large]
        assert queued_job_ids(farm) == []
        announce_slot(farm, "gpu-worker")
        dispatch(session, create_celery(farm), farm)
        assert queued_job_ids(farm) == [small]
        for name in ("large-worker", "gpu-worker"):
            withdraw_slot(farm, name)


def test_a_job_in_flight_holds_its_class_slot(farm: Settings, session: Session) -> None:
    with api_on(farm, lookahead=0) as (farm, client):
        announce_slot(farm, "gpu-worker")  # one slot of the small class
        first, _waiting = send(client, SMALL), send(client, SMALL)
        assert queued_job_ids(farm) == [first]  # sent at its submit; the second waits
        # The first is sent, not yet claimed, then running: either way the slot is taken.
        assert dispatch(session, create_celery(farm), farm).sent == []
        with session.begin():
            assert claim_job(session, uuid.UUID(first), "gpu-worker") == 1
        assert dispatch(session, create_celery(farm), farm).sent == []
        assert queued_job_ids(farm) == [first]
        withdraw_slot(farm, "gpu-worker")


def test_each_class_gets_as_many_jobs_as_its_free_slots_and_the_look_ahead_only_with_a_worker(
    farm: Settings, session: Session
) -> None:
    with api_on(farm, lookahead=1) as (farm, client):
        smalls = [send(client, SMALL) for _ in range(4)]  # no slot yet: all wait
        larges = [send(client, LARGE) for _ in range(2)]
        # Two slots of the small class, none of the large: the small class gets its two and the
        # look-ahead's one; the large class, with no worker to take a job, none (a message there
        # would wait in Redis, out of the fair order).
        announce_slot(farm, "gpu-worker", slots=2)
        sent = dispatch(session, create_celery(farm), farm).sent
        assert [str(job) for job in sent] == smalls[:3]
        assert sorted(queued_job_ids(farm)) == sorted(smalls[:3])
        assert queued_job_ids(farm, f"{farm.queue}-large") == []
        assert {client.get(f"/v1/jobs/{job}").get_json()["status"] for job in larges} == {"queued"}
        withdraw_slot(farm, "gpu-worker")


def backlog_job(
    session: Session, storage: Storage, job: tuple[tuple[int, int], dict[str, Any]], **fields: Any
) -> uuid.UUID:
    size, params = job
    return make_job(session, storage, image=image_bytes(size), params=params, **fields).id


def test_a_class_with_more_in_flight_than_slots_takes_nothing_and_holds_no_other_back(
    farm: Settings, session: Session, storage: Storage
) -> None:
    farm = farm.model_copy(update={"dispatch_lookahead": 0})
    # The large class lost its worker while its job runs: it is one over (free -1).
    backlog_job(session, storage, LARGE, status=JobStatus.RUNNING, enqueued_at=utcnow())
    backlog_job(session, storage, LARGE)  # first in fair order, but its class is full
    small = backlog_job(session, storage, SMALL)
    announce_slot(farm, "gpu-worker")
    assert dispatch(session, create_celery(farm), farm).sent == [small]
    withdraw_slot(farm, "gpu-worker")


def test_a_dispatch_weighs_a_bounded_number_of_backlog_jobs_per_free_slot(
    farm: Settings, session: Session, storage: Storage
) -> None:
    farm = farm.model_copy(update={"dispatch_lookahead": 0})
    # No large worker: these wait, ahead of the small job in fair order.
    larges = [backlog_job(session, storage, LARGE) for _ in range(2 * CANDIDATES_PER_SLOT - 1)]
    first = backlog_job(session, storage, SMALL)
    announce_slot(farm, "gpu-worker", slots=2)
    # Two free slots weigh 2 x CANDIDATES_PER_SLOT jobs: the small job, the last of them, goes.
    assert dispatch(session, create_celery(farm), farm).sent == [first]
    # Clients cancel 20 of the large jobs and submit one more, and another small one: that is
    # now the (CANDIDATES_PER_SLOT + 1)-th, and one slot is free (the first small job holds
    # the other). Past what one free slot weighs, it waits: a dispatch reads a bounded number
    # of rows, and the next one, as large jobs go, reaches it.
    canceled = larges[:20]
    session.execute(update(Job).where(Job.id.in_(canceled)).values(status=JobStatus.CANCELED))
    session.commit()
    backlog_job(session, storage, LARGE)
    backlog_job(session, storage, SMALL)
    assert dispatch(session, create_celery(farm), farm).sent == []
    withdraw_slot(farm, "gpu-worker")


def test_an_older_workers_announcement_counts_for_the_smallest_class_and_a_garbled_one_lapses(
    farm: Settings,
) -> None:
    client = redis.Redis.from_url(farm.redis_url)
    until = time.time() + 60
    # A worker from before classes says no queue: it consumes the default (smallest) queue.
    client.hset(slots_key(farm), "old-worker", json.dumps({"slots": 2, "until": until}))
    gone = {
        "lapsed": json.dumps({"slots": 1, "until": time.time() - 1}),
        "not-json": "slots=1",
        "no-until": json.dumps({"slots": 1}),
        "until-a-word": json.dumps({"slots": 1, "until": "soon"}),
    }
    client.hset(slots_key(farm), mapping=gone)
    assert slots_by_queue(farm, client) == {render_queues(farm)[0]: 2}
    assert client.hkeys(slots_key(farm)) == [b"old-worker"]  # the rest removed
    client.delete(slots_key(farm))
    client.close()


@pytest.mark.parametrize("database_kind", ["sqlite"], indirect=True)
def test_a_worker_of_the_class_renders_the_job_sent_to_it(farm: Settings, tmp_path: Path) -> None:
    app = create_app(farm)
    client = authed_client(app)
    small, large = send(client, SMALL), send(client, LARGE)
    env = {"ONEIRO_WORKER_CLASSES": farm.worker_classes, "ONEIRO_WORKER_CLASS": "large"}
    large_farm = farm.model_copy(update={"worker_class": "large"})
    with running_worker(farm, tmp_path / "worker.log", queue=worker_queue(large_farm), env=env):
        done = wait_for(
            lambda: (
                (job := client.get(f"/v1/jobs/{large}").get_json())["status"]
                in ("succeeded", "failed")
                and job
            ),
            120,
            "the large job to end",
            every=0.3,
        )
    assert done["status"] == "succeeded", done["error"]
    # Nothing serves the small class here: its job waits in the backlog for a slot of its own.
    assert client.get(f"/v1/jobs/{small}").get_json()["status"] == JobStatus.QUEUED.value
    assert queued_job_ids(farm) == []
    app.extensions["oneiro"].engine.dispose()


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"ONEIRO_WORKER_CLASSES": "gpu:big"}, "ONEIRO_WORKER_CLASSES: Value error, 'gpu:big'"),
        ({"ONEIRO_WORKER_CLASSES": "large:80,gpu:24"}, "smallest first"),
        (
            {"ONEIRO_WORKER_CLASSES": "gpu:24", "ONEIRO_WORKER_CLASS": "huge"},
            "ONEIRO_WORKER_CLASS:",
        ),
    ],
)
def test_a_wrong_farm_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], says: str
) -> None:
    from shared.settings import SettingsError

    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=re.escape(says)):
        load_settings()
