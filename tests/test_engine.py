"""The DeepDream engine on tiny images, random weights, on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.images import decode_rgb, fit_within
from shared.params import RenderParams
from tests.utils import CHELSEA
from worker.engine import (
    Canceled,
    DreamModel,
    Progress,
    WeightsUnavailable,
    load_dream_model,
    render,
)
from worker.engine.dream import octave_shapes, tile_grid, tiled_gradient

SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[2] / "shared/models/inception_v3_notop_nsfwjs.weights.h5"
)


@pytest.fixture(scope="module")
def model() -> DreamModel:
    return load_dream_model("random", ("mixed3", "mixed5"))


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    return fit_within(decode_rgb(CHELSEA.read_bytes()), 120)  # 120 x 80


@pytest.mark.parametrize("length", [1, 75, 128, 129, 300, 512, 1000])
def test_tiles_cover_every_index_once_with_windows_of_one_size(length: int) -> None:
    tile = 128
    grid = tile_grid(length, tile)

    covered = np.zeros(length, dtype=int)
    for start, end, window in grid:
        covered[start:end] += 1
        assert window <= start and end <= window + min(tile, length)
        assert window >= 0 and window + min(tile, length) <= length
    assert covered.tolist() == [1] * length


def test_octaves_surround_the_input_and_respect_the_model_minimum() -> None:
    shapes = octave_shapes(300, 400, 5, 1.3, 75)
    assert shapes[2] == (300, 400)
    assert shapes == sorted(shapes)
    assert shapes[0] == (round(300 / 1.69), round(400 / 1.69))

    small = octave_shapes(60, 90, 3, 1.5, 75)
    assert min(min(shape) for shape in small) >= 75


# With 128-pixel tiles: partial last rows and columns of tiles, odd sizes, a single tile.
@pytest.mark.parametrize("shape", [(200, 300), (129, 257), (75, 90), (128, 128)])
def test_every_pixel_changes_in_a_tiled_step(model: DreamModel, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-0.5, 0.5, (*shape, 3)).astype(np.float32)

    gradient, _ = tiled_gradient(image, model, 128, np.random.default_rng(1))
    stepped = image + gradient * 0.01

    changed = np.any(stepped != image, axis=-1)
    assert changed.all(), f"{(~changed).sum()} pixels got no gradient"


def test_render_keeps_the_size_and_dreams(model: DreamModel, cat: np.ndarray) -> None:
    dreamed = render(cat, RenderParams(steps=3, octaves=3, seed=1, tile_size=128), model)

    assert dreamed.shape == cat.shape and dreamed.dtype == np.uint8
    assert np.abs(dreamed.astype(int) - cat).mean() > 1.0


def test_the_same_seed_gives_the_same_image(model: DreamModel, cat: np.ndarray) -> None:
    params = RenderParams(steps=2, octaves=2, seed=11, tile_size=128)
    first = render(cat, params, model)
    second = render(cat, params, model)
    other = render(cat, params.model_copy(update={"seed": 12}), model)

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_progress_rises_to_one_and_counts_every_tile(model: DreamModel, cat: np.ndarray) -> None:
    seen: list[Progress] = []
    render(
        cat, RenderParams(steps=3, octaves=2, seed=1, tile_size=128), model, on_progress=seen.append
    )

    fractions = [p.fraction for p in seen]
    assert len(seen) == 6
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert [(p.octave, p.step) for p in seen] == [(o, s) for o in (1, 2) for s in (1, 2, 3)]
    assert seen[-1].tiles_done == seen[-1].tiles
    assert seen[-1].eta_seconds == pytest.approx(0.0)
    assert all(p.eta_seconds is not None and p.eta_seconds >= 0 for p in seen)


def test_gradient_ascent_raises_the_loss(model: DreamModel, cat: np.ndarray) -> None:
    seen: list[Progress] = []
    params = RenderParams(steps=10, octaves=1, seed=3, step_size=0.05, tile_size=512)
    render(cat, params, model, on_progress=seen.append)

    assert seen[-1].loss > seen[0].loss * 1.1


def test_a_stop_request_stops_the_render(model: DreamModel, cat: np.ndarray) -> None:
    seen: list[Progress] = []
    with pytest.raises(Canceled):
        render(
            cat,
            RenderParams(steps=5, octaves=2, seed=1),
            model,
            on_progress=seen.append,
            should_stop=lambda: len(seen) >= 2,
        )
    assert len(seen) == 2


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
        cat, RenderParams(steps=4, octaves=1, seed=1, step_size=0.02), real, on_progress=seen.append
    )

    assert np.abs(dreamed.astype(int) - cat).mean() > 1.0
    assert seen[-1].loss > seen[0].loss
