"""The OpenAPI document gives a working client: openapi-python-client, a common generator, makes
one from /v1/openapi.json, and that client submits, polls, lists and cancels against a real API
and worker, every answer parsed into the generated model classes (issue 12)."""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from tests.utils import CHELSEA, Stack, running_stack

pytestmark = pytest.mark.e2e

GENERATOR = shutil.which(
    "openapi-python-client", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}"
)
PACKAGE = "oneiro_client"  # from the document's title, "Oneiro"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("generated"), redis_url) as running:
        yield running


@pytest.fixture(scope="module")
def generated(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package generated from the running API's document, imported."""
    if GENERATOR is None:
        pytest.skip("openapi-python-client is not installed (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("client")
    document = tmp / "openapi.json"
    document.write_text(requests.get(f"{stack.url}/v1/openapi.json", timeout=10).text)
    config = tmp / "config.json"
    config.write_text(json.dumps({"post_hooks": []}))  # no formatter needed to generate
    out = tmp / "out"
    done = subprocess.run(
        [GENERATOR, "generate", "--path", str(document), "--output-path", str(out)]
        + ["--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def submit(client: Any, steps: int) -> Any:
    """POST /v1/jobs through the generated client: the cat, small, `steps` steps."""
    models, types = module("models"), module("types")
    body = models.JobSubmission(
        image=types.File(
            payload=io.BytesIO(CHELSEA.read_bytes()), file_name="chelsea.png", mime_type="image/png"
        ),
        params=models.RenderParams.from_dict({"max_dim": 128, "octaves": 2, "steps": steps}),
    )
    return module("api.default.post_v1_jobs").sync(client=client, body=body)


def test_each_model_has_one_name_and_one_class(generated: ModuleType) -> None:
    models = module("models")
    names = set(models.__all__)
    # spectree's nesting made JobPageJobOut, JobRenderParams, ... beside Job and RenderParams.
    assert {"Job", "JobPage", "RenderParams", "Progress", "Problem"} <= names
    assert not {n for n in names if n.startswith(("Job", "ModelList")) and n.endswith("Out")}
    assert not {n for n in names if n.startswith("JobPage") and n != "JobPage"}


def test_submit_poll_list_and_cancel_with_typed_results(
    stack: Stack, generated: ModuleType
) -> None:
    models = module("models")
    get_job = module("api.default.get_v1_jobs_job_id")
    with generated.AuthenticatedClient(base_url=stack.url, token=stack.key) as client:
        check_the_round_trip(client, models, get_job)


def check_the_round_trip(client: Any, models: Any, get_job: Any) -> None:
    """Submit, poll to success, list, cancel another and cancel it again; all typed."""
    submitted = submit(client, steps=2)
    assert isinstance(submitted, models.Job), submitted
    assert submitted.status in (models.JobStatus.QUEUED, models.JobStatus.RUNNING)
    assert isinstance(submitted.params, models.RenderParams) and submitted.params.steps == 2

    deadline = time.monotonic() + 180
    polled = get_job.sync(submitted.id, client=client)
    while polled.status != models.JobStatus.SUCCEEDED and time.monotonic() < deadline:
        assert isinstance(polled, models.Job) and polled.status in (
            models.JobStatus.QUEUED,
            models.JobStatus.RUNNING,
        ), polled
        assert isinstance(polled.progress, models.Progress)
        time.sleep(0.2)
        polled = get_job.sync(submitted.id, client=client)
    assert polled.status == models.JobStatus.SUCCEEDED, polled
    assert isinstance(polled.estimate, models.RenderEstimate) and polled.result_url

    page = module("api.default.get_v1_jobs").sync(client=client, limit=5)
    assert isinstance(page, models.JobPage)
    assert all(isinstance(job, models.Job) for job in page.jobs)
    assert submitted.id in [job.id for job in page.jobs]

    cancel = module("api.default.post_v1_jobs_job_id_cancel")
    to_cancel = submit(client, steps=50)
    canceled = cancel.sync(to_cancel.id, client=client)
    assert isinstance(canceled, models.Job) and canceled.status == models.JobStatus.CANCELED
    # Errors parse too: the answer names why, as the problem+json model.
    again = cancel.sync(to_cancel.id, client=client)
    missing = get_job.sync(uuid.uuid4(), client=client)
    assert isinstance(again, models.Problem) and again.status == 409, again
    assert isinstance(missing, models.Problem) and missing.status == 404, missing
