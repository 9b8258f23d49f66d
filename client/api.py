"""The HTTP client of the Oneiro API that the `oneiro` commands use: requests only, no
TensorFlow, no database.

Every failure surfaces as `ApiError`, whose message is one line a person can read: the
problem+json `title: detail` of the API, or what went wrong on the way to it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from client.events import Event, parse_events

TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})


class ApiError(Exception):
    """A call that did not succeed; `str()` is one readable line, `status` the HTTP status
    (None when the server could not be reached or answered nonsense)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# Files `submit` sends as a video job's `video` part rather than as an image.
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".webm", ".mkv"}


class Client:
    """Calls of the /v1 API with one key."""

    def __init__(self, url: str, key: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"
        self.http.headers["User-Agent"] = "oneiro-cli"

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One call; a 4xx/5xx or a connection failure raises ApiError."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.http.request(method, f"{self.url}{path}", **kwargs)
        except requests.ConnectionError:
            raise ApiError(f"cannot connect to the Oneiro API at {self.url}") from None
        except requests.Timeout:
            raise ApiError(f"the Oneiro API at {self.url} did not answer in time") from None
        except requests.RequestException as exc:
            raise ApiError(f"request to {self.url} failed: {exc}") from None
        if response.status_code >= 400:
            raise problem_error(response)
        return response

    def submit(
        self,
        image: Path,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        guide: Path | None = None,
        mask: Path | None = None,
        recipe: str | None = None,
        upload: str | None = None,
    ) -> dict[str, Any]:
        """Upload `image` (or a video, by its name: .mp4, .mov, .webm) with `params` (over
        `recipe`: a job id, or a recipe's JSON; and a guide image, a mask); the new job. With
        `upload`, the complete resumable upload of that id (client/uploads.py) is the input."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with image.open("rb") as file:
            parts = _job_parts(image, file, params, guide, mask, recipe)
            if upload is not None:
                parts[_part(image)] = (None, f"upload:{upload}", "text/plain")
            response = self.request("POST", "/v1/jobs", files=parts, headers=headers)
        return _json(response)

    def estimate(
        self,
        image: Path,
        params: dict[str, Any] | None = None,
        guide: Path | None = None,
        mask: Path | None = None,
        recipe: str | None = None,
    ) -> dict[str, Any]:
        """What submit would cost with the same parts (work, render time, peak memory, wait);
        nothing is stored."""
        with image.open("rb") as file:
            parts = _job_parts(image, file, params, guide, mask, recipe)
            return _json(self.request("POST", "/v1/estimates", files=parts))

    def presets(self) -> list[dict[str, Any]]:
        """The named looks a job may start from (`params.preset`)."""
        return list(_json(self.request("GET", "/v1/presets"))["presets"])

    def job(self, job_id: str) -> dict[str, Any]:
        """The job as the API shows it."""
        return _json(self.request("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, status: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest jobs, optionally of one status."""
        return list(self.job_page(status, limit)["jobs"])

    def job_page(
        self, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of jobs, newest first: `jobs`, and `next_cursor` (None on the last page)."""
        query: dict[str, Any] = {"limit": limit}
        if status:
            query["status"] = status
        if cursor:
            query["cursor"] = cursor
        return _json(self.request("GET", "/v1/jobs", params=query))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job."""
        return _json(self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def retry(self, job_id: str) -> dict[str, Any]:
        """Run a failed, canceled or expired job again."""
        return _json(self.request("POST", f"/v1/jobs/{job_id}/retry"))

    def result(self, job_id: str) -> bytes:
        """The result image of a succeeded job (in its params.output_format)."""
        return self.request("GET", f"/v1/jobs/{job_id}/result").content

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's event stream, from after `last_event_id`, until the server ends it."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        # The server sends a comment at least every 15 s; 60 s of silence is a dead link.
        response = self.request(
            "GET", f"/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=(10, 60)
        )
        with response:
            if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise ApiError(f"{self.url} answered the event stream with something else")
            # chunk_size=None hands over each chunk as it arrives, not once 512 bytes gathered.
            yield from parse_events(response.iter_content(chunk_size=None))

    def follow(
        self,
        job_id: str,
        poll_interval: float = 1.0,
        reconnects: int = 3,
        reconnect_delay: float = 1.0,
    ) -> Iterator[dict[str, Any]]:
        """The job each time it changes, until it ends: from its event stream, reconnecting with
        Last-Event-ID when the stream breaks, and polling once the stream failed `reconnects`
        times in a row."""
        last_id: str | None = None
        failures = 0
        delay = reconnect_delay
        while failures < reconnects:
            try:
                for event in self.events(job_id, last_id):
                    failures = 0
                    last_id = event.id if event.id is not None else last_id
                    delay = event.retry_ms / 1000 if event.retry_ms is not None else delay
                    if not event.data:
                        continue
                    job = json.loads(event.data)
                    yield job
                    if job.get("status") in TERMINAL:
                        return
            except ApiError as exc:
                # A refusal (bad key, unknown job) will not change by asking again.
                if exc.status is not None and exc.status < 500:
                    raise
            except (requests.RequestException, ValueError):
                pass
            # The stream broke, or ended before the job did (a restarted API process).
            failures += 1
            time.sleep(delay)
        while True:
            job = self.job(job_id)
            yield job
            if job.get("status") in TERMINAL:
                return
            time.sleep(poll_interval)


def problem_error(response: requests.Response) -> ApiError:
    """The error a 4xx/5xx answer stands for: `title: detail` of its problem+json."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("title" in body or "detail" in body):
        title = body.get("title") or response.reason or f"HTTP {response.status_code}"
        detail = body.get("detail")
        message = f"{title}: {detail}" if detail and detail != title else str(title)
    else:
        message = f"HTTP {response.status_code} {response.reason or ''}".rstrip()
    return ApiError(" ".join(message.split()), response.status_code)


def _job_parts(
    image: Path,
    file: Any,
    params: dict[str, Any] | None,
    guide: Path | None,
    mask: Path | None,
    recipe: str | None,
) -> dict[str, Any]:
    """The multipart parts of a job request (POST /v1/jobs and /v1/estimates alike)."""
    parts: dict[str, Any] = {
        _part(image): (image.name, file, "application/octet-stream"),
        "params": (None, json.dumps(params or {}), "application/json"),
        **{
            name: (path.name, path.read_bytes(), "application/octet-stream")
            for name, path in (("guide", guide), ("mask", mask))
            if path is not None
        },
    }
    if recipe is not None:
        parts["recipe"] = (None, recipe, "text/plain")
    return parts


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise ApiError(f"{response.url} answered with something other than JSON") from None
    if not isinstance(body, dict):
        raise ApiError(f"{response.url} answered with unexpected JSON")
    return body


def _part(path: Path) -> str:
    """The form part a file goes in: `video` for a video (by its name), else `image`."""
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
