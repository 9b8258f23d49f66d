"""The only TensorFlow-specific code of the engine: the gradient of the dream loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def make_gradient_fn(
    model: keras.Model,
    preprocess: Callable[[Any], Any],
    weights: Sequence[float],
    channels: Sequence[Sequence[int] | None],
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A compiled function: tiles (B x H x W x 3) -> (d loss_b / d tile_b, loss_b for each b).

    A tile's loss is, per output layer, the mean of its activations (or of the chosen
    channels), weighted and summed. It is computed in float32 whatever the model's precision.
    """

    # Traced once per tile-batch shape; the engine keeps that shape fixed through a render.
    @tf.function(jit_compile=False)
    def gradient(tiles: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(tiles)
            activations = model(preprocess(tiles), training=False)
            if not isinstance(activations, list | tuple):
                activations = [activations]
            losses = []
            for weight, activation, chosen in zip(weights, activations, channels, strict=True):
                activation = tf.cast(activation, tf.float32)
                if chosen is not None:
                    activation = tf.gather(activation, chosen, axis=-1)
                losses.append(weight * tf.reduce_mean(activation, axis=[1, 2, 3]))
            loss = tf.add_n(losses)
            total = tf.reduce_sum(loss)  # tiles are independent: each gets its own gradient
        return tape.gradient(total, tiles), loss

    def run(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grads, losses = gradient(tf.constant(tiles))
        return grads.numpy(), losses.numpy()

    run.traces = gradient.experimental_get_tracing_count  # type: ignore[attr-defined]
    return run


def gpu_compute_capability() -> tuple[int, int] | None:
    """The first GPU's CUDA compute capability, or None when TensorFlow sees no GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    return tuple(capability) if capability else (0, 0)  # type: ignore[return-value]
