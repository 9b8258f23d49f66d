"""The web page at `/`: plain HTML, CSS and JavaScript under api/static/, no build step.

The page needs no key to load; it asks for one and sends it on every /v1 call it makes.
"""

from __future__ import annotations

from flask import Blueprint, Response

blueprint = Blueprint("web", __name__, static_folder="static", static_url_path="/static")

# The page keeps an API key in localStorage, so no script but its own may run on it.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)


@blueprint.get("/")
def index() -> Response:
    """The page."""
    return blueprint.send_static_file("index.html")


@blueprint.after_request
def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
