"""Small plain functions that make test data: images, tenants and keys, jobs."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import create_db_engine, create_session_factory
from shared.models import Job, JobStatus, Tenant, utcnow
from shared.params import RenderParams
from shared.settings import Settings
from shared.storage import Storage, input_key
from shared.tenants import create_key

# The tenant the `client` fixture calls as, and that make_job gives its jobs to by default.
TEST_TENANT = "tests"


def image_bytes(size: tuple[int, int] = (96, 64), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A small synthetic image in `fmt`: a gradient, so it is not flat."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def tenant_named(session: Session, name: str = TEST_TENANT) -> Tenant:
    """The tenant `name`, made (with a key nobody holds) when it does not exist yet."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        create_key(session, name)
        tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one()
    return tenant


def new_key(database_url: str, tenant: str = TEST_TENANT) -> str:
    """A new API key of `tenant`, made in the database at `database_url`."""
    engine = create_db_engine(database_url)
    try:
        with create_session_factory(engine)() as session:
            return create_key(session, tenant).key
    finally:
        engine.dispose()


def make_job(session: Session, storage: Storage, **fields: Any) -> Job:
    """Store a small input and insert a job for it (the test tenant's), committed."""
    job_id = fields.pop("id", None) or uuid.uuid4()
    if "tenant_id" not in fields:
        fields["tenant_id"] = tenant_named(session).id
    data = fields.pop("image", None) or image_bytes()
    params = fields.pop("params", {"steps": 2, "octaves": 2, "seed": 7})
    with Image.open(io.BytesIO(data)) as decoded:
        width, height = decoded.size
    stored_input = input_key(job_id, "png")
    storage.put(stored_input, data)
    job = Job(
        id=job_id,
        status=fields.pop("status", JobStatus.QUEUED),
        params=RenderParams.model_validate(params).model_dump(mode="json"),
        input_key=stored_input,
        input_width=width,
        input_height=height,
        progress=fields.pop("progress", {}),
        **fields,
    )
    session.add(job)
    session.commit()
    return job


def measured_worker(
    session: Session, storage: Storage, seconds: float, minutes_ago: float = 1.0, **fields: Any
) -> Job:
    """A job (make_job's, or with `fields`) that worker w1 rendered in `seconds`, finished
    `minutes_ago`: what the workers' measured speed is made of."""
    end = utcnow() - timedelta(minutes=minutes_ago)
    return make_job(
        session,
        storage,
        status=JobStatus.SUCCEEDED,
        worker="w1",
        attempt=1,
        started_at=end - timedelta(seconds=seconds),
        finished_at=end,
        **fields,
    )


def stored_files(settings: Settings) -> list[Path]:
    """Every file in the (folder) storage of `settings`."""
    root = Path(settings.storage_url)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
