"""The preview: a small JPEG of a render in progress, written by the worker every few seconds
and served by the API; the result's own preview once the job has succeeded."""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy.orm import Session

from shared.models import JobStatus
from shared.storage import Storage, preview_key, result_key
from tests.utils import assert_problem, before_each_gradient, image_bytes, make_job, with_settings
from worker.jobs import run_job
from worker.runtime import Runtime


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return image.size


def recorded_puts(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys `storage` is asked to put from now on, in order."""
    writes: list[str] = []
    put = type(storage).put
    monkeypatch.setattr(
        type(storage), "put", lambda self, key, data: writes.append(key) or put(self, key, data)
    )
    return writes


def test_the_preview_follows_the_render_and_ends_as_the_result(
    client: FlaskClient,
    runtime: Runtime,
    session: Session,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = make_job(
        session, storage, image=image_bytes((200, 160)), params={"steps": 4, "octaves": 1}
    )
    assert_problem(client.get(f"/v1/jobs/{job.id}/preview"), 409)  # queued: nothing yet
    seen: list[Any] = []

    def look(_n: int) -> None:
        response = client.get(f"/v1/jobs/{job.id}/preview")
        seen.append(response.data if response.status_code == 200 else response.status_code)

    before_each_gradient(monkeypatch, look)
    runtime = with_settings(runtime, preview_interval=0.0, preview_size=64)
    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED

    # Before the first step there is none; after each step, a new one, 64 px on its long side.
    assert seen[0] == 409 and len(seen) == 4
    assert all(jpeg_size(data) == (64, 51) for data in seen[1:])
    assert len(set(seen[1:])) == 3  # the image changes from step to step
    final = client.get(f"/v1/jobs/{job.id}/preview")
    assert final.status_code == 200 and final.headers["Cache-Control"] == "private, no-cache"
    assert final.content_type == "image/jpeg" and final.data not in seen
    result = Image.open(io.BytesIO(storage.get(result_key(job.id, 1)))).convert("RGB")
    shown = Image.open(io.BytesIO(final.data)).convert("RGB")
    # The final preview is the result made small (JPEG, so close rather than equal).
    small = result.resize(shown.size, Image.Resampling.LANCZOS)
    difference = sum(abs(a - b) for a, b in zip(small.tobytes(), shown.tobytes(), strict=True))
    assert difference / len(small.tobytes()) < 8


def test_previews_are_written_at_most_every_preview_interval(
    runtime: Runtime,
    session: Session,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = make_job(session, storage, params={"steps": 6, "octaves": 2})
    writes = recorded_puts(storage, monkeypatch)
    runtime = with_settings(runtime, preview_interval=3600.0)
    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED
    # Twelve steps: one preview after the first, none for an hour, then the result's.
    assert writes.count(preview_key(job.id, 1)) == 2


def test_an_animation_writes_its_preview_at_most_every_preview_interval_too(
    runtime: Runtime,
    session: Session,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 23.13: a frame job rewrote its preview after every frame.
    params = {"steps": 1, "octaves": 1, "seed": 3, "animation": {"frames": 6}}
    job = make_job(session, storage, params=params, kind="animation", frames=6)
    writes = recorded_puts(storage, monkeypatch)
    runtime = with_settings(runtime, preview_interval=3600.0)
    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED
    # Six frames: the first frame's preview, none for an hour, then the last frame's.
    assert writes.count(preview_key(job.id, 1)) == 2
