"""The engine's TensorFlow-specific code: the batched gradient of the dream loss, the device."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from worker.engine.device import Device


def make_gradient_fn(
    model: keras.Model,
    preprocess: Callable[[Any], Any],
    tile_losses: Callable[[Any], Any],
    *,
    jit: bool,
) -> Callable[..., tuple[Any, Any]]:
    """A compiled function: (tiles (B x H x W x 3), loss scale, *extra) -> (d loss_b / d tile_b,
    loss_b), the backend's arrays, left on its device.

    `tile_losses` maps the model's outputs (and the `extra` arrays) to one float32 loss per
    tile. The gradient is taken of the scaled sum (tiles are independent, so each gets its own)
    and unscaled in float32.
    """

    # Traced once per tile-batch shape; the engine keeps that shape fixed through a render.
    @tf.function(jit_compile=jit)  # type: ignore[untyped-decorator]  # TensorFlow has no types
    def gradient(tiles: tf.Tensor, scale: tf.Tensor, *extra: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            tape.watch(tiles)
            losses = tile_losses(model(preprocess(tiles), training=False), *extra)
            total = tf.reduce_sum(losses) * scale
        return tape.gradient(total, tiles) / scale, losses

    def run(tiles: Any, scale: float, *extra: Any) -> tuple[tf.Tensor, tf.Tensor]:
        # Tensors stay where they are (the device): only numpy arrays are converted.
        constants = [tf.convert_to_tensor(value) for value in extra]
        scaled = tf.constant(scale, tf.float32)
        return gradient(tf.convert_to_tensor(tiles, tf.float32), scaled, *constants)  # type: ignore[no-any-return]

    # The gradient function carries its trace counter (tests read it): a function attribute.
    run.traces = gradient.experimental_get_tracing_count  # type: ignore[attr-defined]
    return run


def to_device(array: Any) -> tf.Tensor:
    """`array` as a tensor (on the GPU when there is one: TensorFlow places it there)."""
    return tf.convert_to_tensor(array)


def to_host(array: Any) -> np.ndarray:
    """`array` as numpy on the host."""
    return array.numpy() if isinstance(array, tf.Tensor) else np.asarray(array)


def compile(fn: Callable[..., Any], *, jit: bool) -> Callable[..., Any]:  # noqa: A001
    """`fn`, written in Keras ops, as one graph (one XLA program where `jit`); traced once per
    shape of its arguments, as the gradient is."""
    return tf.function(fn, jit_compile=jit)  # type: ignore[no-any-return]


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is TensorFlow saying a device ran out of memory."""
    return isinstance(error, tf.errors.ResourceExhaustedError)


def enable_determinism() -> None:
    """Deterministic kernels from now on, for the whole process (a GPU's; see
    device.deterministic). An op with none raises instead of computing differently."""
    tf.config.experimental.enable_op_determinism()


def device() -> Device:
    """The device TensorFlow computes on: the first GPU, or the CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return Device("cpu", None, None)
    # With growth on, TensorFlow takes GPU memory as it needs it instead of nearly all of it at
    # start, so the free memory the driver reports is what a tile batch can still use.
    for gpu in gpus:
        # RuntimeError: the GPU is already initialized (growth set before, or the operator's).
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    details = tf.config.experimental.get_device_details(gpus[0])
    capability = details.get("compute_capability")
    return Device("gpu", tuple(capability) if capability else (0, 0), _free_gpu_bytes())


def _free_gpu_bytes() -> int | None:
    """The first visible GPU's free memory as the driver reports it, or None if unknown."""
    index = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    try:
        out = subprocess.run(
            ["nvidia-smi", "-i", index, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return int(out.split()[0]) * 1024**2
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
