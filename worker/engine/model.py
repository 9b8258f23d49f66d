"""The dream model: a Keras backbone cut at the chosen layers, its weights and its precision."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from shared.catalogue import BACKBONES, Backbone  # noqa: E402
from shared.weights import how_to_provide, keras_cache  # noqa: E402
from worker.engine.gradients import gpu_compute_capability, make_gradient_fn  # noqa: E402

DOWNLOAD_TIMEOUT_S = 60.0
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# Tiles per model call: about this many pixels. Batches of about 0.6 MP ran 5-10% faster per
# pixel than single tiles on a 2-core CPU, small tiles gaining most (benchmarks/README.md).
BATCH_PIXELS = 600_000
MAX_BATCH = 16

CAFFE_MEANS_BGR = (103.939, 116.779, 123.68)


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be had; the message says how to provide them."""


@dataclass(frozen=True)
class DreamModel:
    """A backbone that outputs the dreamed layers, with its batched gradient function."""

    backbone: Backbone
    layers: tuple[str, ...]
    precision: str
    # tiles (B x H x W x 3 float32 in [-1, 1]) -> (gradient of each tile's loss, losses (B,))
    gradient: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

    def batch_size(self, window: tuple[int, int]) -> int:
        """How many tiles of `window` go through the model in one call."""
        return max(1, min(MAX_BATCH, round(BATCH_PIXELS / (window[0] * window[1]))))


def load_dream_model(
    weights: str,
    layers: Mapping[str, float] | Sequence[str],
    *,
    model: str = "inception_v3",
    channels: Mapping[str, Sequence[int]] | None = None,
    precision: str = "auto",
    allow_download: bool = True,
    seed: int = 0,
) -> DreamModel:
    """Build `model` with `weights` ('imagenet', 'random' or a file path), cut at `layers`."""
    backbone = BACKBONES[model]
    if not isinstance(layers, Mapping):
        layers = {name: 1.0 for name in layers}
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    dtype = best_precision() if precision == "auto" else precision
    full = _backbone(backbone, weights, allow_download, seed)
    cut = keras.Model(full.input, [full.get_layer(name).output for name in layers])
    selected = [list(channels[name]) if channels and name in channels else None for name in layers]
    gradient = make_gradient_fn(
        fold_batch_norms(cut, dtype),
        PREPROCESSORS[backbone.preprocessing],
        [float(w) for w in layers.values()],
        selected,
    )
    return DreamModel(backbone, tuple(layers), dtype, gradient)


@cache
def best_precision() -> str:
    """The fastest precision measured here: bfloat16 on GPUs that have it (Ampere and newer),
    float16 on older GPUs, bfloat16 on CPUs with native bfloat16, float32 on other CPUs."""
    capability = gpu_compute_capability()
    if capability is not None:
        return "bfloat16" if capability >= (8, 0) else "float16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if "avx512_bf16" in flags or "amx_bf16" in flags else "float32"


def _backbone(backbone: Backbone, weights: str, allow_download: bool, seed: int) -> keras.Model:
    build = getattr(keras.applications, backbone.keras_name)
    if weights == "random":
        # Seeded random initialization: every code path runs, with no weights to fetch.
        keras.utils.set_random_seed(seed)
        return build(include_top=False, weights=None)
    if weights == "imagenet":
        source = _imagenet_weights(backbone, allow_download)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(
                f"the weights file {weights} does not exist. {how_to_provide(backbone)}"
            )
        source = str(path)
    try:
        return build(include_top=False, weights=source)
    except (OSError, ValueError) as exc:
        # Keras's own message is many lines about layer shapes; it goes to the log (the
        # exception's cause), the job says which file and what to do.
        raise WeightsUnavailable(
            f"{source} does not hold {backbone.keras_name} weights without the top. "
            f"{how_to_provide(backbone)}"
        ) from exc


def _imagenet_weights(backbone: Backbone, allow_download: bool) -> str:
    cached = keras_cache() / backbone.weights_file
    if cached.is_file():
        return str(cached)
    if not allow_download:
        raise WeightsUnavailable(
            f"the ImageNet {backbone.keras_name} weights are not in the Keras cache ({cached}) "
            f"and downloading is off (ONEIRO_WEIGHTS_DOWNLOAD=false). "
            f"{how_to_provide(backbone)}"
        )
    # Keras downloads with no timeout; on a network that drops packets the job would hang
    # forever instead of failing.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        getattr(keras.applications, backbone.keras_name)(include_top=False, weights="imagenet")
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not download the ImageNet {backbone.keras_name} weights "
            f"({type(exc).__name__}). {how_to_provide(backbone)}"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return str(cached)


def fold_batch_norms(model: keras.Model, dtype: str) -> keras.Model:
    """`model` in `dtype`, with each inference batch norm folded into the convolution before it.

    A folded network computes the same function with one layer less per convolution; in
    bfloat16 that roughly halves the time of a gradient (benchmarks/engine.py).
    """
    config = model.get_config()
    producers = {layer["name"]: _inbound(layer) for layer in config["layers"]}
    consumers: dict[str, int] = {}
    for inputs in producers.values():
        for name in inputs:
            consumers[name] = consumers.get(name, 0) + 1
    convolutions = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    folds = {}  # batch norm name -> convolution name
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and len(producers[layer.name]) == 1:
            source = model.get_layer(producers[layer.name][0])
            if isinstance(source, convolutions) and consumers.get(source.name) == 1:
                folds[layer.name] = source.name
    folded_convs = set(folds.values())

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in folds:
            return Folded(name=layer.name, dtype=dtype)
        layer_config = {**layer.get_config(), "dtype": dtype}
        if layer.name in folded_convs:
            layer_config["use_bias"] = True
        return layer.__class__.from_config(layer_config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in folds or not layer.weights:
            continue
        weights = layer.get_weights()
        if layer.name in folded_convs:
            norm = model.get_layer(next(bn for bn, conv in folds.items() if conv == layer.name))
            weights = _fold(layer, weights, norm)
        folded.get_layer(layer.name).set_weights(weights)
    return folded


def _fold(
    conv: keras.layers.Layer, weights: list[np.ndarray], norm: keras.layers.BatchNormalization
) -> list[np.ndarray]:
    """A convolution's kernel and bias with the batch norm that follows it folded in."""
    stats = {
        w.path.split("/")[-1]: value
        for w, value in zip(norm.weights, norm.get_weights(), strict=True)
    }
    scale = stats.get("gamma", 1.0) / np.sqrt(stats["moving_variance"] + norm.epsilon)
    shift = stats.get("beta", 0.0) - stats["moving_mean"] * scale
    kernel = weights[0]
    if isinstance(conv, keras.layers.DepthwiseConv2D):  # kernel: h, w, channels, multiplier
        kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    bias = weights[1] * scale if len(weights) > 1 else 0.0
    return [kernel.astype(np.float32), (bias + shift).astype(np.float32)]


def _inbound(layer_config: dict) -> list[str]:
    names: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__":
                names.append(node["config"]["keras_history"][0])
            else:
                for value in node.values():
                    walk(value)
        elif isinstance(node, list | tuple):
            for value in node:
                walk(value)

    walk(layer_config.get("inbound_nodes", []))
    return names


class Folded(keras.layers.Layer):
    """Stands where a batch norm was folded into the convolution before it."""

    def call(self, inputs: object, mask: object = None) -> object:
        return inputs


def preprocess_tf(pixels: Any) -> Any:
    """The engine's [-1, 1] RGB pixels are already what "tf"-mode backbones expect."""
    return pixels


def preprocess_caffe(pixels: Any) -> Any:
    """[-1, 1] RGB to the mean-subtracted [0, 255] BGR that "caffe"-mode backbones expect."""
    bgr = keras.ops.flip((pixels + 1.0) * 127.5, axis=-1)
    return bgr - keras.ops.convert_to_tensor(CAFFE_MEANS_BGR, dtype=bgr.dtype)


PREPROCESSORS = {"tf": preprocess_tf, "caffe": preprocess_caffe}
