"""GET /v1/presets: the named looks a job may start from (`params.preset`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api.auth import require_key
from api.openapi import BEARER, job_responses, spec
from api.schemas import PresetList
from shared.presets import PRESETS, preset_json

blueprint = Blueprint("presets", __name__, url_prefix="/v1/presets")
blueprint.before_request(require_key)


@blueprint.get("")
@spec.validate(resp=job_responses(HTTP_200=PresetList), security=BEARER)
def list_presets() -> dict[str, Any]:
    """The named looks, each with its params and a thumbnail."""
    return {"presets": [preset_json(preset) for preset in PRESETS.values()]}
