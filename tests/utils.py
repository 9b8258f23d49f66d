"""Small plain functions that make test data."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from typing import Any

import requests
from PIL import Image
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus
from shared.params import RenderParams
from shared.storage import Storage

DATA = Path(__file__).parent / "data"
CHELSEA = DATA / "chelsea.png"  # 451 x 300, CC0 (see tests/data/README.md)


def image_bytes(size: tuple[int, int] = (96, 64), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A small synthetic image in `fmt`: a gradient, so it is not flat."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_job(session: Session, storage: Storage, **fields: Any) -> Job:
    """Store a small input and insert a job for it, committed."""
    job_id = fields.pop("id", None) or uuid.uuid4()
    data = fields.pop("image", None) or image_bytes()
    params = fields.pop("params", {"steps": 2, "octaves": 2, "seed": 7})
    with Image.open(io.BytesIO(data)) as decoded:
        width, height = decoded.size
    input_key = f"inputs/{job_id}.png"
    storage.put(input_key, data)
    job = Job(
        id=job_id,
        status=fields.pop("status", JobStatus.QUEUED),
        params=RenderParams.model_validate(params).model_dump(mode="json"),
        input_key=input_key,
        input_width=width,
        input_height=height,
        progress=fields.pop("progress", {}),
        **fields,
    )
    session.add(job)
    session.commit()
    return job


def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (with any status)."""
    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True
