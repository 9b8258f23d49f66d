"""GET /healthz (the process is up) and GET /readyz (the database and Redis answer): probes
for load balancers and orchestrators, with no key."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import text

from api.db import services
from api.openapi import Responses, spec
from api.schemas import Health
from shared.queue import redis_answers

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@spec.validate(resp=Responses(HTTP_200=Health), security={})
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@blueprint.get("/readyz")
@spec.validate(
    resp=Responses(HTTP_200=Health, HTTP_503=(Health, "Database or Redis away.")),
    security={},
)
def readyz() -> tuple[dict[str, str], int]:
    """The database and Redis both answer."""
    svc = services()
    checks = {"database": "ok", "redis": "ok"}
    try:
        with svc.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if not redis_answers(svc.settings.redis_url):
        checks["redis"] = "unavailable"
    ready = all(value == "ok" for value in checks.values())
    return {"status": "ready" if ready else "unavailable", **checks}, 200 if ready else 503
