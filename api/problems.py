"""Every error as `application/problem+json` (RFC 9457), from one exception and one handler."""

from __future__ import annotations

import logging
import re
from typing import Any

import sqlalchemy.exc
from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# When to try again while the database is away: a restart or a failover takes seconds.
DATABASE_RETRY_AFTER_S = 5
# A job route whose id is not a UUID (the routes match only UUIDs).
JOB_PATH = re.compile(r"^/v1/jobs/(?P<id>[^/]+)(/(events|result|preview|cancel|retry))?/?$")


class Problem(Exception):
    """An error to answer with: status, a short title, and a detail a person can act on."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra
        self.headers = headers or {}

    def response(self) -> Response:
        body = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        return Response(
            json.dumps(body), status=self.status, mimetype=PROBLEM_JSON, headers=self.headers
        )


def invalid(errors: list[dict[str, str]]) -> Problem:
    """A 422 naming each field that is wrong: `errors` holds `{field, message}` items."""
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return Problem(422, "Invalid request", detail, errors=errors)


def register(app: Flask) -> None:
    """Answer every error raised in `app` as problem+json."""

    @app.errorhandler(Problem)
    def _problem(problem: Problem) -> Response:
        return problem.response()

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        if exc.response is not None:  # already answered (the rate limiter's problem+json)
            # werkzeug's base Response, which Flask's subclasses; what the handler hands back.
            return exc.response  # type: ignore[return-value]
        status = exc.code or 500
        detail = exc.description or exc.name
        malformed = JOB_PATH.match(request.path) if status == 404 else None
        if malformed:  # /v1/jobs/<not a UUID>: a job that does not exist, as the routes say it
            return Problem(
                404, "Job not found", f"there is no job {malformed['id']}; job ids are UUIDs"
            ).response()
        if status == 413:
            detail = (
                f"the request is larger than the upload limit of "
                f"{app.extensions['oneiro'].settings.max_upload_bytes} bytes "
                "(ONEIRO_MAX_UPLOAD_BYTES)"
            )
        response = Problem(status, exc.name, detail).response()
        if status == 405 and exc.get_response().allow:
            response.allow.update(exc.get_response().allow)
        return response

    @app.errorhandler(sqlalchemy.exc.OperationalError)
    @app.errorhandler(sqlalchemy.exc.InterfaceError)
    def _database_down(exc: Exception) -> Response:
        log.warning("database unavailable: %s", exc)
        response = Problem(
            503, "Service Unavailable", "the database is not answering; try again shortly"
        ).response()
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return Problem(500, "Internal Server Error", "an unexpected error occurred").response()
