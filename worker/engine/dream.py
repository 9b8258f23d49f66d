"""The tiled multi-octave DeepDream loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from shared.params import RenderParams
from worker.engine.model import DreamModel


class Canceled(Exception):
    """The render was asked to stop."""


@dataclass(frozen=True)
class Progress:
    """Where a render stands; octave and step count from 1."""

    fraction: float
    octave: int
    octaves: int
    step: int
    steps: int
    tiles_done: int
    tiles: int
    eta_seconds: float | None
    loss: float


def render(
    image: np.ndarray,
    params: RenderParams,
    model: DreamModel,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Dream on `image` (H x W x 3 uint8); return the dreamed image, same size and dtype."""
    height, width = image.shape[:2]
    rng = np.random.default_rng(params.seed)
    shapes = octave_shapes(height, width, params.octaves, params.octave_scale, model.min_side)
    tile_counts = [
        len(tile_grid(h, params.tile_size)) * len(tile_grid(w, params.tile_size)) for h, w in shapes
    ]
    # Work is weighted by pixels: a step on the largest octave costs more than on the smallest.
    work = [h * w * params.steps for h, w in shapes]
    total_work, done_work = float(sum(work)), 0.0
    total_tiles, tiles_done = sum(c * params.steps for c in tile_counts), 0
    started = time.monotonic()

    dream = image.astype(np.float32) / 127.5 - 1.0
    for index, shape in enumerate(shapes):
        dream = resize(dream, shape)
        for step in range(params.steps):
            if should_stop is not None and should_stop():
                raise Canceled
            gradient, loss = tiled_gradient(dream, model, params.tile_size, rng)
            dream += gradient * params.step_size
            np.clip(dream, -1.0, 1.0, out=dream)
            done_work += shape[0] * shape[1]
            tiles_done += tile_counts[index]
            if on_progress is not None:
                fraction = done_work / total_work
                elapsed = time.monotonic() - started
                on_progress(
                    Progress(
                        fraction=fraction,
                        octave=index + 1,
                        octaves=len(shapes),
                        step=step + 1,
                        steps=params.steps,
                        tiles_done=tiles_done,
                        tiles=total_tiles,
                        eta_seconds=elapsed / fraction * (1.0 - fraction),
                        loss=loss,
                    )
                )
    dream = resize(dream, (height, width))
    return np.round((dream + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def octave_shapes(
    height: int, width: int, octaves: int, scale: float, min_side: int
) -> list[tuple[int, int]]:
    """Sizes of the octaves, n = -(octaves // 2) ... around the input size, smallest first.

    An octave whose shorter side would fall below what the model can see is raised to it.
    """
    shapes = []
    for n in range(-(octaves // 2), octaves - octaves // 2):
        factor = scale**n
        factor = max(factor, min_side / min(height, width))
        shapes.append((max(1, round(height * factor)), max(1, round(width * factor))))
    return shapes


def tile_grid(length: int, tile: int) -> list[tuple[int, int, int]]:
    """Tiles along one axis as (start, end, window_start) with windows of one size.

    Every index in [0, length) belongs to exactly one (start, end). Each window is `tile` long
    (or the whole axis when shorter), so the model sees one tile shape; the last window ends at
    the axis end and overlaps its neighbour instead of being cut short or skipped.
    """
    if length <= tile:
        return [(0, length, 0)]
    return [
        (start, min(start + tile, length), min(start, length - tile))
        for start in range(0, length, tile)
    ]


def tiled_gradient(
    image: np.ndarray, model: DreamModel, tile: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """The normalized gradient of the dream loss over the whole image, computed tile by tile.

    The image is rolled by a random offset first, so tile seams fall elsewhere at every step.
    Each tile is seen with a margin of context around it: the model's valid-padded, strided
    convolutions give no gradient to the last few rows and columns of what they see, so those
    must fall in the margin, not in the tile.
    """
    height, width = image.shape[:2]
    shift = (int(rng.integers(height)), int(rng.integers(width)))
    margin = model.margin
    # The rolled image is a torus: its margins wrap around, as the roll itself does.
    padded = np.pad(
        np.roll(image, shift, axis=(0, 1)), ((margin, margin), (margin, margin), (0, 0)), "wrap"
    )
    gradient = np.empty_like(image)
    window_h, window_w = min(tile, height) + 2 * margin, min(tile, width) + 2 * margin
    losses = []
    for y0, y1, wy in tile_grid(height, tile):
        for x0, x1, wx in tile_grid(width, tile):
            grad, loss = model.gradient(padded[wy : wy + window_h, wx : wx + window_w])
            inner = grad[margin + y0 - wy : margin + y1 - wy, margin + x0 - wx : margin + x1 - wx]
            gradient[y0:y1, x0:x1] = inner
            losses.append(loss)
    gradient = np.roll(gradient, (-shift[0], -shift[1]), axis=(0, 1))
    gradient /= gradient.std() + 1e-8
    return gradient, float(np.mean(losses))


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float32 H x W x C image resized bilinearly to `shape` (height, width)."""
    if image.shape[:2] == shape:
        return image.copy()
    size = (shape[1], shape[0])
    channels = [
        np.asarray(Image.fromarray(image[..., c]).resize(size, Image.Resampling.BILINEAR))
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=-1).astype(np.float32, copy=False)
