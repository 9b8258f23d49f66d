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
from shared.params import RenderParams, look_params

RECIPE_VERSION = 1


class RecipeRefused(ValueError):
    """The recipe given with a job is not one Oneiro can render from; the message says why."""


class WeightsMismatch(RecipeRefused):
    """A recipe was rendered with other weights than the ones here: its look cannot be had."""


# What beside its params made a render, compared when a recipe is rendered again: the weights
# decide the look; the engine, backend, precision and device whether the pixels come out
# identical (the same kind of machine).
MACHINE_FACTS = ("weights", "engine", "backend", "precision", "device")
# The job's guide image and mask, by digest (None: it had none): part of the look too.
CONTROL_FACTS = ("guide", "mask")


def engine_version() -> str:
    """The version of the Oneiro package that rendered (its engine is part of it)."""
    try:
        return metadata.version("oneiro")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def make_recipe(
    params: dict[str, Any],
    *,
    weights: str,
    backend: str,
    precision: str,
    device: str | None = None,
    guide: bytes | None = None,
    mask: bytes | None = None,
) -> dict[str, Any]:
    """The recipe of a render with resolved `params` (seed included) on this worker; `device`
    ("cpu", or "gpu" and its CUDA compute capability) where an engine ran; the digests of the
    `guide` and `mask` files it was steered with (None where none)."""
    recipe = {
        "oneiro_recipe": RECIPE_VERSION,
        "params": params,
        "backbone": params.get("model"),
        "weights": weights,
        "engine": engine_version(),
        "backend": backend,
        "precision": precision,
        "guide": _bytes_digest(guide),
        "mask": _bytes_digest(mask),
    }
    return recipe if device is None else {**recipe, "device": device}


def _bytes_digest(data: bytes | None) -> str | None:
    return None if data is None else "sha256:" + hashlib.sha256(data).hexdigest()


def device_name(device: Any) -> str:
    """What kind of machine rendered (the engine's Device), as a recipe records it: "cpu", or
    "gpu" and its CUDA compute capability; a re-run is identical only on the same kind."""
    if device.kind != "gpu" or device.compute_capability is None:
        return str(device.kind)
    major, minor = device.compute_capability
    return f"gpu {major}.{minor}"


def definite_weights(digest: Any) -> bool:
    """Whether a weights digest names its weights: seeded random ones, or a file's sha256
    ('imagenet' is weights Keras had yet to download, whose file was not hashed)."""
    return digest == "random" or (isinstance(digest, str) and digest.startswith("sha256:"))


def check_weights(asked: dict[str, Any], model: str, digest: str) -> None:
    """WeightsMismatch when the recipe `asked` to render again dreamed `model` with other
    weights than `digest` (this deployment's): the same params on other weights are another
    look. Says nothing when either side's weights are unknown, or the model was changed."""
    theirs = asked.get("weights")
    comparable = definite_weights(theirs) and definite_weights(digest)
    if asked.get("backbone") == model and comparable and theirs != digest:
        raise WeightsMismatch(
            f"the recipe was rendered with {model} weights {theirs}, and the ones here are "
            f"{digest}: the same look needs the same weights. Give the workers that weights file "
            "(ONEIRO_WEIGHTS or ONEIRO_WEIGHTS_DIR), or send the recipe's params as 'params' to "
            "render them with these weights."
        )


def rerun_verdict(asked: dict[str, Any], made: dict[str, Any]) -> dict[str, Any]:
    """How faithfully the render whose recipe is `made` re-ran the recipe `asked`: what
    differs (name -> [asked, made]: the params sent over the recipe's, the machine facts, the
    guide and mask),
    what could not be compared (facts a side lacks, weights never hashed), and `faithful`
    when nothing differs and nothing is unknown: the identical image from the same input."""
    differs: dict[str, list[Any]] = {}
    unknown: list[str] = []
    for name, value in look_params(asked.get("params", {})).items():
        if made["params"].get(name) != value:
            differs[f"params.{name}"] = [value, made["params"].get(name)]
    for fact in MACHINE_FACTS:
        theirs, ours = asked.get(fact), made.get(fact)
        # Weights never hashed ('imagenet') are as unknown as a fact an older recipe lacks.
        hashed = fact != "weights" or (definite_weights(theirs) and definite_weights(ours))
        if theirs is None or ours is None or not hashed:
            unknown.append(fact)
        elif theirs != ours:
            differs[fact] = [theirs, ours]
    for fact in CONTROL_FACTS:  # None is "no guide" here, not unknown
        if fact not in asked or fact not in made:
            unknown.append(fact)
        elif asked[fact] != made[fact]:
            differs[fact] = [asked[fact], made[fact]]
    verdict = {"faithful": not differs and not unknown, "differs": differs, "unknown": unknown}
    return {"of": asked["job"], **verdict} if "job" in asked else verdict


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
