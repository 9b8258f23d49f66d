"""End to end on the JAX backend: gunicorn, a real Celery worker with ONEIRO_BACKEND=jax, Redis."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from client.api import Client
from tests.utils import CHELSEA, running_stack

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(1800)
def test_a_job_renders_on_a_jax_worker(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONEIRO_BACKEND", "jax")  # the worker inherits it
    with running_stack(tmp_path, redis_url) as stack:
        client = Client(stack.url, stack.key)
        job = client.submit(CHELSEA, {"steps": 2, "octaves": 2, "max_dim": 96, "seed": 3})

        ended = stack.wait_until_ended(job["id"], timeout=1500)

        assert ended["status"] == "succeeded", ended
        with Image.open(io.BytesIO(client.result(job["id"]))) as result:
            assert result.size == (96, 64)
        assert stack.worker_lines("loaded: jax backend, cpu"), stack.worker_log.read_text()[-3000:]
        client.close()
