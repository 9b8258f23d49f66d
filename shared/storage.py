"""Where inputs and results live: one interface, one backend per URL scheme."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlparse


def checkpoint_key(job_id: uuid.UUID) -> str:
    """Where the worker keeps the job's latest engine state, to resume from."""
    return f"checkpoints/{job_id}.npz"


def preview_key(job_id: uuid.UUID) -> str:
    """Where the worker keeps the small JPEG of the job's render in progress (or its result)."""
    return f"previews/{job_id}.jpg"


# What a download holds in memory at once, whatever the object's size.
CHUNK_BYTES = 256 * 1024


class StorageError(RuntimeError):
    """A stored object is missing or cannot be written."""


class ObjectNotFound(StorageError):
    """No object is stored under the key."""


class StoredObject:
    """An object being read: its size, then its bytes a chunk at a time. Close it when done
    (a WSGI server closes a response body it was given)."""

    def __init__(self, size: int, stream: IO[bytes], chunk_bytes: int = CHUNK_BYTES) -> None:
        self.size, self._stream, self._chunk_bytes = size, stream, chunk_bytes

    def __iter__(self) -> Iterator[bytes]:
        try:
            while chunk := self._stream.read(self._chunk_bytes):
                yield chunk
        finally:
            self.close()  # as soon as it is read out, not when the server gets to it

    def close(self) -> None:
        """Release the file or connection behind it."""
        self._stream.close()


class Storage(Protocol):
    """A flat key -> bytes store. Keys are relative paths such as `inputs/<id>.png`."""

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` atomically: readers see the old or the new object."""

    def get(self, key: str) -> bytes:
        """The bytes under `key`; ObjectNotFound if there are none."""

    def open(self, key: str) -> StoredObject:
        """The object under `key`, to read in chunks; ObjectNotFound (at once) if there is none."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    def delete(self, key: str) -> None:
        """Remove the object under `key`, if any."""


class FileStorage:
    """Objects as files under a root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()) or not key:
            raise StorageError(f"invalid storage key: {key!r}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary name in the same directory, then rename: a crash leaves either
        # the old object or the new one (DESIGN.md invariant 4).
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"no stored object {key!r}") from None

    def open(self, key: str) -> StoredObject:
        try:
            # Opened before it is read: a writer's rename then cannot change what is sent.
            file = self._path(key).open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"no stored object {key!r}") from None
        return StoredObject(os.fstat(file.fileno()).st_size, file)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Storage:
    """Objects in an S3-compatible bucket, under a prefix.

    Credentials, region and endpoint come from the usual AWS variables (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for MinIO, Ceph, R2 ...).
    A PUT replaces an object whole, so writes are atomic without a rename.
    """

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client or boto3.client("s3")

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid storage key: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFound(f"no stored object {key!r}") from None
        return response["Body"].read()  # type: ignore[no-any-return]

    def open(self, key: str) -> StoredObject:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFound(f"no stored object {key!r}") from None
        return StoredObject(response["ContentLength"], response["Body"])

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_storage(url: str) -> Storage:
    """The storage backend for `url`: a directory path, a `file://` or an `s3://bucket/prefix`."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return FileStorage(Path(parsed.path if parsed.scheme else url))
    if parsed.scheme == "s3":
        return S3Storage(parsed.netloc, parsed.path)
    raise StorageError(
        f"ONEIRO_STORAGE_URL: unsupported storage scheme {parsed.scheme!r}; "
        "use a directory path, a file:// URL or s3://bucket/prefix"
    )
