"""The DeepDream engine on tiny images, random weights, on the CPU.

The tests marked `backends` test the engine's own logic (tiling, octaves, seeds, checkpoints,
cancel, traces, loss scaling, memory errors); they run on the backend this process has, and
test_the_engine_logic_holds_on_jax_too runs them again under JAX in a child process (Keras picks
its backend once per process).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared import cost
from shared.catalogue import BACKBONES
from shared.cost import octave_sizes
from shared.images import decode_rgb, fit_within
from shared.params import RenderParams
from tests.utils import CHELSEA, ROOT, backends_on_jax, image_bytes
from tests.utils.paths import OFFLINE_WEIGHTS
from worker.engine import (
    BACKEND,
    Canceled,
    DeviceOutOfMemory,
    DreamModel,
    DreamState,
    Progress,
    WeightsUnavailable,
    imaging,
    load_dream_model,
    render,
)
from worker.engine.device import loss_scale, should_compile
from worker.engine.model import Gradient, backend_module, dream_loss
from worker.engine.tiling import TilePlan, split, tiled_gradient

SHARED_WEIGHTS = OFFLINE_WEIGHTS
_MODELS: dict[Any, DreamModel] = {}


def dream_model(name: str = "inception_v3", precision: str = "float32", **kw: Any) -> DreamModel:
    """Random-weight dream models, built once per test session."""
    layers = kw.pop("layers", None) or BACKBONES[name].default_layers
    key = (name, precision, tuple(layers), repr(kw))
    if key not in _MODELS:
        _MODELS[key] = load_dream_model("random", layers, model=name, precision=precision, **kw)
    return _MODELS[key]


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    return fit_within(decode_rgb(CHELSEA.read_bytes()), 120)  # 120 x 80


def params(**kw: Any) -> RenderParams:
    return RenderParams(**{"steps": 2, "octaves": 2, "seed": 1, "tile_size": 64, **kw})


def counting(model: DreamModel) -> tuple[DreamModel, list[int]]:
    """`model` with its gradient calls counted."""
    calls: list[int] = []

    def gradient(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(tiles))
        return model.gradient(tiles)

    return dataclasses.replace(model, gradient=gradient), calls


@pytest.mark.parametrize(
    ("length", "count", "window"),
    [(1, 1, 75), (75, 1, 75), (200, 3, 75), (515, 1, 515), (1000, 2, 501), (1031, 3, 347)],
)
def test_split_owns_every_index_once_inside_one_window_size(
    length: int, count: int, window: int
) -> None:
    covered = np.zeros(length, dtype=int)
    for start, end, window_start in split(length, count, window):
        covered[start:end] += 1
        assert end - start <= window
        assert window_start <= start and end <= window_start + window
    assert covered.tolist() == [1] * length


def test_windows_are_sizes_that_give_every_pixel_a_gradient() -> None:
    model = dream_model()
    assert TilePlan((300, 400), 512, model).window == (301, 403)
    assert TilePlan((2000, 3000), 512, model).window == (501, 501)  # parts of 500 x 500
    assert TilePlan((866, 1155), 512, model).window == (435, 387)  # 433 x 385
    assert TilePlan((40, 40), 512, model).window == (75, 75)


@pytest.mark.parametrize(
    ("source", "run"),
    [
        ((120, 80), params(steps=1, octaves=3)),  # the smallest octave raised to 75 rows
        ((451, 300), params(steps=1, octaves=2, max_dim=100)),  # downscaled, then raised
        ((200, 150), params(steps=1, octaves=3, octave_scale=1.5, model="vgg19", max_dim=90)),
    ],
    ids=["raised", "max_dim", "vgg19"],
)
def test_the_engine_renders_exactly_the_octaves_the_cost_is_charged_for(
    source: tuple[int, int], run: RenderParams
) -> None:
    # The worker's path: decode, fit max_dim, render; every step's image has its octave's size.
    image = fit_within(decode_rgb(image_bytes(source)), run.max_dim)
    seen: list[tuple[int, int]] = []

    def size_of(planar: np.ndarray) -> None:
        seen.append((planar.shape[2], planar.shape[1]))

    render(image, run, dream_model(run.model), on_step=size_of)

    assert seen == octave_sizes(*source, run)
    assert cost.work(*source, run) == sum(w * h for w, h in seen)


# With 64-pixel tiles: several tiles a side, partial tiles, wrapping windows, a single tile.
@pytest.mark.backends
@pytest.mark.parametrize("shape", [(200, 300), (129, 257), (75, 90), (80, 120)])
def test_every_pixel_gets_a_gradient_in_a_tiled_step(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-0.8, 0.8, (3, *shape)).astype(np.float32)
    model = dream_model()
    plan = TilePlan(shape, 64, model)

    gradient = tiled_gradient(image, plan, model, (17, 5))

    moved = np.any(gradient != 0, axis=0)
    assert moved.all(), f"{(~moved).sum()} pixels got no gradient"
    assert len(plan.tiles) > 1 or shape == (75, 90)


@pytest.mark.backends
def test_render_keeps_the_size_and_dreams(cat: np.ndarray) -> None:
    dreamed = render(cat, params(steps=3, octaves=3), dream_model())

    assert dreamed.shape == cat.shape and dreamed.dtype == np.uint8
    assert np.abs(dreamed.astype(int) - cat).mean() > 1.0


@pytest.mark.backends
def test_the_same_seed_gives_the_same_image_bit_for_bit(cat: np.ndarray) -> None:
    model = dream_model(precision="bfloat16")
    first = render(cat, params(), model)
    second = render(cat, params(), model)
    other = render(cat, params(seed=2), model)

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


@pytest.mark.backends
@pytest.mark.skipif(BACKEND != "jax", reason="JAX's transfer guard watches JAX's transfers")
@pytest.mark.parametrize("grad_norm", ["std", "laplacian"])
def test_an_octave_runs_on_the_device_with_no_transfer_it_did_not_ask_for(
    cat: np.ndarray, grad_norm: str
) -> None:
    import jax

    from worker.engine.controls import Controls

    mask = np.zeros(cat.shape[:2], dtype=np.uint8)
    mask[:, :60] = 255
    run = params(steps=3, octaves=2, tv_weight=1.0, max_loss=1e9, grad_norm=grad_norm)
    expected = render(cat, run, dream_model(), controls=Controls(mask=mask))
    seen: list[Progress] = []
    # "disallow" refuses every implicit transfer (a numpy array handed to a compiled function,
    # an array read by numpy): the image, the shift, the scalars and the losses the engine moves
    # are each an explicit device_put or device_get, and nothing else crosses.
    with jax.transfer_guard("disallow"):
        dreamed = render(
            cat, run, dream_model(), controls=Controls(mask=mask), on_progress=seen.append
        )
    assert np.array_equal(dreamed, expected)
    assert len(seen) > 0 and all(np.isfinite(p.loss) for p in seen)


@pytest.mark.backends
@pytest.mark.skipif(BACKEND != "jax", reason="XLA's cost analysis is read through JAX")
def test_the_compiled_gradient_reports_its_cost_for_the_roofline() -> None:
    # benchmarks/gpu.py --predict turns these into a bound for a GPU: they must grow with the
    # work (twice the tiles, about twice the FLOPs) and must not come from running it.
    compiled = dream_model().gradient.compiled
    one, two = compiled.cost((1, 75, 75, 3)), compiled.cost((2, 75, 75, 3))
    assert one["flops"] > 1e8 and one["bytes"] > 0
    assert 1.9 < two["flops"] / one["flops"] < 2.1


@pytest.mark.backends
def test_tiles_go_in_batches_through_one_trace_per_shape() -> None:
    image = np.random.default_rng(3).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    model, calls = counting(dream_model(layers=("mixed2",)))
    traces_before = model_traces(model)

    render(image, params(steps=3, octaves=1, tile_size=96), model)

    plan = TilePlan((300, 400), 96, model)
    assert plan.window == (75, 83) and len(plan.tiles) == 20
    assert plan.batch == 10  # up to the batch size the model likes, spread evenly
    assert calls == [10] * 6
    assert model_traces(model) - traces_before == 1


def model_traces(model: DreamModel) -> int:
    base = _MODELS[("inception_v3", "float32", ("mixed2",), "{}")]
    return int(base.gradient.traces())  # type: ignore[attr-defined]


@pytest.mark.backends
def test_progress_reports_octaves_steps_tiles_fraction_and_eta(cat: np.ndarray) -> None:
    seen: list[Progress] = []
    render(cat, params(steps=3, octaves=2), dream_model(), on_progress=seen.append)

    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert {(p.octave, p.step) for p in seen} == {(o, s) for o in (1, 2) for s in (1, 2, 3)}
    assert seen[-1].tiles_done == seen[-1].tiles and seen[-1].octaves == 2
    assert seen[-1].eta_seconds == pytest.approx(0.0)
    assert all(p.eta_seconds is None or p.eta_seconds >= 0 for p in seen)
    # Before a rate is measured (the first, tracing batch) there is no ETA, after it there is.
    assert seen[0].eta_seconds is None
    assert all(p.eta_seconds is not None for p in seen[1:])


def test_the_first_eta_leaves_out_the_tracing_batch(cat: np.ndarray) -> None:
    model = dream_model()
    traced: list[bool] = []

    def gradient(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not traced:  # the first call of a new shape traces for seconds, once
            traced.append(True)
            time.sleep(3.0)
        return model.gradient(tiles)

    seen: list[tuple[float, Progress]] = []
    render(
        cat,
        params(steps=6, octaves=1, tile_size=512),
        dataclasses.replace(model, gradient=gradient),
        on_progress=lambda p: seen.append((time.monotonic(), p)),
    )
    assert seen[0][1].eta_seconds is None  # no rate measured yet
    moment, second = seen[1]
    left = seen[-1][0] - moment
    # Counting the tracing batch, this ETA was over 3 s for well under a second of work left.
    assert second.eta_seconds is not None
    assert second.eta_seconds < 3 * left + 0.5


def test_gradient_ascent_raises_the_loss(cat: np.ndarray) -> None:
    seen: list[Progress] = []
    render(
        cat,
        params(steps=10, octaves=1, step_size=0.05, tile_size=512),
        dream_model(),
        on_progress=seen.append,
    )

    assert seen[-1].loss > seen[0].loss * 1.1


@pytest.mark.backends
def test_a_stop_request_stops_within_one_tile_batch(cat: np.ndarray) -> None:
    model, calls = counting(dream_model())
    with pytest.raises(Canceled):
        render(cat, params(steps=5), model, should_stop=lambda: len(calls) >= 3)
    assert len(calls) == 3


@pytest.mark.backends
def test_resuming_from_any_checkpoint_gives_the_uninterrupted_image(cat: np.ndarray) -> None:
    model = dream_model()
    run = params(steps=4, octaves=3, seed=9)
    states: list[DreamState] = []

    def keep(state: DreamState) -> None:
        states.append(dataclasses.replace(state, image=state.image.copy()))

    uninterrupted = render(cat, run, model, on_checkpoint=keep, checkpoint_every=3)

    # Every 3 steps within an octave and at each octave end.
    assert [(s.octave, s.step) for s in states] == [(0, 3), (0, 4), (1, 3), (1, 4), (2, 3), (2, 4)]
    for state in (states[0], states[1], states[4]):
        assert np.array_equal(render(cat, run, model, resume=state), uninterrupted)


@pytest.mark.backends
def test_max_loss_stops_an_octave_once_its_loss_passes_it(cat: np.ndarray) -> None:
    model = dream_model()
    # Any loss passes the lowest threshold: each octave stops after its first step, and since a
    # step's shift is its octave's next draw, that is exactly the one-step render.
    first_only = render(cat, params(steps=4, max_loss=-1e9), model)
    assert np.array_equal(first_only, render(cat, params(steps=1), model))

    # A threshold between the losses of the first octave's steps stops it there: the loss rises
    # step by step, and the steps after the one that passed it are not rendered.
    seen: list[Progress] = []
    full = render(cat, params(steps=4, octaves=1), model, on_progress=seen.append)
    losses = [max(p.loss for p in seen if p.step == n) for n in (1, 2, 3, 4)]
    assert losses == sorted(losses) and losses[1] < losses[2]
    threshold = (losses[1] + losses[2]) / 2
    seen.clear()
    states: list[DreamState] = []

    def keep(state: DreamState) -> None:
        states.append(dataclasses.replace(state, image=state.image.copy()))

    run = params(steps=4, octaves=1, max_loss=threshold)
    stopped = render(cat, run, model, on_progress=seen.append, on_checkpoint=keep)
    assert max(p.step for p in seen) == 3  # passed at step 3: step 4 never ran
    assert np.array_equal(stopped, render(cat, params(steps=3, octaves=1), model))
    assert not np.array_equal(stopped, full)
    # The octave counts as done: its checkpoint is its end, from which a resume renders nothing.
    assert [(s.octave, s.step) for s in states] == [(0, 4)]
    assert np.array_equal(render(cat, run, model, resume=states[0]), stopped)


@pytest.mark.backends
def test_a_render_stopped_mid_step_hands_over_a_state_that_resumes_to_the_same_image(
    cat: np.ndarray,
) -> None:
    # A worker shutting down saves the state of the last whole step (worker/jobs.py), so the
    # next worker resumes where it stopped, not at the last periodic checkpoint.
    model, calls = counting(dream_model())
    run = params(steps=4, octaves=3, seed=9)
    uninterrupted = render(cat, run, model)
    per_render = len(calls)
    stopped: list[DreamState] = []

    def keep(state: DreamState) -> None:
        stopped.append(dataclasses.replace(state, image=state.image.copy()))

    calls.clear()
    with pytest.raises(Canceled):
        # Stopped before the 7th batch: mid-way through octave 2 (4 steps an octave, one batch
        # a step at this size), long after any checkpoint it was asked for.
        render(cat, run, model, should_stop=lambda: len(calls) >= 6, on_stop=keep)
    assert per_render == 12 and len(stopped) == 1
    assert (stopped[0].octave, stopped[0].step) == (1, 2)
    assert np.array_equal(render(cat, run, model, resume=stopped[0]), uninterrupted)


@pytest.mark.backends
@pytest.mark.parametrize("shape", [(64, 64), (79, 118), (133, 200), (7, 5), (1, 3)])
def test_the_device_normalizes_and_smooths_as_the_host_reference_does(
    shape: tuple[int, int],
) -> None:
    # imaging.py keeps the host's numpy versions as the reference the device programs repeat:
    # Pillow's bilinear halvings and doublings tap for tap, the pyramid level by level, the
    # smoothing neighbour by neighbour (float32 sums in another order: a few ulps).
    from worker.engine.ondevice import _laplacian, _tv_gradient, pyramid, to_device, to_host

    gradient = np.random.default_rng(1).normal(size=(3, *shape)).astype(np.float32)
    expected = imaging.laplacian_normalize(gradient.copy())
    got = to_host(_laplacian(to_device(gradient), pyramid(shape).levels))
    np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(expected).max())
    for plane in gradient:
        smoothed = to_host(_tv_gradient(to_device(plane)))
        np.testing.assert_allclose(smoothed, imaging.tv_gradient(plane), atol=1e-5)


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"grad_norm": "laplacian", "detail": False},
        {"tv_weight": 0.5, "preserve_colors": True},
    ],
    ids=["defaults", "laplacian-nodetail", "tv-colors"],
)
def test_every_backbone_and_option_dreams(cat: np.ndarray, name: str, options: dict) -> None:
    layers = {BACKBONES[name].default_layers[0]: 2.0, BACKBONES[name].default_layers[1]: 0.5}
    run = params(model=name, layers=layers, **options)
    model = dream_model(name, layers=tuple(layers))

    dreamed = render(cat, run, model)

    assert dreamed.shape == cat.shape
    assert np.abs(dreamed.astype(int) - cat).mean() > 0.5


def test_channels_focus_the_loss_on_chosen_channels(cat: np.ndarray) -> None:
    whole = dream_model(layers=("mixed3",))
    chosen = dream_model(layers=("mixed3",), channels={"mixed3": [5, 17]})
    tile = (cat[None, :75, :75] / 127.5 - 1).astype(np.float32)

    _, whole_loss = whole.gradient(tile)
    _, chosen_loss = chosen.gradient(tile)

    assert whole_loss[0] != chosen_loss[0]


def test_preserve_colors_keeps_the_input_chroma(cat: np.ndarray) -> None:
    dreamed = render(cat, params(preserve_colors=True, step_size=0.1), dream_model())
    plain = render(cat, params(step_size=0.1), dream_model())
    from PIL import Image

    def chroma(image: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(image).convert("YCbCr"))[..., 1:].astype(int)

    assert np.abs(chroma(dreamed) - chroma(cat)).mean() < np.abs(chroma(plain) - chroma(cat)).mean()
    assert np.abs(chroma(dreamed) - chroma(cat)).mean() < 2.0


def test_tv_weight_smooths_the_dream(cat: np.ndarray) -> None:
    def variation(image: np.ndarray) -> float:
        return float(
            np.abs(np.diff(image.astype(int), axis=0)).mean()
            + np.abs(np.diff(image.astype(int), axis=1)).mean()
        )

    rough = render(cat, params(step_size=0.05), dream_model())
    smooth = render(cat, params(step_size=0.05, tv_weight=2.0), dream_model())
    assert variation(smooth) < variation(rough)


def sharpness(image: np.ndarray) -> float:
    """Mean absolute difference of neighbouring pixels: high for fine detail."""
    pixels = image.astype(int)
    return float(np.abs(np.diff(pixels, axis=0)).mean() + np.abs(np.diff(pixels, axis=1)).mean())


def test_detail_reinjection_keeps_the_input_closer_and_sharper(cat: np.ndarray) -> None:
    reinjected = render(cat, params(octaves=3), dream_model())
    upscaled = render(cat, params(octaves=3, detail=False), dream_model())

    def distance(image: np.ndarray) -> float:
        return float(np.abs(image.astype(int) - cat).mean())

    # Without it, the small first octave's blur is scaled up into the result.
    assert distance(reinjected) < distance(upscaled)
    assert sharpness(reinjected) > sharpness(upscaled)


def test_grad_norm_laplacian_changes_the_render(cat: np.ndarray) -> None:
    plain = render(cat, params(octaves=3), dream_model())
    laplacian = render(cat, params(octaves=3, grad_norm="laplacian"), dream_model())

    assert np.abs(laplacian.astype(int) - plain).mean() > 1.0


def test_laplacian_normalization_balances_the_levels() -> None:
    rng = np.random.default_rng(0)
    gradient = rng.normal(size=(3, 64, 64)).astype(np.float32)
    gradient += 50 * np.linspace(0, 1, 64, dtype=np.float32)[None, None]  # a strong low frequency

    normalized = imaging.laplacian_normalize(gradient)

    assert normalized.shape == gradient.shape
    assert np.isfinite(normalized).all()
    fine = normalized - imaging.resize(imaging.resize(normalized, (32, 32)), (64, 64))
    assert imaging.std(fine) > 0.3 * imaging.std(normalized)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_batch_norms_fold_without_changing_the_function(name: str) -> None:
    import keras

    from worker.engine.model import fold_batch_norms

    keras.utils.set_random_seed(0)
    full = getattr(keras.applications, BACKBONES[name].keras_name)(include_top=False, weights=None)
    for layer in full.layers:  # non-trivial statistics, so folding has something to do
        if isinstance(layer, keras.layers.BatchNormalization):
            weights = layer.get_weights()
            weights[-2] = np.linspace(-0.2, 0.2, weights[-2].size, dtype=np.float32)
            weights[-1] = np.linspace(0.5, 1.5, weights[-1].size, dtype=np.float32)
            layer.set_weights(weights)
    cut = keras.Model(full.input, full.get_layer(BACKBONES[name].default_layers[0]).output)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)

    folded = fold_batch_norms(cut, "float32")

    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    expected = np.asarray(cut(x))
    assert np.abs(np.asarray(folded(x)) - expected).max() <= 1e-4 * np.abs(expected).max()


def test_a_missing_weights_file_says_how_to_provide_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="ONEIRO_WEIGHTS") as error:
        load_dream_model(str(tmp_path / "nope.h5"), ("mixed3",))
    assert "nope.h5" in str(error.value)


def test_imagenet_weights_absent_and_no_download_fail_fast_with_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="ONEIRO_WEIGHTS") as error:
        load_dream_model("imagenet", ("mixed3",), allow_download=False)
    assert "Keras cache" in str(error.value)


@pytest.mark.skipif(
    not SHARED_WEIGHTS.is_file(),
    reason=f"no offline InceptionV3 weights at {SHARED_WEIGHTS} (../shared/models is handed to "
    "CI, not to clones)",
)
def test_real_weights_from_a_file_dream(cat: np.ndarray) -> None:
    real = load_dream_model(str(SHARED_WEIGHTS), ("mixed3", "mixed5"))
    seen: list[Progress] = []
    dreamed = render(
        cat,
        params(steps=4, octaves=1, step_size=0.02, tile_size=512),
        real,
        on_progress=seen.append,
    )

    assert np.abs(dreamed.astype(int) - cat).mean() > 1.0
    assert seen[-1].loss > seen[0].loss


@pytest.mark.backends
def test_float16_loss_scaling_keeps_gradients_that_would_underflow() -> None:
    import keras

    # One float16 1x1 convolution, 4 outputs, kernel (c + 1) * 1e-4 for input channel c, loss
    # the mean over 256 x 256 x 4 outputs: d loss / d pixel of channel c is 4 (c + 1) 1e-4 /
    # 262144, about 1.5e-9 (c + 1), under float16's smallest subnormal (6e-8).
    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(4, 1, use_bias=False, dtype="float16")
    model = keras.Model(inputs, conv(inputs))
    conv.kernel.assign(
        np.repeat(np.arange(1, 4, dtype=np.float32)[:, None], 4, 1)[None, None] * 1e-4
    )
    module = backend_module()
    compiled = module.make_gradient_fn(
        model,
        lambda pixels: pixels,
        dream_loss([1.0], [None]),
        jit=should_compile(BACKEND, module.device()),
    )
    tiles = np.random.default_rng(0).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
    exact = np.broadcast_to(4 * np.arange(1, 4) * 1e-4 / (256 * 256 * 4), tiles.shape)

    # The gradients stay on the device: read back here to check them.
    unscaled = np.asarray(Gradient(compiled, 1.0, module.is_out_of_memory)(tiles)[0])
    scaled = np.asarray(
        Gradient(compiled, loss_scale("float16"), module.is_out_of_memory)(tiles)[0]
    )

    assert not unscaled.any(), "the unscaled float16 gradient should have flushed to zero"
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, exact, rtol=1e-2)
    normalized = scaled / imaging.std(scaled)
    np.testing.assert_allclose(normalized, exact / exact.std(), rtol=1e-2)


@pytest.mark.backends
def test_a_device_out_of_memory_is_a_clear_engine_error() -> None:
    # No device here has a memory limit to run into, so the backend's own error is raised where
    # the compiled gradient would raise it, and must come out as the engine's.
    if BACKEND == "jax":
        import jax

        error: Exception = jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8589934592 bytes."
        )
    else:
        import tensorflow as tf

        error = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    module = backend_module()

    def compiled(tiles: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        raise error

    gradient = Gradient(compiled, 1.0, module.is_out_of_memory)
    with pytest.raises(DeviceOutOfMemory, match="2 tile.s. of 75 x 80 pixels.*smaller tile_size"):
        gradient(np.zeros((2, 75, 80, 3), np.float32))
    assert not module.is_out_of_memory(ValueError("RESOURCE_EXHAUSTED"))


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the JAX pass is started from the default one")
@pytest.mark.timeout(1800)
def test_the_engine_logic_holds_on_jax_too() -> None:
    marked = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-m", "backends", "--collect-only", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    expected = sum(1 for line in marked.splitlines() if "::" in line)

    result = backends_on_jax(__file__)

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert f"{expected} passed" in result.stdout, result.stdout[-2000:]
    assert expected >= 12
