"""Where a resumable upload's bytes go as they arrive: appended to a file (local storage), or
the parts of an S3 multipart upload (S3 storage). Never the whole upload in memory: a request
body is read a chunk at a time, and S3's parts are spooled on disk until a part's worth is in.

The upload's row (shared/models.py `Upload`) is the truth about how far it got: a writer
updates `received`, `parts` and `tail_bytes` on the row, and the caller commits them only
after the bytes are stored, so a crash between the two loses bytes, never invents them.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import IO, Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import Upload
from shared.storage import (
    FileStorage,
    S3Storage,
    Storage,
    upload_prefix,
    upload_tail_key,
)

# S3 refuses a multipart upload whose parts but the last are smaller than this.
S3_MIN_PART = 5 * 1024 * 1024
# What one read of a request body holds in memory.
READ_BYTES = 1024 * 1024


class UploadTooLong(ValueError):
    """More bytes were sent than the upload's length."""


class UploadStore(Protocol):
    """Appends to uploads on one storage backend."""

    def begin(self, upload: Upload) -> None:
        """Make room for a new upload (an empty file, an S3 multipart upload)."""

    def append(self, upload: Upload, chunks: Iterable[bytes]) -> None:
        """Store `chunks` at the upload's offset; advance `received` (and the parts) on the
        row by what is stored, also when `chunks` fails midway (a client gone), then re-raise.
        Completes the stored object when the last byte is in."""

    def discard(self, upload: Upload) -> None:
        """Delete whatever of the upload is stored (an S3 multipart upload is aborted)."""

    def reader(self, upload: Upload) -> contextlib.AbstractContextManager[IO[bytes]]:
        """The complete upload as a seekable file, read as needed (never whole)."""


def bounded(chunks: Iterable[bytes], room: int) -> Iterator[bytes]:
    """`chunks`, failing with UploadTooLong past `room` bytes (what is within is yielded)."""
    for chunk in chunks:
        if len(chunk) > room:
            if room:
                yield chunk[:room]
            raise UploadTooLong(f"more bytes than the upload's length (by {len(chunk) - room}+)")
        room -= len(chunk)
        yield chunk


class FileUploads:
    """Local storage: the bytes are appended to the upload's file, fsynced before the row
    counts them."""

    def __init__(self, storage: FileStorage) -> None:
        self.storage = storage

    def begin(self, upload: Upload) -> None:
        path = self.storage.local_path(upload.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def append(self, upload: Upload, chunks: Iterable[bytes]) -> None:
        with self.storage.local_path(upload.key).open("r+b") as file:
            # Bytes past the recorded offset are a PATCH that died before its commit: the
            # row never counted them, so they are written again.
            file.seek(upload.received)
            file.truncate()
            written = 0
            try:
                for chunk in chunks:
                    file.write(chunk)
                    written += len(chunk)
            finally:
                file.flush()
                os.fsync(file.fileno())
                upload.received += written

    def discard(self, upload: Upload) -> None:
        self.storage.delete_prefix(upload_prefix(upload.id))

    @contextlib.contextmanager
    def reader(self, upload: Upload) -> Iterator[IO[bytes]]:
        with self.storage.local_path(upload.key).open("rb") as file:
            yield file


class S3Uploads:
    """S3 storage: an S3 multipart upload. A PATCH body is cut into parts of at most
    `part_bytes` (each spooled to a temporary file, then sent); what is left at its end is
    one more part when it reaches S3's minimum, else kept in a small tail object that the next
    PATCH sends first. So a client sending 8 MiB chunks makes one part per PATCH."""

    def __init__(self, storage: S3Storage, part_bytes: int) -> None:
        self.storage, self.part_bytes = storage, part_bytes
        self.client, self.bucket = storage.client, storage.bucket

    def begin(self, upload: Upload) -> None:
        if upload.length == 0:  # a multipart upload needs a part: an empty object instead
            self.storage.put(upload.key, b"")
            return
        answer = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=self.storage.object_key(upload.key)
        )
        upload.multipart_id = answer["UploadId"]

    def append(self, upload: Upload, chunks: Iterable[bytes]) -> None:
        tail = upload_tail_key(upload.id)
        # On disk past 1 MiB: a part is never held in memory.
        with tempfile.SpooledTemporaryFile(max_size=READ_BYTES) as spool:
            if upload.tail_bytes:
                body = self.storage.open(tail)
                try:
                    for piece in body:
                        spool.write(piece)
                finally:
                    body.close()
            parts, failed = list(upload.parts), None
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        room = self.part_bytes - spool.tell()
                        spool.write(view[:room])
                        view = view[room:]
                        if spool.tell() >= self.part_bytes:
                            self._send_part(upload, parts, spool)
            except BaseException as exc:  # a client gone: keep what came, then re-raise
                failed = exc
            held = spool.tell()
            whole = sum(part["Size"] for part in parts) + held == upload.length
            if held and (whole or held >= S3_MIN_PART):
                self._send_part(upload, parts, spool)
                held = 0
            if held:
                spool.seek(0)
                self.client.put_object(
                    Bucket=self.bucket, Key=self.storage.object_key(tail), Body=spool
                )
            elif upload.tail_bytes:
                self.storage.delete(tail)
            upload.tail_bytes = held
            upload.received = sum(part["Size"] for part in parts) + held
            if whole:
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.storage.object_key(upload.key),
                    UploadId=upload.multipart_id,
                    MultipartUpload={
                        "Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]
                    },
                )
            if failed is not None:
                raise failed

    def _send_part(self, upload: Upload, parts: list[dict[str, Any]], spool: IO[bytes]) -> None:
        # The spool holds exactly the part: writes stop at part_bytes.
        size = spool.tell()
        spool.seek(0)
        number = len(parts) + 1
        answer = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.storage.object_key(upload.key),
            UploadId=upload.multipart_id,
            PartNumber=number,
            Body=spool,
            ContentLength=size,
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"], "Size": size})
        # A new list: the row's JSON column sees the change.
        upload.parts = list(parts)
        upload.received = sum(part["Size"] for part in parts)
        spool.seek(0)
        spool.truncate()

    def discard(self, upload: Upload) -> None:
        from botocore.exceptions import ClientError

        if upload.multipart_id and upload.completed_at is None:
            with contextlib.suppress(ClientError):  # already completed or aborted
                self.client.abort_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.storage.object_key(upload.key),
                    UploadId=upload.multipart_id,
                )
        self.storage.delete_prefix(upload_prefix(upload.id))

    @contextlib.contextmanager
    def reader(self, upload: Upload) -> Iterator[IO[bytes]]:
        raw = _S3Reader(self.storage, upload.key, upload.length)
        with io.BufferedReader(raw, buffer_size=READ_BYTES) as file:
            yield file


class _S3Reader(io.RawIOBase):
    """An S3 object as a seekable file: one ranged GET streamed from where reading starts,
    opened again after a seek (a video's index may be at its end)."""

    def __init__(self, storage: S3Storage, key: str, size: int) -> None:
        self.storage, self.key, self.size = storage, key, size
        self.position = 0
        self.body: Any = None  # boto3's streaming body, opened at the first read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        if base + offset != self.position:
            self._drop()
            self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.size:
            return 0
        if self.body is None:
            self.body = self.storage.client.get_object(
                Bucket=self.storage.bucket,
                Key=self.storage.object_key(self.key),
                Range=f"bytes={self.position}-",
            )["Body"]
        data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def _drop(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None

    def close(self) -> None:
        self._drop()
        super().close()


def upload_store(storage: Storage, part_bytes: int) -> UploadStore:
    """The upload writer of this storage backend."""
    if isinstance(storage, S3Storage):
        return S3Uploads(storage, part_bytes)
    if isinstance(storage, FileStorage):
        return FileUploads(storage)
    raise TypeError(f"no resumable uploads on {type(storage).__name__}")


def pending_bytes(session: Session, tenant_id: uuid.UUID, now: datetime) -> int:
    """The bytes a tenant's live uploads that are no job's input yet hold or will: what its
    quota counts (by their length, so an upload cannot outgrow it as it arrives)."""
    total = session.scalar(
        select(func.coalesce(func.sum(Upload.length), 0)).where(
            Upload.tenant_id == tenant_id, Upload.job_id.is_(None), Upload.expires_at > now
        )
    )
    return int(total or 0)


def expired_uploads(session: Session, now: datetime, limit: int) -> list[Upload]:
    """Uploads no job took that nothing was sent to for their time to live."""
    return list(
        session.scalars(
            select(Upload)
            .where(Upload.job_id.is_(None), Upload.expires_at <= now)
            .order_by(Upload.expires_at)
            .limit(limit)
        )
    )
