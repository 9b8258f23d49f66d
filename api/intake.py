"""A submission becomes a job: its files stored, its row (with its Idempotency-Key, and the
upload it takes) inserted in one commit, and nothing left behind when anything on the way is
refused. The view (api/jobs.py submit_job) reads the request and answers; this records."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db import Services
from api.problems import Problem
from api.submission import Submission, check_active_cap
from shared import transitions
from shared.models import Job
from shared.storage import guide_key, input_key, job_prefix, mask_key


class KeyTaken(Exception):
    """Another request with the same Idempotency-Key committed its job first: answer as its
    replay (nothing of this one was kept)."""


def record_job(
    svc: Services,
    session: Session,
    submission: Submission,
    tenant_id: uuid.UUID,
    idempotency: tuple[str, str] | None,
) -> Job:
    """Store the submission's files and commit its queued job; KeyTaken when the key lost a
    race; any refusal (the active-job cap, an upload taken meanwhile) leaves no file and no row."""
    job_id = uuid.uuid4()
    upload = submission.upload
    if upload is not None:  # the upload's bytes stay where they are: the job takes them
        stored_input = upload.key
    else:
        stored_input = input_key(job_id, submission.extension)
        svc.storage.put(stored_input, submission.image)
    stored_guide = stored_mask = None
    controls = submission.controls
    if controls.guide is not None:
        stored_guide = guide_key(job_id, controls.guide.extension)
        svc.storage.put(stored_guide, controls.guide.data)
    if controls.mask is not None:
        stored_mask = mask_key(job_id, controls.mask.extension)
        svc.storage.put(stored_mask, controls.mask.data)
    webhook = submission.webhook
    job = Job(
        id=job_id,
        tenant_id=tenant_id,
        params=submission.params.model_dump(mode="json"),
        input_key=stored_input,
        input_width=submission.width,
        input_height=submission.height,
        progress={},
        webhook_url=str(webhook.url) if webhook else None,
        webhook_events=list(webhook.events) if webhook else None,
        guide_key=stored_guide,
        mask_key=stored_mask,
        rerun_of=submission.rerun_of,
        kind=submission.kind,
        frames=submission.frames,
    )
    try:
        # Counted last, just before the insert, so it sees as many committed jobs as it can.
        check_active_cap(session, tenant_id, svc.settings.max_active_jobs)
        transitions.add_job(session, job, idempotency)
        if upload is not None:
            session.flush()  # the job row first: the upload refers to it
            if not transitions.take_upload(session, upload.id, job_id):
                raise Problem(
                    409,
                    "Upload taken",
                    f"upload {upload.id} is already the input of another job, or expired",
                )
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        svc.storage.delete_prefix(job_prefix(job_id))
        if idempotency is None:
            raise
        raise KeyTaken from exc
    except Exception:
        session.rollback()
        svc.storage.delete_prefix(job_prefix(job_id))  # a refused request leaves nothing behind
        raise
    return job
