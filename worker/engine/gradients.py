"""The only TensorFlow-specific code of the engine: the gradient of the dream loss."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf


def make_gradient_fn(model: keras.Model) -> Callable[[np.ndarray], tuple[np.ndarray, float]]:
    """A compiled function: image tile -> (d loss / d tile, loss).

    The loss is the mean activation of each output layer, summed.
    """

    # One trace for every tile shape: height and width are left open.
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def gradient(tile: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(tile)
            activations = model(tile[tf.newaxis], training=False)
            if not isinstance(activations, list | tuple):
                activations = [activations]
            loss = tf.add_n([tf.reduce_mean(a) for a in activations])
        return tape.gradient(loss, tile), loss

    def run(tile: np.ndarray) -> tuple[np.ndarray, float]:
        grad, loss = gradient(tf.constant(tile))
        return grad.numpy(), float(loss)

    return run
