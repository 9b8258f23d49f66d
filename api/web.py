"""The web page at `/`: plain HTML, CSS and JavaScript in api/static/, no build step.

The files are Flask's own static folder of this package (served at /static/); the page needs no
key to load, it asks for one and sends it on every /v1 call it makes.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, request

blueprint = Blueprint("web", __name__)

# The page keeps an API key in localStorage, so no script but its own may run on it. Images
# and videos are fetched with the key and shown from blob: URLs (media-src: the MP4 of an
# animation or video job; without it the <video> is refused by the URL safety check).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; media-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)
PAGE_ENDPOINTS = {"web.index", "static"}


@blueprint.get("/")
def index() -> Response:
    """The page."""
    return current_app.send_static_file("index.html")


@blueprint.after_app_request
def _harden(response: Response) -> Response:
    if request.endpoint in PAGE_ENDPOINTS:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


def register_web_page(app: Flask) -> None:
    """Serve the page at `/`; its scripts and styles are the app's static files (api/static)."""
    app.register_blueprint(blueprint)
