"""Request logging: whatever a route about one job logs carries the job's id (shared/logs.py
puts it in every JSON line), without passing it down."""

from __future__ import annotations

from flask import Flask, g, request

from shared.logs import bind, unbind


def init_app(app: Flask) -> None:
    """Tag the log records of each /v1/jobs/<id>/... request with its job id."""
    app.before_request(_bind_job)
    app.teardown_request(_unbind_job)


def _bind_job() -> None:
    job_id = (request.view_args or {}).get("job_id")
    if job_id is not None:
        g.log_token = bind(job_id=str(job_id))


def _unbind_job(_exc: BaseException | None) -> None:
    token = g.pop("log_token", None)
    if token is not None:
        unbind(token)
