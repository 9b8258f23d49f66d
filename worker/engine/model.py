"""The dream model: a Keras backbone cut at the chosen layers, and its weights."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from worker.engine.gradients import make_gradient_fn  # noqa: E402

IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
IMAGENET_NOTOP_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"
IMAGENET_NOTOP_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
DOWNLOAD_TIMEOUT_S = 60.0

# Smallest input side for which InceptionV3 still produces every mixed layer.
INCEPTION_V3_MIN_SIDE = 75
# Context around each tile. InceptionV3's valid-padded stride-2 layers give no gradient to the
# last rows and columns of an input (up to 4 measured at mixed5); 16 covers them with room.
INCEPTION_V3_MARGIN = 16

HOW_TO_PROVIDE = (
    "Provide them offline: set ONEIRO_WEIGHTS to the path of a Keras InceptionV3 weights file "
    f"without top (for example {IMAGENET_NOTOP_FILE}), or put that file in the Keras cache "
    "(~/.keras/models/, or $KERAS_HOME/models/)."
)


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be had; the message says how to provide them."""


@dataclass(frozen=True)
class DreamModel:
    """A backbone that outputs the dreamed layers, with its gradient function."""

    layers: tuple[str, ...]
    min_side: int
    margin: int
    # tile (H x W x 3 float32 in [-1, 1]) -> (gradient of the loss, loss)
    gradient: Callable[[np.ndarray], tuple[np.ndarray, float]]


def load_dream_model(
    weights: str, layers: Sequence[str], *, allow_download: bool = True, seed: int = 0
) -> DreamModel:
    """Build InceptionV3 without top with `weights` ('imagenet', 'random' or a file path)."""
    if weights == "random":
        # Seeded random initialization: every code path runs, with no weights to fetch.
        keras.utils.set_random_seed(seed)
        source: str | None = None
    elif weights == "imagenet":
        source = str(_imagenet_weights(allow_download))
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(
                f"ONEIRO_WEIGHTS names {weights!r}, which is not a file. {HOW_TO_PROVIDE}"
            )
        source = str(path)
    try:
        backbone = keras.applications.InceptionV3(include_top=False, weights=source)
    except (OSError, ValueError) as exc:
        raise WeightsUnavailable(
            f"could not load InceptionV3 weights from {source}: {exc}. {HOW_TO_PROVIDE}"
        ) from exc
    outputs = [backbone.get_layer(name).output for name in layers]
    dream = keras.Model(backbone.input, outputs)
    return DreamModel(
        tuple(layers), INCEPTION_V3_MIN_SIDE, INCEPTION_V3_MARGIN, make_gradient_fn(dream)
    )


def _imagenet_weights(allow_download: bool) -> Path:
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    cached = cache / IMAGENET_NOTOP_FILE
    if cached.is_file():
        return cached
    if not allow_download:
        raise WeightsUnavailable(
            f"the ImageNet InceptionV3 weights are not in the Keras cache ({cached}) and "
            f"downloading is off (ONEIRO_WEIGHTS_DOWNLOAD=false). {HOW_TO_PROVIDE}"
        )
    # Keras downloads with no timeout; on a machine whose network drops packets that would
    # hang the job forever instead of failing it.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return Path(
            keras.utils.get_file(
                IMAGENET_NOTOP_FILE,
                IMAGENET_NOTOP_URL,
                cache_subdir="models",
                file_hash=IMAGENET_NOTOP_MD5,
            )
        )
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not download the ImageNet InceptionV3 weights from {IMAGENET_NOTOP_URL} "
            f"({exc}). {HOW_TO_PROVIDE}"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
