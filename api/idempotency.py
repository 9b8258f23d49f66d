"""Idempotency-Key on POST /v1/jobs: the same key and request within IDEMPOTENCY_WINDOW answer
with the original job instead of making another; the same key with another request is a 422.
The key's row is inserted with the job (shared/transitions.py add_job), in one commit."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from flask import request
from sqlalchemy.orm import Session

from api.problems import invalid
from shared.models import IDEMPOTENCY_WINDOW, IdempotencyKey, utcnow

if TYPE_CHECKING:  # only a type here: the schemas import this module's constants
    from api.submission import Submission

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# The window as the messages and the document say it: "24 hours".
WINDOW_TEXT = f"{IDEMPOTENCY_WINDOW / timedelta(hours=1):g} hours"


def fingerprint(submission: Submission) -> tuple[str, str] | None:
    """The request's Idempotency-Key and a fingerprint of what it asks for (image, params as
    sent, webhook, guide and mask), if it has a key."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise invalid([{"field": HEADER, "message": f"must be 1 to {MAX_KEY_LENGTH} characters"}])
    digest = hashlib.sha256(submission.image)
    if submission.upload is not None:  # the bytes are the upload's: it names them
        digest.update(f"upload:{submission.upload.id}".encode())
    digest.update(json.dumps(submission.asked, sort_keys=True).encode())
    if submission.webhook is not None:
        digest.update(submission.webhook.model_dump_json().encode())
    digest.update(submission.controls.fingerprint())
    return key, digest.hexdigest()


def original_job(
    session: Session, tenant_id: uuid.UUID, key: str, request_hash: str
) -> uuid.UUID | None:
    """The job a repeated key made, or None when the key is new (or expired); 422 when the key
    was used for another request."""
    seen = session.get(IdempotencyKey, (tenant_id, key), populate_existing=True)
    if seen is None:
        return None
    if seen.created_at < utcnow() - IDEMPOTENCY_WINDOW:
        session.delete(seen)
        session.commit()
        return None
    if seen.request_hash != request_hash:
        raise invalid(
            [
                {
                    "field": HEADER,
                    "message": f"this key was used within {WINDOW_TEXT} for a different "
                    "request; use a new key",
                }
            ]
        )
    return seen.job_id
