"""The HTTP API: Flask, no TensorFlow. Build it with `create_app()`."""

from __future__ import annotations

from flask import Flask

from api.db import Services
from shared.db import create_db_engine, create_session_factory
from shared.logs import configure_logging
from shared.queue import create_celery
from shared.settings import Settings, get_settings
from shared.storage import open_storage

# Multipart framing around the image: boundaries, part headers and the params part.
MULTIPART_OVERHEAD = 64 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask application for `settings` (read from the environment when not given)."""
    from api import (
        db,
        estimates,
        health,
        jobs,
        metrics,
        models,
        openapi,
        presets,
        problems,
        request_log,
        uploads,
    )
    from api.auth import create_limiter
    from api.web import register_web_page

    settings = settings or get_settings()
    configure_logging(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + MULTIPART_OVERHEAD
    # The default provider's setting; JSONProvider, the type Flask declares, has none.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    engine = create_db_engine(settings.database_url, pre_ping=False)
    app.extensions["oneiro"] = Services(
        settings=settings,
        engine=engine,
        sessions=create_session_factory(engine),
        storage=open_storage(settings.storage_url),
        celery=create_celery(settings),
    )
    db.init_app(app)
    problems.register(app)
    request_log.init_app(app)
    limiter = create_limiter(app, settings)
    limited_blueprints = (
        jobs.blueprint,
        estimates.blueprint,
        models.blueprint,
        presets.blueprint,
        uploads.blueprint,
    )
    for limited in limited_blueprints:
        app.register_blueprint(limited)
        limiter.limit(settings.rate_limit)(limited)
    app.register_blueprint(health.blueprint)
    metrics.register(app)
    openapi.register(app)
    register_web_page(app)
    return app
