"""What POST /v1/jobs sends, read and checked: the multipart parts (`image`, `params`,
`webhook`), the image's format and size, the job's cost, and the tenant's cap on active jobs.
Every refusal is a 4xx problem+json naming the part; nothing is stored before all pass."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pydantic_core
from flask import request
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.auth import tenant_id
from api.controls import ControlParts, read_controls
from api.db import get_db
from api.problems import Problem, invalid
from shared.cost import CostRefused, check_limits
from shared.images import EXTENSIONS, ImageRejected, ImageTooLarge, inspect_image
from shared.models import Job, utcnow
from shared.params import RenderParams
from shared.recipes import RecipeRefused, recipe_params
from shared.settings import Settings
from shared.transitions import count_active
from shared.webhooks import WebhookRefused, WebhookSpec, check_target
from shared.weights import NoWeights, require_weights

FORM_PARTS = {"image", "params", "webhook", "guide", "mask", "recipe"}
# When a tenant at its cap of active jobs may try again: a render takes seconds to hours.
ACTIVE_CAP_RETRY_AFTER_S = 30


@dataclass(frozen=True)
class Submission:
    """A job request that passed every check."""

    params: RenderParams
    # The params part as sent (not resolved): what the request asked for, for idempotency.
    asked: dict[str, Any]
    image: bytes
    extension: str
    width: int
    height: int
    webhook: WebhookSpec | None
    # The optional guide and mask parts, checked.
    controls: ControlParts


def read_submission(settings: Settings) -> Submission:
    """This request's parts, checked (415, 413 or 422 otherwise)."""
    params, asked = _read_params()
    try:
        require_weights(settings, params.model)
    except NoWeights as exc:  # accepted, it would fail on the worker: refuse it now
        raise invalid([{"field": "params.model", "message": str(exc)}]) from None
    if params.start_by is not None and params.start_by <= utcnow():
        # It would only be recorded to expire at once.
        raise invalid(
            [{"field": "params.start_by", "message": "start_by has passed: give a later time"}]
        )
    upload = request.files.get("image")
    if upload is None:
        raise invalid(
            [{"field": "image", "message": "a multipart file part named 'image' is required"}]
        )
    data = upload.read()
    try:
        image_format, width, height = inspect_image(data, settings.max_pixels)
    except ImageTooLarge as exc:
        raise Problem(413, "Image too large", str(exc), limit=settings.max_pixels) from None
    except ImageRejected as exc:
        raise invalid([{"field": "image", "message": str(exc)}]) from None
    try:
        check_limits(width, height, params, settings)
    except CostRefused as exc:
        raise invalid([{"field": exc.field, "message": str(exc)}]) from None
    return Submission(
        params=params,
        asked=asked,
        image=data,
        extension=EXTENSIONS[image_format],
        width=width,
        height=height,
        webhook=_read_webhook(settings),
        controls=read_controls(asked, (width, height), settings, EXTENSIONS),
    )


def check_active_cap(session: Session, tenant_id: uuid.UUID, limit: int) -> None:
    """429 when the tenant already has `limit` jobs queued or running.

    A soft cap: submits of one tenant that arrive at the same moment each count the jobs
    committed before them, so the cap can be passed by as many as are in flight together
    (at most the API's threads). Locking the tenant's row until commit would make it exact,
    and would also line up every submit of a busy tenant behind one lock: measured, that
    doubled submit latency at 100 per second (benchmarks/README.md).
    """
    active = count_active(session, tenant_id)
    if active >= limit:
        raise Problem(
            429,
            "Too many active jobs",
            f"this tenant has {active} jobs queued or running; the limit is {limit}: "
            "wait for some to finish or cancel some",
            headers={"Retry-After": str(ACTIVE_CAP_RETRY_AFTER_S)},
            limit=limit,
            value=active,
        )


def _read_webhook(settings: Settings) -> WebhookSpec | None:
    """The optional 'webhook' part: {"url": ..., "events": [...]}, to a target we may call."""
    text = _form_text("webhook")
    if text is None:
        return None
    try:
        webhook = WebhookSpec.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise invalid(_field_errors("webhook", exc)) from None
    try:
        check_target(str(webhook.url), settings.webhook_allow_private)
    except WebhookRefused as exc:
        raise invalid([{"field": "webhook.url", "message": str(exc)}]) from None
    return webhook


def _form_text(name: str) -> str | None:
    """A form part sent as a field or as a file, as text; None when absent."""
    if name in request.files:
        return request.files[name].read().decode("utf-8", errors="replace")
    return request.form.get(name)


def _field_errors(part: str, exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join([part, *map(str, e["loc"])]), "message": e["msg"]} for e in exc.errors()
    ]


def _read_params() -> tuple[RenderParams, dict[str, Any]]:
    # A part with an empty name or none (werkzeug keys that one None) is unknown, not a 500.
    names = (set(request.form) | set(request.files)) - FORM_PARTS
    unknown = sorted({name or "(unnamed part)" for name in names})
    if not request.content_type or not request.content_type.startswith("multipart/form-data"):
        raise Problem(
            415,
            "Unsupported Media Type",
            "send the job as multipart/form-data with an 'image' file part and an "
            "optional 'params' JSON part",
        )
    if unknown:
        raise invalid(
            [
                {
                    "field": name,
                    "message": (
                        "unknown form part; expected 'image', 'params', 'webhook', 'guide', "
                        "'mask' and 'recipe'"
                    ),
                }
                for name in unknown
            ]
        )
    text = _form_text("params") or "{}"
    try:
        # pydantic's parser, which validates the part below: it refuses numbers past its range
        # and nesting past its depth with a ValueError, where json.loads raised RecursionError.
        raw = pydantic_core.from_json(text)
    except ValueError as exc:
        raise invalid([{"field": "params", "message": f"not valid JSON: {exc}"}]) from None
    if not isinstance(raw, dict):
        raise invalid([{"field": "params", "message": "must be a JSON object"}])
    recipe = _read_recipe()
    if recipe is not None:
        if "preset" in raw:
            raise invalid(
                [{"field": "recipe", "message": "give a recipe or a params.preset, not both"}]
            )
        # The recipe's params, overridden by the ones sent: the same look, on a new image.
        raw = {**recipe, **raw}
        text = json.dumps(raw)
    try:
        return RenderParams.model_validate_json(text, strict=True), raw
    except ValidationError as exc:
        raise invalid(_field_errors("params", exc)) from None


def _read_recipe() -> dict[str, Any] | None:
    """The params of the optional 'recipe' part: a job id of this tenant, or a recipe's JSON."""
    text = _form_text("recipe")
    if text is None:
        return None
    try:
        source = uuid.UUID(text.strip())
    except ValueError:
        source = None
    if source is not None:
        job = get_db().get(Job, source)
        if job is None or job.tenant_id != tenant_id():
            message = f"there is no job {source} of this tenant to take a recipe from"
            raise invalid([{"field": "recipe", "message": message}])
        return dict(job.params)
    try:
        return recipe_params(pydantic_core.from_json(text))
    except ValueError as exc:  # RecipeRefused, or not JSON at all
        message = str(exc) if isinstance(exc, RecipeRefused) else "neither a job id nor JSON"
        raise invalid([{"field": "recipe", "message": message}]) from None
