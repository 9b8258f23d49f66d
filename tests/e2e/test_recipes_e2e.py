"""A recipe renders the same look again: end to end, through gunicorn and a real Celery worker
(random weights), the identical image from the same input."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from shared.db import create_db_engine, create_session_factory
from shared.images import decode_image, recipe_of
from shared.queue import create_celery, enqueue_render
from shared.storage import open_storage
from tests.utils import CHELSEA, Stack, image_bytes, make_job, running_stack

# The first render of a worker builds its model: minutes on a busy CI machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

LOOK = {"steps": 4, "octaves": 2, "max_dim": 96, "seed": 5, "output_format": "png16"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("recipes"), redis_url) as running:
        yield running
        sys.stdout.write(running.worker_log.read_text()[-2000:])


def render(stack: Stack, image: bytes, **parts: str) -> tuple[dict[str, Any], bytes]:
    """Submit, wait, download: the finished job and its result file."""
    with stack.http() as http:
        response = http.post(
            f"{stack.url}/v1/jobs",
            files={"image": ("input.png", image, "image/png")},
            data=parts,
            timeout=10,
        )
        assert response.status_code == 202, response.text
        job = stack.wait_until_ended(response.json()["id"], timeout=600)
        assert job["status"] == "succeeded", job
        result = http.get(f"{stack.url}{job['result_url']}", timeout=10)
    assert result.status_code == 200
    return job, result.content


def test_a_recipe_renders_the_identical_image_again(stack: Stack) -> None:
    photo = CHELSEA.read_bytes()
    first, first_file = render(stack, photo, params=json.dumps(LOOK))

    by_id, by_id_file = render(stack, photo, recipe=first["id"])
    carried = recipe_of(first_file)
    assert carried is not None
    by_file, by_file_file = render(stack, photo, recipe=json.dumps(carried))

    assert carried == first["recipe"] and carried["params"]["seed"] == LOOK["seed"]
    assert by_id["params"] == by_file["params"] == first["params"]
    pixels = decode_image(first_file).pixels
    assert pixels.dtype == np.uint16
    assert np.array_equal(decode_image(by_id_file).pixels, pixels)
    assert np.array_equal(decode_image(by_file_file).pixels, pixels)
    faithful = {"faithful": True, "differs": {}, "unknown": []}
    assert by_id["recipe"].pop("rerun") == {"of": first["id"], **faithful}
    assert by_file["recipe"].pop("rerun") == faithful
    assert by_id["recipe"] == by_file["recipe"] == carried
    assert recipe_of(by_id_file)["rerun"]["faithful"] is True  # type: ignore[index]


def test_a_recipe_gives_its_look_to_another_image(stack: Stack) -> None:
    first, _ = render(stack, CHELSEA.read_bytes(), params=json.dumps(LOOK))

    other, other_file = render(
        stack, image_bytes((80, 60)), recipe=first["id"], params='{"output_format": "png"}'
    )

    assert other["params"] == {**first["params"], "output_format": "png"}
    assert decode_image(other_file).pixels.shape == (60, 80, 3)
    assert recipe_of(other_file) == other["recipe"]
    # The look, not the pixels of the first: its params were changed.
    assert other["recipe"]["rerun"]["faithful"] is False
    assert other["recipe"]["rerun"]["differs"] == {"params.output_format": ["png16", "png"]}


def test_a_worker_whose_weights_are_not_the_recipes_fails_the_job_saying_why(stack: Stack) -> None:
    # The API would refuse this recipe (it has the worker's weights): the job is put in the
    # database and on the queue as a job submitted through an API with other weights would be.
    asked = {"oneiro_recipe": 1, "params": LOOK, "backbone": "inception_v3"}
    asked["weights"] = "sha256:" + "0" * 64
    engine = create_db_engine(stack.settings.database_url)
    try:
        with create_session_factory(engine)() as session:
            storage = open_storage(stack.settings.storage_url)
            job_id = make_job(session, storage, params=LOOK, rerun_of=asked).id
    finally:
        engine.dispose()
    celery = create_celery(stack.settings)
    try:
        enqueue_render(celery, job_id)
    finally:
        celery.close()

    job = stack.wait_until_ended(str(job_id), timeout=600)

    assert job["status"] == "failed" and job["result_url"] is None
    assert "the same look needs the same weights" in job["error"]
    assert "the ones here are random" in job["error"]
