"""How /v1/jobs/{id}/result and /preview send a stored file: a chunk at a time with its ETag,
answering If-None-Match and Range by werkzeug's conditional-response handling, or, with
ONEIRO_PRESIGNED_DOWNLOADS on S3 storage, a redirect to a short-lived URL of the object."""

from __future__ import annotations

from typing import Any

from flask import Response, redirect, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wrappers import Response as BaseResponse

from api.db import services
from api.problems import Problem
from shared.storage import StoredObject

# What /result and /preview answer besides the file (see send_stored).
ANSWERS = {
    "HTTP_206": (None, "The byte range the Range header asked for (one range)."),
    "HTTP_304": (None, "Unchanged since the ETag sent in If-None-Match."),
    "HTTP_307": (
        None,
        "With ONEIRO_PRESIGNED_DOWNLOADS on S3 storage: GET the file at Location, a URL valid "
        "for ONEIRO_PRESIGNED_EXPIRY seconds.",
    ),
}
HEADERS = {
    200: ["ETag", "Cache-Control", "Accept-Ranges"],
    206: ["ETag", "Cache-Control", "Content-Range"],
    304: ["ETag", "Cache-Control"],
    307: ["Location", "Cache-Control"],
}


# A result or preview can change under its URL (a retry, a preview rewritten every few
# seconds) and is the tenant's alone: caches keep it privately and ask again with its ETag,
# which costs a 304 when nothing changed.
CACHE_CONTROL = "private, no-cache"


def send_stored(
    key: str, stored: StoredObject, mimetype: str, disposition: str | None = None
) -> BaseResponse:
    """A stored object sent a chunk at a time (a large result or a stalled download holds one
    chunk in memory, not the whole file), with its ETag, answering If-None-Match (304) and a
    Range (206; 416 when unsatisfiable) by werkzeug's conditional handling. With
    ONEIRO_PRESIGNED_DOWNLOADS and a store that has such URLs, a redirect to a short-lived URL
    of the object instead, so large files do not pass through the API."""
    settings = services().settings
    if settings.presigned_downloads:
        url = services().storage.download_url(key, settings.presigned_expiry, mimetype, disposition)
        if url is not None:
            stored.close()
            # The URL expires: the redirect itself must not be cached.
            return redirect_to(url, {"Cache-Control": "private, no-store"})
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": stored.etag}
    if disposition:
        headers["Content-Disposition"] = disposition
    response = Response(stored, mimetype=mimetype, headers=headers, direct_passthrough=True)
    response.content_length = stored.size
    try:
        response.make_conditional(
            _ranges_we_answer(stored.size), accept_ranges=True, complete_length=stored.size
        )
    except RequestedRangeNotSatisfiable:
        stored.close()
        raise Problem(
            416,
            "Range Not Satisfiable",
            f"the object is {stored.size} bytes; ask for one range within them "
            "(bytes=first-last, bytes=first- or bytes=-suffix)",
            headers={"Content-Range": f"bytes */{stored.size}"},
        ) from None
    if response.status_code == 304:
        stored.close()
    return response


def _ranges_we_answer(size: int) -> dict[str, Any]:
    """The request's WSGI environ, its Range as RFC 9110 reads it where werkzeug would answer
    416: a Range in a unit other than bytes, of several ranges (no multipart answers here) or
    that werkzeug cannot parse is ignored (the whole file, 200: section 14.2); a suffix longer
    than the file asks for the whole file (a 206 of it all: section 14.1.3)."""
    environ = dict(request.environ)
    if "HTTP_RANGE" not in environ:
        return environ
    asked = request.range  # werkzeug's parse of the header
    if asked is None or asked.units != "bytes" or len(asked.ranges) != 1:
        del environ["HTTP_RANGE"]
    elif asked.ranges[0][0] < 0 and -asked.ranges[0][0] > size:
        environ["HTTP_RANGE"] = "bytes=0-"
    return environ


def redirect_to(url: str, headers: dict[str, str]) -> BaseResponse:
    """A 307 to `url`: the client GETs the object there."""
    response = redirect(url, 307)
    response.headers.update(headers)
    return response
