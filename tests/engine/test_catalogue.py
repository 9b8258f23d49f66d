"""The static backbone catalogue (which the API validates against) agrees with Keras."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared.catalogue import BACKBONES, Backbone


def deepest(backbone: Backbone) -> str:
    return list(backbone.layers)[-1]


@pytest.fixture(scope="module", params=list(BACKBONES))
def built(request: pytest.FixtureRequest) -> tuple[Backbone, keras.Model]:
    backbone = BACKBONES[request.param]
    build = getattr(keras.applications, backbone.keras_name)
    return backbone, build(include_top=False, weights=None)


def test_every_listed_layer_exists_with_its_channel_count(
    built: tuple[Backbone, keras.Model],
) -> None:
    backbone, model = built
    for name, channels in backbone.layers.items():
        assert model.get_layer(name).output.shape[-1] == channels, name
    assert set(backbone.default_layers) <= set(backbone.layers)
    # The weights a worker's memory estimate counts (shared/cost.py peak_memory_bytes).
    assert backbone.parameters == model.count_params()


def coverage(model: keras.Model, layer: str, side: int) -> int:
    """How many rows and columns of a side x side input get no gradient from `layer`."""
    cut = keras.Model(model.input, model.get_layer(layer).output)
    pixels = tf.random.stateless_uniform((1, side, side, 3), (1, 2), -1, 1)
    with tf.GradientTape() as tape:
        tape.watch(pixels)
        loss = tf.reduce_mean(cut(pixels))
    magnitude = np.abs(tape.gradient(loss, pixels).numpy()[0]).sum(axis=-1)
    return int((magnitude.sum(axis=1) == 0).sum() + (magnitude.sum(axis=0) == 0).sum())


def test_window_sizes_give_every_pixel_a_gradient(built: tuple[Backbone, keras.Model]) -> None:
    backbone, model = built
    for request in (backbone.min_side, 100, 130):
        side = backbone.window(request)
        assert side >= request
        assert coverage(model, deepest(backbone), side) == 0, (backbone.keras_name, side)


def test_the_minimum_side_reaches_the_deepest_layer(built: tuple[Backbone, keras.Model]) -> None:
    backbone, model = built
    cut = keras.Model(model.input, model.get_layer(deepest(backbone)).output)
    side = backbone.min_side
    assert min(cut(np.zeros((1, side, side, 3), np.float32)).shape[1:3]) >= 1


def test_inception_needs_its_minimum_side() -> None:
    model = keras.applications.InceptionV3(include_top=False, weights=None)
    side = BACKBONES["inception_v3"].min_side - 1
    with pytest.raises(ValueError):
        model(np.zeros((1, side, side, 3), np.float32))


def test_other_sizes_really_leave_pixels_without_gradient() -> None:
    # Why the catalogue records window sizes at all: InceptionV3 at 512 ignores its last rows.
    backbone = BACKBONES["inception_v3"]
    model = keras.applications.InceptionV3(include_top=False, weights=None)
    assert backbone.window(512) == 515
    assert coverage(model, "mixed5", 512) > 0
