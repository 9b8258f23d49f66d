"""Where inputs and results live: one interface, one backend per URL scheme."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol
from urllib.parse import urlparse


def job_prefix(job_id: uuid.UUID) -> str:
    """The folder of every file of the job: retention deletes it whole, found from the id alone."""
    return f"jobs/{job_id}/"


def job_key(job_id: uuid.UUID, name: str, attempt: int | None = None) -> str:
    """The one place a job's storage keys are named: `jobs/<id>/<name>` for the job's own files
    (its input), `jobs/<id>/attempt-<n>/<name>` for what one attempt writes, so a worker that
    lost its job can never overwrite a newer attempt's files."""
    if attempt is None:
        return f"{job_prefix(job_id)}{name}"
    return f"{job_prefix(job_id)}attempt-{attempt}/{name}"


def input_key(job_id: uuid.UUID, extension: str) -> str:
    """Where the API stores the job's uploaded image."""
    return job_key(job_id, f"input.{extension}")


def guide_key(job_id: uuid.UUID, extension: str) -> str:
    """Where the API stores the job's guide image, beside its input."""
    return job_key(job_id, f"guide.{extension}")


def mask_key(job_id: uuid.UUID, extension: str) -> str:
    """Where the API stores the job's mask, beside its input."""
    return job_key(job_id, f"mask.{extension}")


def result_key(job_id: uuid.UUID, attempt: int, extension: str = "png") -> str:
    """Where an attempt stores the rendered image, `result.<extension>` of its output format
    (recorded in the row by its fenced finish)."""
    return job_key(job_id, f"result.{extension}", attempt)


def checkpoint_key(job_id: uuid.UUID, attempt: int) -> str:
    """Where an attempt keeps its latest engine state; the next attempt resumes from it."""
    return job_key(job_id, "checkpoint.npz", attempt)


def preview_key(job_id: uuid.UUID, attempt: int) -> str:
    """Where an attempt keeps the small JPEG of its render in progress (or of its result)."""
    return job_key(job_id, "preview.jpg", attempt)


def video_result_key(job_id: uuid.UUID, attempt: int, extension: str = "mp4") -> str:
    """Where an attempt stores the encoded video of an animation or video job (`result.gif`
    or `result.webp` for an animation asked for as one)."""
    return job_key(job_id, f"result.{extension}", attempt)


def frame_key(job_id: uuid.UUID, attempt: int, frame: int) -> str:
    """Where an attempt stores finished frame `frame` (from 0) of an animation or video job, as
    a PNG: lossless, so a resumed job goes on from exactly the frame an attempt stored."""
    return job_key(job_id, f"frames/{frame:06d}.png", attempt)


def frames_prefix(job_id: uuid.UUID, attempt: int) -> str:
    """The folder of an attempt's frames, deleted whole once the video is stored."""
    return job_key(job_id, "frames/", attempt)


def upload_prefix(upload_id: uuid.UUID) -> str:
    """The folder of a resumable upload's bytes: deleted whole when it expires or is ended."""
    return f"uploads/{upload_id}/"


def upload_key(upload_id: uuid.UUID) -> str:
    """Where a resumable upload's bytes are, whole once it is complete: a job made from it
    takes this key as its input (and retention deletes it with the job's files)."""
    return f"{upload_prefix(upload_id)}data"


def upload_of(key: str) -> uuid.UUID | None:
    """The upload whose bytes `key` is (a job made from an upload has it as its input)."""
    folder, _, rest = key.partition("/")
    try:
        return uuid.UUID(rest.split("/")[0]) if folder == "uploads" else None
    except ValueError:
        return None


def upload_tail_key(upload_id: uuid.UUID) -> str:
    """S3: the bytes of an upload past its last stored part, fewer than a part's minimum."""
    return f"{upload_prefix(upload_id)}tail"


class LegacyKeys(NamedTuple):
    """The per-kind keys jobs had before `jobs/<id>/`."""

    result: str
    preview: str
    checkpoint: str


def legacy_keys(job_id: uuid.UUID) -> LegacyKeys:
    """The keys a job stored before `jobs/<id>/` had. Read and deleted so jobs stored then stay
    readable and are expired whole."""
    return LegacyKeys(
        f"results/{job_id}.png", f"previews/{job_id}.jpg", f"checkpoints/{job_id}.npz"
    )


# What a download holds in memory at once, whatever the object's size.
CHUNK_BYTES = 256 * 1024


class StorageError(RuntimeError):
    """A stored object is missing or cannot be written."""


class ObjectNotFound(StorageError):
    """No object is stored under the key."""


class StoredObject:
    """An object being read: its size and version (`etag`), then its bytes a chunk at a time.
    Close it when done (a WSGI server closes a response body it was given).

    It is its own iterator and can seek, as a file: werkzeug's Range handling seeks to the
    first byte of a range instead of reading its way there. `reopen(offset)` gives a new
    stream from `offset` for a backend whose stream cannot seek (an S3 body)."""

    def __init__(
        self,
        size: int,
        stream: IO[bytes],
        chunk_bytes: int = CHUNK_BYTES,
        *,
        etag: str = "",
        reopen: Callable[[int], IO[bytes]] | None = None,
    ) -> None:
        self.size, self._stream, self._chunk_bytes = size, stream, chunk_bytes
        self.etag, self._reopen, self._offset = etag, reopen, 0

    def __iter__(self) -> StoredObject:
        return self

    def __next__(self) -> bytes:
        chunk = self._stream.read(self._chunk_bytes)
        if not chunk:
            self.close()  # as soon as it is read out, not when the server gets to it
            raise StopIteration
        self._offset += len(chunk)
        return chunk

    def seekable(self) -> bool:
        """Whether seek works (always: by the stream, or by opening it again at the offset)."""
        return True

    def seek(self, offset: int) -> int:
        """Continue from byte `offset`."""
        if self._reopen is None:
            self._stream.seek(offset)
        elif offset != self._offset:
            self._stream.close()
            self._stream = self._reopen(offset)
        self._offset = offset
        return offset

    def tell(self) -> int:
        """The byte the next chunk starts at."""
        return self._offset

    def close(self) -> None:
        """Release the file or connection behind it."""
        self._stream.close()


class Storage(Protocol):
    """A flat key -> bytes store. Keys are relative paths such as `jobs/<id>/input.png`."""

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` atomically: readers see the old or the new object."""

    def get(self, key: str) -> bytes:
        """The bytes under `key`; ObjectNotFound if there are none."""

    def open(self, key: str) -> StoredObject:
        """The object under `key`, to read in chunks; ObjectNotFound (at once) if there is none."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    def download_url(
        self, key: str, expires: int, content_type: str, disposition: str | None = None
    ) -> str | None:
        """A URL a client may GET the object from directly for `expires` seconds, served with
        these headers; None when the backend has none (files on the API's disk)."""

    def delete(self, key: str) -> None:
        """Remove the object under `key`, if any."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with `prefix` (a folder such as `jobs/<id>/`)."""

    def sweep_temporary(self, older_than: float) -> list[str]:
        """Remove what interrupted writes left, older than `older_than` seconds; return it."""


class FileStorage:
    """Objects as files under a root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def local_path(self, key: str) -> Path:
        """The file of `key` (which a resumable upload appends to)."""
        return self._path(key)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()) or not key:
            raise StorageError(f"invalid storage key: {key!r}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary name in the same directory, then rename: a crash leaves either
        # the old object or the new one (invariant 4, docs/internals/architecture.md).
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
        stat = os.fstat(file.fileno())
        # A new version of a key is a new file (put() renames): its inode or time differs.
        etag = f'"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        return StoredObject(stat.st_size, file, etag=etag)

    def download_url(
        self, key: str, expires: int, content_type: str, disposition: str | None = None
    ) -> str | None:
        return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        if not prefix.endswith("/"):
            raise StorageError(f"a file storage prefix is a folder ending in '/': {prefix!r}")
        try:
            shutil.rmtree(self._path(prefix))
        except FileNotFoundError:
            pass
        except OSError as exc:
            # A file written into the folder meanwhile (a lost worker) fails the removal; the
            # caller tries again later rather than calling the job's files gone.
            raise StorageError(f"could not delete {prefix!r}: {exc}") from exc

    def sweep_temporary(self, older_than: float) -> list[str]:
        # put() names its temporaries `.<name>.<random>.tmp`; a process killed between the
        # write and the rename leaves one that nothing else would ever remove. One younger than
        # `older_than` may be a write in progress and is left alone.
        cutoff = time.time() - older_than
        swept = []
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if not (name.startswith(".") and name.endswith(".tmp")):
                    continue
                path = Path(directory, name)
                try:
                    if path.stat().st_mtime >= cutoff:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue  # renamed or swept by another process meanwhile
                swept.append(path.relative_to(self.root).as_posix())
        return swept


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

    def object_key(self, key: str) -> str:
        """The bucket's key of `key` (under the prefix), for calls beyond this interface."""
        return self._key(key)

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
        return response["Body"].read()  # type: ignore[no-any-return]  # boto3: no types

    def open(self, key: str) -> StoredObject:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFound(f"no stored object {key!r}") from None
        stored_key = self._key(key)

        def reopen(offset: int) -> IO[bytes]:
            # The same version (If-Match), so a range never mixes two writes of one key.
            ranged = self.client.get_object(
                Bucket=self.bucket,
                Key=stored_key,
                Range=f"bytes={offset}-",
                IfMatch=response["ETag"],
            )
            return ranged["Body"]  # type: ignore[no-any-return]  # boto3: no types

        return StoredObject(
            response["ContentLength"], response["Body"], etag=response["ETag"], reopen=reopen
        )

    def download_url(
        self, key: str, expires: int, content_type: str, disposition: str | None = None
    ) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._key(key), "ResponseContentType": content_type}
        if disposition:
            params["ResponseContentDisposition"] = disposition
        return self.client.generate_presigned_url(  # type: ignore[no-any-return]  # boto3: no types
            "get_object", Params=params, ExpiresIn=expires
        )

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

    def delete_prefix(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        for page in pages:
            # A listing page holds at most 1,000 keys: as many as one DeleteObjects accepts.
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if not objects:
                continue
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
            )
            if answer.get("Errors"):
                raise StorageError(f"could not delete under {prefix!r}: {answer['Errors'][:3]}")

    def sweep_temporary(self, older_than: float) -> list[str]:
        return []  # a PUT stores an object whole: an interrupted one leaves nothing behind


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
