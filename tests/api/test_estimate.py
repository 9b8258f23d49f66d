"""The 202 answer and the job carry an estimate of the render time, from the workers' measured
throughput (the figure /metrics shows), or say there is none yet."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from shared.cost import work
from shared.models import JobStatus, utcnow
from shared.params import RenderParams
from shared.storage import Storage
from tests.utils import image_bytes, make_job


def submit(client: FlaskClient, size: tuple[int, int], params: dict[str, object]) -> dict:
    response = client.post(
        "/v1/jobs",
        data={"image": (io.BytesIO(image_bytes(size)), "a.png"), "params": json.dumps(params)},
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def test_before_any_worker_has_reported_there_is_no_estimate_and_it_says_so(
    client: FlaskClient,
) -> None:
    job = submit(client, (200, 100), {"steps": 10, "octaves": 1})
    assert job["estimate"] == {
        "render_seconds": None,
        "megapixel_steps": 200 * 100 * 10 / 1e6,
        "basis": "no estimate yet: no worker has finished a job in the last hour",
    }


def test_the_estimate_is_the_jobs_cost_at_the_workers_measured_speed(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    # Two workers: one 96 x 64 job of 10 steps and 1 octave each (the octave is raised to the
    # backbone's smallest side, shared/cost.py), in 0.5 s and 1.5 s.
    each = work(96, 64, RenderParams(steps=10, octaves=1, seed=1)) / 1e6
    end = utcnow() - timedelta(minutes=1)
    for worker, seconds in (("fast", 0.5), ("slow", 1.5)):
        make_job(
            session,
            storage,
            status=JobStatus.SUCCEEDED,
            worker=worker,
            attempt=1,
            started_at=end - timedelta(seconds=seconds),
            finished_at=end,
            params={"steps": 10, "octaves": 1, "seed": 1},
        )
    rates = [each / 0.5, each / 1.5]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'oneiro_worker_megapixel_steps_per_second{{worker="fast"}} {rates[0]}' in metrics

    # The 2000-px job at default params (20 steps, 5 octaves).
    job = submit(client, (2000, 1500), {})
    cost = work(2000, 1500, RenderParams(seed=1)) / 1e6  # every octave at its own size
    # Two octaves below the input cost less than it; the three others are the input's size.
    assert 2000 * 1500 * 20 * 3 / 1e6 < cost < 2000 * 1500 * 20 * 5 / 1e6
    mean = sum(rates) / 2
    assert job["estimate"]["megapixel_steps"] == pytest.approx(cost)
    assert job["estimate"]["render_seconds"] == pytest.approx(cost / mean, abs=0.1)
    assert "2 worker(s)" in job["estimate"]["basis"]
    # The job carries it too, as its status is polled.
    again = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert again["estimate"] == job["estimate"]
