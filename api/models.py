"""GET /v1/models: the backbones this deployment can render, and their layers."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from api.auth import require_key
from api.openapi import BEARER, job_responses, spec
from api.schemas import ModelList
from shared.catalogue import BACKBONES, DEFAULT_BACKBONE
from shared.download_failures import download_failures
from shared.recipes import weights_digest
from shared.weights import renderable_backbones, require_weights

blueprint = Blueprint("models", __name__, url_prefix="/v1/models")
blueprint.before_request(require_key)


@blueprint.get("")
@spec.validate(resp=job_responses(HTTP_200=ModelList), security=BEARER)
def list_models() -> dict[str, Any]:
    """The backbones this deployment has weights for (a job naming another is refused), each
    with its dreamable layers."""
    settings = current_app.extensions["oneiro"].settings
    failures = download_failures(settings)
    return {
        "models": [
            {
                "name": name,
                "default": name == DEFAULT_BACKBONE,
                "default_layers": list(BACKBONES[name].default_layers),
                "layers": [
                    {"name": layer, "channels": channels}
                    for layer, channels in BACKBONES[name].layers.items()
                ],
                "weights": weights_digest(require_weights(settings, name, failures)),
            }
            for name in renderable_backbones(settings, failures)
        ]
    }
