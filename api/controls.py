"""The optional `guide` and `mask` parts of a job submission, read and checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import request

from api.problems import Problem, invalid
from shared.controls import inspect_guide, inspect_mask
from shared.images import ImageRejected, ImageTooLarge
from shared.params import RenderParams
from shared.settings import Settings

UNSET = object()


@dataclass(frozen=True)
class Upload:
    """A checked file part: its bytes and the extension it is stored under."""

    data: bytes
    extension: str


@dataclass(frozen=True)
class ControlParts:
    """A submission's guide image and mask, each None when not sent."""

    guide: Upload | None
    mask: Upload | None

    def fingerprint(self) -> bytes:
        """What an Idempotency-Key's request hash adds for them."""
        return b"".join(
            f"{name}:{len(part.data)}:".encode() + part.data
            for name, part in (("guide", self.guide), ("mask", self.mask))
            if part is not None
        )


def read_controls(
    asked: dict[str, Any],
    image_size: tuple[int, int],
    settings: Settings,
    extensions: dict[str, str],
) -> ControlParts:
    """The `guide` and `mask` file parts, checked against the limits and the params asked
    (`asked`: the params as sent), with the extension of each format (`extensions`, the input's
    own); 413 or 422 (problem+json) when one is wrong."""
    limit = settings.max_pixels
    guide = _read("guide", lambda data: inspect_guide(data, limit), limit, extensions)
    mask = _read("mask", lambda data: inspect_mask(data, limit, image_size), limit, extensions)
    # Params that steer with a part that was not sent would be silently ignored. Their default
    # is no steering, and comes back in a recipe taken from an unguided job: not refused.
    errors = [
        {"field": f"params.{name}", "message": f"needs a '{part}' file part"}
        for name, part, sent in (("guide_weight", "guide", guide), ("mask_layers", "mask", mask))
        if asked.get(name, UNSET) not in (UNSET, RenderParams.model_fields[name].default)
        and sent is None
    ]
    if errors:
        raise invalid(errors)
    return ControlParts(guide, mask)


def _read(name: str, inspect: Any, limit: int, extensions: dict[str, str]) -> Upload | None:
    if name in request.form:
        raise invalid([{"field": name, "message": f"send the {name} as a file part, an image"}])
    upload = request.files.get(name)
    if upload is None:
        return None
    data = upload.read()
    try:
        image_format = inspect(data)
    except ImageTooLarge as exc:
        raise Problem(413, "Image too large", f"{name}: {exc}", limit=limit, field=name) from None
    except ImageRejected as exc:
        raise invalid([{"field": name, "message": str(exc)}]) from None
    return Upload(data, extensions[image_format])
