"""The HTTP API: Flask, no TensorFlow. Build it with `create_app()`."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import Flask, g, request
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared.db import create_db_engine, create_session_factory
from shared.localredis import redis_answers
from shared.logs import bind, configure_logging, unbind
from shared.queue import create_celery
from shared.settings import Settings, get_settings
from shared.storage import Storage, open_storage

# Multipart framing around the image: boundaries, part headers and the params part.
MULTIPART_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class Services:
    """What every request handler reaches: settings, database, storage, queue."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    celery: Celery


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask application for `settings` (read from the environment when not given)."""
    from api import jobs, metrics, models, openapi, presets, problems
    from api.auth import create_limiter
    from api.schemas import Health
    from api.web import register_web_page

    settings = settings or get_settings()
    configure_logging(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + MULTIPART_OVERHEAD
    app.json.sort_keys = False  # type: ignore[attr-defined]
    engine = create_db_engine(settings.database_url, pre_ping=False)
    app.extensions["oneiro"] = Services(
        settings=settings,
        engine=engine,
        sessions=create_session_factory(engine),
        storage=open_storage(settings.storage_url),
        celery=create_celery(settings),
    )
    problems.register(app)
    limiter = create_limiter(app, settings)
    app.register_blueprint(jobs.blueprint)
    limiter.limit(settings.rate_limit)(jobs.blueprint)
    app.register_blueprint(models.blueprint)
    limiter.limit(settings.rate_limit)(models.blueprint)
    app.register_blueprint(presets.blueprint)
    limiter.limit(settings.rate_limit)(presets.blueprint)
    metrics.register(app)

    @app.before_request
    def _bind_job_to_logs() -> None:
        # Whatever a route about one job logs carries its id, without passing it down.
        job_id = (request.view_args or {}).get("job_id")
        if job_id is not None:
            g.log_token = bind(job_id=str(job_id))

    @app.teardown_request
    def _unbind_job_from_logs(_exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            unbind(token)

    openapi.register(app)

    @app.get("/healthz")
    @openapi.spec.validate(resp=openapi.Responses(HTTP_200=Health), security={})
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    @openapi.spec.validate(
        resp=openapi.Responses(HTTP_200=Health, HTTP_503=(Health, "Database or Redis away.")),
        security={},
    )
    def readyz() -> tuple[dict[str, str], int]:
        """The database and Redis both answer."""
        services = app.extensions["oneiro"]
        checks = {"database": "ok", "redis": "ok"}
        try:
            with services.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        if not redis_answers(settings.redis_url):
            checks["redis"] = "unavailable"
        ready = all(value == "ok" for value in checks.values())
        return {"status": "ready" if ready else "unavailable", **checks}, 200 if ready else 503

    register_web_page(app)
    return app
