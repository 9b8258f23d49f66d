"""Large inputs as resumable uploads (tus 1.0, /v1/uploads): sent 8 MiB at a time, each chunk
read from the file as it goes, and resumed where the server says it got to. The upload's URL
is remembered per file (its path, size and modification time) beside the client's config, so
`oneiro submit` run again after a dropped connection goes on instead of starting over.

tus core is three requests; written here on the client's requests session (its key, its error
messages) rather than with tuspy, which would bring aiohttp and a database into the client."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from client.config import client_config_path

if TYPE_CHECKING:
    from client.api import Client

# Files larger than this go as a resumable upload; smaller ones in the job request itself.
UPLOAD_THRESHOLD = 32 * 1024 * 1024
# One PATCH: at least S3's 5 MiB part, so each is one part of the server's S3 upload.
CHUNK_BYTES = 8 * 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
# Answers that say a remembered upload is no more to resume: gone, expired, or taken.
GONE = (404, 409, 410)
# Offset conflicts in a row answered by asking the offset again, before giving up.
MAX_CONFLICTS = 3


class UploadMemo:
    """The remembered upload URL of one file on one API, in `uploads.json` of the config dir."""

    def __init__(self, api: str, path: Path) -> None:
        stat = path.stat()
        self.file = client_config_path().parent / "uploads.json"
        self.key = f"{api}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    def _all(self) -> dict[str, str]:
        try:
            loaded = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def _write(self, memo: dict[str, str]) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(memo, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.file)

    def url(self) -> str | None:
        """The upload this file was being sent to, if any."""
        return self._all().get(self.key)

    def remember(self, url: str) -> None:
        self._write({**self._all(), self.key: url})

    def forget(self) -> None:
        """Drop the URL (the upload became a job, or is gone)."""
        memo = self._all()
        if memo.pop(self.key, None) is not None:
            self._write(memo)


def send_upload(
    client: Client,
    path: Path,
    progress: Callable[[int, int], None] | None = None,
    resume: bool = True,
) -> str:
    """Send `path` as a resumable upload, going on from a remembered one when `resume`; its
    id. `progress(offset, size)` is called as bytes are stored."""
    from client.api import ApiError

    size = path.stat().st_size
    memo = UploadMemo(client.url, path)
    url, offset = (memo.url() if resume else None), 0
    if url is not None:
        try:
            answer = client.request("HEAD", url, headers=TUS)
            offset = int(answer.headers["Upload-Offset"])
        except ApiError as exc:
            if exc.status not in GONE:
                raise
            url = None
    if url is None:
        name = base64.b64encode(path.name.encode()).decode()
        answer = client.request(
            "POST",
            "/v1/uploads",
            headers={**TUS, "Upload-Length": str(size), "Upload-Metadata": f"filename {name}"},
        )
        # Kept as a path under the API's URL, as client.request takes it.
        url = urljoin(f"{client.url}/", answer.headers["Location"]).removeprefix(client.url)
        memo.remember(url)
    if progress is not None:
        progress(offset, size)
    conflicts = 0
    with path.open("rb") as file:
        file.seek(offset)
        while offset < size:
            chunk = file.read(CHUNK_BYTES)
            headers = {
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            }
            try:
                answer = client.request("PATCH", url, data=chunk, headers=headers)
            except ApiError as exc:
                if exc.status in (409, 423) and conflicts < MAX_CONFLICTS:
                    # A PATCH of an earlier, dropped connection was still storing when this
                    # one asked how far the upload got: ask again, go on from there.
                    conflicts += 1
                    offset = int(client.request("HEAD", url, headers=TUS).headers["Upload-Offset"])
                    file.seek(offset)
                    continue
                raise ApiError(
                    f"{exc}; the upload stopped at {offset} of {size} bytes: run the same "
                    "command again to go on from there",
                    exc.status,
                ) from None
            conflicts = 0
            offset = int(answer.headers["Upload-Offset"])
            file.seek(offset)
            if progress is not None:
                progress(offset, size)
    return url.rstrip("/").rsplit("/", 1)[1]
