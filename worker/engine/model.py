"""The dream model: a Keras backbone cut at the chosen layers, its weights and its precision."""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from shared.catalogue import BACKBONES, Backbone  # noqa: E402
from shared.weights import how_to_provide, keras_cache  # noqa: E402
from worker.engine import device as policy  # noqa: E402
from worker.engine.device import Device, DeviceOutOfMemory  # noqa: E402

DOWNLOAD_TIMEOUT_S = 60.0
PRECISIONS = ("auto", "float32", "bfloat16", "float16")

CAFFE_MEANS_BGR = (103.939, 116.779, 123.68)


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be had; the message says how to provide them."""


class DownloadFailed(WeightsUnavailable):
    """The ImageNet weights could not be downloaded (`reason`: the error's name)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DreamModel:
    """A backbone that outputs the dreamed layers, with its batched gradient function."""

    backbone: Backbone
    layers: tuple[str, ...]
    precision: str
    # tiles (B x H x W x 3 float32 in [-1, 1]) -> (gradient of each tile's loss, losses (B,))
    gradient: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    device: Device = Device("cpu", None, None)
    backend: str = "tensorflow"
    # (guide_weight, *guide features per layer), tiles -> as `gradient`, for the guided objective
    guided: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None
    # pixels (1 x H x W x 3 float32 in [-1, 1]) -> each layer's activations (1 x h x w x C)
    features: Callable[[np.ndarray], list[np.ndarray]] | None = None

    def batch_size(self, window: tuple[int, int]) -> int:
        """How many tiles of `window` go through the model in one call."""
        return policy.tiles_per_call(self.device, window)


class Gradient:
    """A backend's compiled gradient with float16 loss scaling and a clear out-of-memory error.

    tiles -> (gradient of each tile's loss, losses), the backend's arrays on its device;
    `traces()` counts the model's tracings.
    """

    def __init__(self, compiled: Any, scale: float, is_out_of_memory: Any) -> None:
        self.compiled, self.scale, self.is_out_of_memory = compiled, scale, is_out_of_memory

    def __call__(self, tiles: np.ndarray, *extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        while True:
            try:
                grads, losses = self.compiled(tiles, self.scale, *extra)
            except Exception as exc:
                if not self.is_out_of_memory(exc):
                    raise
                raise DeviceOutOfMemory(out_of_memory_message(tiles.shape)) from exc
            # A scaled float16 gradient that overflowed is worthless: scale less, do it again.
            if self.scale > 1.0 and not bool(keras.ops.all(keras.ops.isfinite(grads))):
                self.scale /= 4.0
                continue
            return grads, losses

    def traces(self) -> int:
        """How many times the model has been traced (once per tile-batch shape)."""
        return int(self.compiled.traces())


def out_of_memory_message(shape: tuple[int, ...]) -> str:
    """What to say when a batch of tiles of `shape` (B x H x W x 3) did not fit."""
    return (
        f"the device ran out of memory computing the gradient of {shape[0]} tile(s) of "
        f"{shape[1]} x {shape[2]} pixels; render with a smaller tile_size, or run one worker "
        "per GPU with nothing else on it"
    )


def backend_module(backend: str | None = None) -> ModuleType:
    """The gradient module of `backend` (default: the one Keras runs on)."""
    name = backend or keras.backend.backend()
    return importlib.import_module(f"worker.engine.gradients_{name}")


def load_dream_model(
    weights: str,
    layers: Mapping[str, float] | Sequence[str],
    *,
    model: str = "inception_v3",
    channels: Mapping[str, Sequence[int]] | None = None,
    precision: str = "auto",
    allow_download: bool = True,
    seed: int = 0,
    gpu_determinism: bool = True,
) -> DreamModel:
    """Build `model` with `weights` ('imagenet', 'random' or a file path), cut at `layers`;
    on a GPU with deterministic kernels unless `gpu_determinism` is false."""
    backbone = BACKBONES[model]
    if not isinstance(layers, Mapping):
        layers = {name: 1.0 for name in layers}
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    backend = keras.backend.backend()
    module = backend_module(backend)
    device = module.device()
    if policy.deterministic(device, gpu_determinism):
        module.enable_determinism()
    dtype = policy.best_precision(backend, device) if precision == "auto" else precision
    full = _backbone(backbone, weights, allow_download, seed)
    cut = keras.Model(full.input, [full.get_layer(name).output for name in layers])
    selected = [list(channels[name]) if channels and name in channels else None for name in layers]
    folded = fold_batch_norms(cut, dtype)
    preprocess = PREPROCESSORS[backbone.preprocessing]
    weights_of = [float(w) for w in layers.values()]

    def gradient_of(losses: Callable[..., Any]) -> Gradient:
        # Traced on first call only: a worker that never sees a guide never traces the guided one.
        compiled = module.make_gradient_fn(
            folded, preprocess, losses, jit=policy.should_compile(backend, device)
        )
        return Gradient(compiled, policy.loss_scale(dtype), module.is_out_of_memory)

    def features(pixels: np.ndarray) -> list[np.ndarray]:
        outputs = folded(preprocess(keras.ops.convert_to_tensor(pixels)), training=False)
        if not isinstance(outputs, list | tuple):
            outputs = [outputs]
        return [keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")) for out in outputs]

    return DreamModel(
        backbone,
        tuple(layers),
        dtype,
        gradient_of(dream_loss(weights_of, selected)),
        device,
        backend,
        guided=gradient_of(guided_loss(weights_of, selected)),
        features=features,
    )


def dream_loss(
    weights: Sequence[float], channels: Sequence[Sequence[int] | None]
) -> Callable[[Any], Any]:
    """The loss of each tile from the model's outputs, in Keras ops and float32.

    Per output layer, the mean of its activations (or of the chosen channels), weighted and
    summed, whatever the model's precision.
    """

    def losses(outputs: Any) -> Any:
        if not isinstance(outputs, list | tuple):
            outputs = [outputs]
        total = None
        for weight, activation, chosen in zip(weights, outputs, channels, strict=True):
            activation = keras.ops.cast(activation, "float32")
            if chosen is not None:
                activation = keras.ops.take(activation, chosen, axis=-1)
            term = weight * keras.ops.mean(activation, axis=(1, 2, 3))
            total = term if total is None else total + term
        return total

    return losses


def guided_loss(
    weights: Sequence[float], channels: Sequence[Sequence[int] | None]
) -> Callable[..., Any]:
    """The loss of each tile with a guide image, in Keras ops and float32.

    Per output layer, as the original DeepDream's guided objective: at each position, the dot
    product of its activation vector with the best-matching guide feature (the guide's features
    come as N x C matrices, one per layer, scaled by the engine to unit mean square), averaged
    over positions and divided by the channels, so it weighs about what the plain mean does.
    `mix` (guide_weight) blends it with the plain loss: (1 - mix) * plain + mix * guided.
    """
    plain = dream_loss(weights, channels)

    def losses(outputs: Any, mix: Any, *guides: Any) -> Any:
        if not isinstance(outputs, list | tuple):
            outputs = [outputs]
        total = None
        for weight, activation, guide in zip(weights, outputs, guides, strict=True):
            activation = keras.ops.cast(activation, "float32")
            batch, height, width, depth = activation.shape
            flat = keras.ops.reshape(activation, (batch, height * width, depth))
            matches = keras.ops.matmul(flat, keras.ops.transpose(guide))  # B x positions x N
            best = keras.ops.max(matches, axis=-1)
            term = weight * keras.ops.mean(best, axis=1) / depth
            total = term if total is None else total + term
        return (1.0 - mix) * plain(outputs) + mix * total

    return losses


@cache
def best_precision() -> str:
    """The precision `auto` picks in this process (see device.best_precision)."""
    return policy.best_precision(keras.backend.backend(), backend_module().device())


def _backbone(backbone: Backbone, weights: str, allow_download: bool, seed: int) -> keras.Model:
    build = getattr(keras.applications, backbone.keras_name)
    if weights == "random":
        # Seeded random initialization: every code path runs, with no weights to fetch.
        model = build(include_top=False, weights=None)
        randomize_kernels(model, seed)
        return model
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


def randomize_kernels(model: keras.Model, seed: int) -> None:
    """Give every kernel of `model` Glorot-uniform values drawn by numpy from `seed`.

    Drawn by numpy, not by the backend's random generator, so that both backends build the same
    random model (and neither needs TensorFlow's global seed, which would import TensorFlow).
    The other variables (biases, batch-norm statistics) start as constants anyway.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if len(shape) < 2:
            continue
        receptive = int(np.prod(shape[:-2]))
        fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        variable.assign(rng.uniform(-limit, limit, shape).astype(np.float32))


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
        raise DownloadFailed(
            f"could not download the ImageNet {backbone.keras_name} weights "
            f"({type(exc).__name__}). {how_to_provide(backbone)}",
            reason=type(exc).__name__,
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


def _inbound(layer_config: dict[str, Any]) -> list[str]:
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


class Folded(keras.layers.Layer):  # type: ignore[misc]  # Keras has no types
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
