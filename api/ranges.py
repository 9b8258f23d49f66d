"""Results served in byte ranges (RFC 9110 Range, 206, 416), so a browser can seek in a video."""

from __future__ import annotations

from flask import Response, request

from api.problems import Problem
from shared.storage import StoredObject


def ranged_download(stored: StoredObject, mimetype: str, headers: dict[str, str]) -> Response:
    """The stored object whole (200), or the one byte range the request's Range header asks
    for (206); 416 for a range past its end. A chunk at a time either way."""
    size = stored.size
    headers = {**headers, "Accept-Ranges": "bytes"}
    asked = request.range
    if asked is None or len(asked.ranges) != 1:  # none, or several: the whole object will do
        return Response(
            stored,
            mimetype=mimetype,
            headers={**headers, "Content-Length": str(size)},
            direct_passthrough=True,
        )
    span = asked.range_for_length(size)
    if span is None:
        stored.close()
        raise Problem(
            416,
            "Range not satisfiable",
            f"the result is {size} bytes; the range asked for lies outside it",
            headers={"Content-Range": f"bytes */{size}"},
        )
    start, stop = span
    return Response(
        stored.span(start, stop),
        status=206,
        mimetype=mimetype,
        headers={
            **headers,
            "Content-Length": str(stop - start),
            "Content-Range": f"bytes {start}-{stop - 1}/{size}",
        },
        direct_passthrough=True,
    )
