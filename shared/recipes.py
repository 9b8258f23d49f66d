"""A result's recipe: everything that made it, so the same look can be rendered again.

The worker writes it into the result file's own metadata (shared/images.encode_image) and into
the job row; `oneiro recipe FILE` reads it back; a job submitted with `recipe` (a job id of the
same tenant, or the recipe JSON) renders with its params.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from shared.formats import output_format
from shared.images import encode_image
from shared.params import RenderParams

RECIPE_VERSION = 1


class RecipeRefused(ValueError):
    """The recipe given with a job is not one Oneiro can render from; the message says why."""


def engine_version() -> str:
    """The version of the Oneiro package that rendered (its engine is part of it)."""
    try:
        return metadata.version("oneiro")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def make_recipe(
    params: dict[str, Any], *, weights: str, backend: str, precision: str
) -> dict[str, Any]:
    """The recipe of a render with resolved `params` (seed included) on this worker."""
    return {
        "oneiro_recipe": RECIPE_VERSION,
        "params": params,
        "backbone": params.get("model"),
        "weights": weights,
        "engine": engine_version(),
        "backend": backend,
        "precision": precision,
    }


def recipe_text(recipe: dict[str, Any]) -> str:
    """The recipe as the one line of JSON an output file carries."""
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"))


def encode_result(
    pixels: np.ndarray, params: RenderParams, recipe: dict[str, Any], icc_profile: bytes | None
) -> bytes:
    """A render's file in the format its params ask for, carrying its recipe and the input's
    ICC profile: what the worker stores and `oneiro render` writes alike."""
    return encode_image(
        pixels,
        output_format(params.output_format),
        quality=params.quality,
        recipe=recipe_text(recipe),
        icc_profile=icc_profile,
    )


def weights_digest(source: str) -> str:
    """What identifies the weights loaded from `source` (shared.weights.weights_source):
    `random` (seeded, the same everywhere), or the sha256 of the weights file."""
    if source == "random":
        return "random"
    if source == "imagenet":
        return "imagenet"  # downloaded by Keras on first use; hashed from then on
    path = Path(source)
    stat = path.stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, _size: int, _mtime_ns: int) -> str:
    # Cached by size and time: a render does not re-read 90 MB of weights; a replaced file is.
    with open(path, "rb") as file:
        return "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()


def recipe_params(recipe: Any) -> dict[str, Any]:
    """The params of a recipe sent as JSON (what `oneiro recipe FILE` prints)."""
    if not isinstance(recipe, dict) or not isinstance(recipe.get("params"), dict):
        raise RecipeRefused(
            "a recipe is a job id, or the JSON object an Oneiro result carries "
            '(`oneiro recipe FILE` prints it), with its "params"'
        )
    version = recipe.get("oneiro_recipe")
    if version != RECIPE_VERSION:
        raise RecipeRefused(
            f"recipe version {version!r} is not one this Oneiro reads ({RECIPE_VERSION})"
        )
    return dict(recipe["params"])
