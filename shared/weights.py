"""Which backbones this deployment has weights for, and where the worker loads them from.

Free of TensorFlow, so that the API can refuse at submit a backbone no worker could load, and
list the ones they can (GET /v1/models); the worker asks the same function where to load from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from shared.catalogue import BACKBONES, DEFAULT_BACKBONE, Backbone

if TYPE_CHECKING:
    from shared.settings import Settings


class NoWeights(RuntimeError):
    """This deployment has no weights for the backbone; the message says how to provide them."""


def keras_cache() -> Path:
    """Where Keras keeps the weights it downloads (and looks for them first)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def how_to_provide(backbone: Backbone) -> str:
    """One sentence on how to give a deployment the weights of `backbone`."""
    return (
        f"Set ONEIRO_WEIGHTS=/path/to/{backbone.weights_file} (Keras' ImageNet "
        f"{backbone.keras_name} weights, no top), put it in ONEIRO_WEIGHTS_DIR or the Keras cache "
        "(~/.keras/models/), or set ONEIRO_WEIGHTS=random."
    )


def weights_source(settings: Settings, model: str) -> str | None:
    """What the worker loads `model` from: 'random', 'imagenet' (downloaded on first use) or a
    weights file; None when this deployment has no weights for it."""
    backbone = BACKBONES[model]
    if settings.weights == "random":
        return "random"
    if settings.weights != "imagenet":
        # One weights file: the backbone whose Keras file name it has, else the default one's.
        named = Path(settings.weights).name
        owner = next(
            (name for name, other in BACKBONES.items() if other.weights_file == named),
            DEFAULT_BACKBONE,
        )
        if owner == model:
            return settings.weights
    for directory in (settings.weights_dir, keras_cache()):
        if directory is not None and (directory / backbone.weights_file).is_file():
            return str(directory / backbone.weights_file)
    if settings.weights == "imagenet" and settings.weights_download:
        return "imagenet"
    return None


def _usable(settings: Settings, model: str, failures: Mapping[str, str]) -> str | None:
    source = weights_source(settings, model)
    return None if source == "imagenet" and model in failures else source


def renderable_backbones(
    settings: Settings, failures: Mapping[str, str] | None = None
) -> list[str]:
    """The backbones this deployment has weights for, in catalogue order (`failures`: the
    downloads known to fail, download_failures, whose backbones it cannot render now)."""
    failures = failures or {}
    return [name for name in BACKBONES if _usable(settings, name, failures) is not None]


def require_weights(
    settings: Settings, model: str, failures: Mapping[str, str] | None = None
) -> str:
    """`weights_source`, or NoWeights saying what this deployment can render instead."""
    failures = failures or {}
    source = _usable(settings, model, failures)
    if source is None and model in failures:
        raise NoWeights(
            f"this deployment could not download the ImageNet weights for {model} lately "
            f"({failures[model]}): it may have no internet. " + how_to_provide(BACKBONES[model])
        )
    if source is None:
        others = renderable_backbones(settings, failures)
        can = f"it can render {', '.join(others)}" if others else "it can render none"
        raise NoWeights(
            f"this deployment has no weights for {model} ({can}). "
            + how_to_provide(BACKBONES[model])
        )
    return source
