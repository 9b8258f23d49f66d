"""GET /v1/presets: the named looks a job may start from (`params.preset`)."""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint
from pydantic import BaseModel, Field

from api.auth import current_tenant
from api.openapi import BEARER, job_responses, spec
from shared.presets import PRESETS, preset_json

blueprint = Blueprint("presets", __name__, url_prefix="/v1/presets")


class PresetOut(BaseModel):
    """A named look."""

    name: Annotated[str, Field(description="What `params.preset` names it by.")]
    title: str
    description: str
    params: Annotated[dict[str, Any], Field(description="The params it sets; yours override.")]
    thumbnail_url: Annotated[str, Field(description="A small JPEG of a photo in this look.")]


class PresetList(BaseModel):
    """GET /v1/presets."""

    presets: list[PresetOut]


@blueprint.before_request
def _authenticate() -> None:
    current_tenant()  # like every /v1 route


@blueprint.get("")
@spec.validate(resp=job_responses(HTTP_200=PresetList), security=BEARER)
def list_presets() -> dict[str, Any]:
    """The named looks, each with its params and a thumbnail."""
    return {"presets": [preset_json(preset) for preset in PRESETS.values()]}
