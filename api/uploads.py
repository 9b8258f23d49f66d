"""Resumable uploads on the tus 1.0 protocol (https://tus.io/protocols/resumable-upload):
core, creation, termination and expiration. `POST /v1/uploads` makes one, `PATCH` appends at
its offset, `HEAD` says how far it got, `DELETE` ends it. A complete upload becomes a job's
input with `image=upload:<id>` or `video=upload:<id>` (api/submission.py).

Bytes go straight to storage as they arrive (shared/uploads.py), a megabyte at a time: an API
worker's memory does not grow with an upload. Errors are problem+json where tus allows a body
(not on HEAD)."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import or_, update
from werkzeug.http import http_date

from api.auth import require_key, tenant_id
from api.db import get_db, services
from api.openapi import BEARER, job_responses, spec
from api.problems import Problem
from api.schemas import UploadCreateHeaders, UploadPatchHeaders
from shared.db import changed_rows
from shared.models import Upload, utcnow
from shared.storage import upload_key
from shared.uploads import READ_BYTES, UploadStore, UploadTooLong, bounded, pending_bytes
from shared.uploads import upload_store as store_for

blueprint = Blueprint("uploads", __name__, url_prefix="/v1/uploads")

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,expiration"
OFFSET_TYPE = "application/offset+octet-stream"
GB = 10**9
# How long a PATCH holds its upload; one that writes longer renews the hold as it goes, and
# one whose process died frees it by this time.
HOLD_SECONDS = 60.0
# How long a HEAD or PATCH waits for a PATCH still writing (a client that lost its connection
# and resumes at once: the old request is still storing what it got).
WAIT_FOR_WRITER_S = 10.0


@blueprint.before_request
def _tus_request() -> None:
    if request.method == "OPTIONS":
        return  # discovery needs neither a key nor a version
    require_key()
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise Problem(
            412,
            "Precondition Failed",
            f"send 'Tus-Resumable: {TUS_VERSION}': this server speaks tus {TUS_VERSION}",
            headers={"Tus-Version": TUS_VERSION},
        )
    # A PATCH body is streamed to storage, not held: the direct-upload cap is not its limit,
    # the largest upload is (None would mean the app's cap, in Flask).
    request.max_content_length = _max_size()


@blueprint.after_request
def _tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = TUS_VERSION
    return response


def _max_size() -> int:
    return int(services().settings.max_upload_gb * GB)


@blueprint.route("", methods=["OPTIONS"], provide_automatic_options=False)
@blueprint.route("/<uuid:upload_id>", methods=["OPTIONS"], provide_automatic_options=False)
def discover(upload_id: uuid.UUID | None = None) -> Response:
    """What this tus server speaks."""
    return Response(
        status=204,
        headers={
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Max-Size": str(_max_size()),
        },
    )


@blueprint.post("")
@spec.validate(
    headers=UploadCreateHeaders,
    resp=job_responses(
        HTTP_201=(None, "Made: its URL is in Location; PATCH the bytes there."),
        errors=(400, 412, 413),
        headers={201: ["Location", "Upload-Expires"]},
    ),
    security=BEARER,
    skip_validation=True,
)
def create_upload() -> Response:
    """Make an upload of Upload-Length bytes for this tenant (tus creation)."""
    svc = services()
    length = _header_int("Upload-Length")
    if length is None:
        raise Problem(400, "Bad Request", "send Upload-Length, the upload's size in bytes")
    if length > _max_size():
        raise Problem(
            413,
            "Upload too large",
            f"an upload holds at most {_max_size()} bytes (ONEIRO_MAX_UPLOAD_GB); "
            f"this one would hold {length}",
            limit=_max_size(),
        )
    meta = _metadata(request.headers.get("Upload-Metadata", ""))
    session, now, tenant = get_db(), utcnow(), tenant_id()
    quota = int(svc.settings.upload_quota_gb * GB)
    pending = pending_bytes(session, tenant, now)
    if pending + length > quota:
        raise Problem(
            413,
            "Upload quota exceeded",
            f"this tenant's unfinished uploads hold {pending} bytes; with {length} more they "
            f"would pass its quota of {quota} (ONEIRO_UPLOAD_QUOTA_GB): submit or delete some",
            limit=quota,
            value=pending,
        )
    upload_id = uuid.uuid4()
    upload = Upload(
        id=upload_id,
        tenant_id=tenant,
        length=length,
        received=0,
        meta=meta,
        key=upload_key(upload_id),
        parts=[],
        tail_bytes=0,
        created_at=now,
        expires_at=now + timedelta(seconds=svc.settings.upload_ttl),
        completed_at=now if length == 0 else None,
    )
    _store().begin(upload)
    session.add(upload)
    session.commit()
    return Response(
        status=201,
        headers={"Location": f"/v1/uploads/{upload_id}", **_expiry(upload.expires_at)},
    )


@blueprint.route("/<uuid:upload_id>", methods=["HEAD"])
def upload_offset(upload_id: uuid.UUID) -> Response:
    """How far the upload got (tus core): Upload-Offset of Upload-Length."""
    upload = _live(upload_id, wait=True)
    headers = {
        "Upload-Offset": str(upload.received),
        "Upload-Length": str(upload.length),
        "Cache-Control": "no-store",
        **_expiry(upload.expires_at),
    }
    if upload.meta:
        headers["Upload-Metadata"] = _encode_metadata(upload.meta)
    return Response(status=200, headers=headers)


@blueprint.patch("/<uuid:upload_id>")
@spec.validate(
    headers=UploadPatchHeaders,
    resp=job_responses(
        HTTP_204=(None, "Stored: Upload-Offset says how far the upload now is."),
        errors=(400, 404, 409, 410, 412, 415, 423),
        headers={204: ["Upload-Offset", "Upload-Expires"]},
    ),
    security=BEARER,
    skip_validation=True,
)
def append_upload(upload_id: uuid.UUID) -> Response:
    """Append the body at Upload-Offset (tus core), straight to storage."""
    svc = services()
    if request.mimetype != OFFSET_TYPE:
        raise Problem(415, "Unsupported Media Type", f"send the bytes as {OFFSET_TYPE}")
    offset = _header_int("Upload-Offset")
    if offset is None:
        raise Problem(400, "Bad Request", "send Upload-Offset, where these bytes start")
    upload = _live(upload_id, wait=True)
    if offset != upload.received:
        raise _offset_conflict(upload)
    if request.content_length is not None and offset + request.content_length > upload.length:
        raise Problem(
            400,
            "Bad Request",
            f"{request.content_length} bytes at offset {offset} would pass the upload's "
            f"length of {upload.length}",
        )
    session = get_db()
    if not _hold(upload, offset):  # another PATCH came first: it moved the offset, or writes
        _live(upload_id, wait=True)
        raise _offset_conflict(upload)
    session.refresh(upload)
    try:
        _store().append(upload, bounded(_body(upload), upload.length - upload.received))
    except UploadTooLong as exc:
        raise Problem(400, "Bad Request", f"{exc}; the rest was not stored") from None
    finally:
        now = utcnow()
        upload.busy_until = None
        upload.expires_at = now + timedelta(seconds=svc.settings.upload_ttl)
        if upload.received == upload.length:
            upload.completed_at = now
        session.commit()
    return Response(
        status=204,
        headers={"Upload-Offset": str(upload.received), **_expiry(upload.expires_at)},
    )


@blueprint.delete("/<uuid:upload_id>")
@spec.validate(
    resp=job_responses(
        HTTP_204=(None, "Ended: its bytes are deleted."), errors=(404, 409, 410, 412, 423)
    ),
    security=BEARER,
)
def delete_upload(upload_id: uuid.UUID) -> Response:
    """End the upload and delete its bytes (tus termination)."""
    upload = _live(upload_id, wait=True)
    if not _hold(upload, upload.received):
        raise Problem(423, "Locked", "bytes are being written to this upload; try again")
    _discard(upload)
    return Response(status=204)


def _store() -> UploadStore:
    svc = services()
    return store_for(svc.storage, svc.settings.upload_part_bytes)


def _discard(upload: Upload) -> None:
    """Delete the upload's bytes, then its row."""
    _store().discard(upload)
    session = get_db()
    session.delete(upload)
    session.commit()


def _live(upload_id: uuid.UUID, wait: bool = False) -> Upload:
    """This tenant's upload (404 for another's), not yet a job's, not expired (410; its
    bytes are deleted then and there). With `wait`, once no PATCH is writing to it (a
    client resuming at once may find its previous PATCH still storing), or 423."""
    session = get_db()
    deadline = time.monotonic() + (WAIT_FOR_WRITER_S if wait else 0)
    while True:
        upload = session.get(Upload, upload_id, populate_existing=True)
        if upload is None or upload.tenant_id != tenant_id():
            raise Problem(404, "Upload not found", f"there is no upload {upload_id}")
        if upload.job_id is not None:
            raise Problem(
                409,
                "Upload taken",
                f"upload {upload_id} is the input of job {upload.job_id}; it is the job's now",
                job=str(upload.job_id),
            )
        now = utcnow()
        if upload.expires_at <= now and (upload.busy_until is None or upload.busy_until < now):
            _discard(upload)
            raise Problem(
                410, "Upload expired", f"upload {upload_id} expired unused and was deleted"
            )
        if upload.busy_until is None or upload.busy_until < now:
            return upload
        session.rollback()  # a fresh read next time round
        if time.monotonic() >= deadline:
            raise Problem(423, "Locked", "bytes are being written to this upload; try again")
        time.sleep(0.1)


def _hold(upload: Upload, offset: int) -> bool:
    """Take the upload for one writer, if it is still at `offset` and no one holds it."""
    now = utcnow()
    session = get_db()
    taken = changed_rows(
        session.execute(
            update(Upload)
            .where(
                Upload.id == upload.id,
                Upload.received == offset,
                Upload.job_id.is_(None),
                or_(Upload.busy_until.is_(None), Upload.busy_until < now),
            )
            .values(busy_until=now + timedelta(seconds=HOLD_SECONDS))
            .execution_options(synchronize_session=False)
        )
    )
    session.commit()
    return bool(taken)


def _body(upload: Upload) -> Iterator[bytes]:
    """The request body a megabyte at a time, renewing the hold as it goes."""
    renewed = time.monotonic()
    stream = request.stream
    while chunk := stream.read(READ_BYTES):
        yield chunk
        if time.monotonic() - renewed > HOLD_SECONDS / 3:
            renewed = time.monotonic()
            with services().sessions() as session:
                session.execute(
                    update(Upload)
                    .where(Upload.id == upload.id)
                    .values(busy_until=utcnow() + timedelta(seconds=HOLD_SECONDS))
                )
                session.commit()


def _offset_conflict(upload: Upload) -> Problem:
    return Problem(
        409,
        "Conflict",
        f"the upload is at offset {upload.received}, not where these bytes start: "
        "HEAD it and send from there",
        offset=upload.received,
    )


def _header_int(name: str) -> int | None:
    text = request.headers.get(name)
    if text is None:
        return None
    if not text.isdigit() or len(text) > 20:
        raise Problem(400, "Bad Request", f"{name} is a number of bytes, not {text[:40]!r}")
    return int(text)


def _metadata(text: str) -> dict[str, Any]:
    """Upload-Metadata: comma-separated `key base64(value)` pairs (the value optional)."""
    meta: dict[str, Any] = {}
    for pair in filter(None, (item.strip() for item in text.split(","))):
        key, _, value = pair.partition(" ")
        try:
            meta[key] = base64.b64decode(value, validate=True).decode() if value else None
        except (binascii.Error, UnicodeDecodeError):
            raise Problem(
                400, "Bad Request", f"Upload-Metadata: the value of {key!r} is not base64 text"
            ) from None
    if len(text) > 4096:
        raise Problem(400, "Bad Request", "Upload-Metadata is longer than 4096 characters")
    return meta


def _encode_metadata(meta: dict[str, Any]) -> str:
    return ",".join(
        key if value is None else f"{key} {base64.b64encode(value.encode()).decode()}"
        for key, value in meta.items()
    )


def _expiry(moment: datetime) -> dict[str, str]:
    return {"Upload-Expires": http_date(moment)}
