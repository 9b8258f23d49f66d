"""The tiles of an octave and the gradient through them: how an image of any size goes through a
model that takes one window shape, batch by batch, with seams that move at every step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from worker.engine.model import DreamModel


class Canceled(Exception):
    """The render was asked to stop."""


@dataclass(frozen=True)
class Tile:
    """One model input: a window on the (rolled, wrapped) image and the part of it owned."""

    rows: tuple[int, int]  # owned rows [start, end) of the rolled image
    cols: tuple[int, int]
    window: tuple[int, int]  # top-left corner of the window on the rolled image


def split(length: int, count: int, window: int) -> list[tuple[int, int, int]]:
    """An axis cut into `count` near-equal parts, as (start, end, window_start).

    Every index belongs to exactly one part. Each part sits centred in a window of the one size
    `window` (>= every part), which reaches past the part into its neighbours, wrapping around
    the image, so the model sees one input shape and each part a little context on both sides.
    """
    bounds = [round(i * length / count) for i in range(count + 1)]
    return [(a, b, a - (window - (b - a)) // 2) for a, b in zip(bounds, bounds[1:], strict=False)]


class TilePlan:
    """The tiles of one octave: one window shape, and the batches they go through the model in.

    Each axis is cut into as few parts as keep a part within `tile_size`, and the window is the
    smallest side the backbone fully covers that holds a part: nearly every pixel the model
    sees is one it owns (a fixed 515-pixel window over 866 rows would see 1030).
    """

    def __init__(self, shape: tuple[int, int], tile_size: int, model: DreamModel) -> None:
        self.shape = shape
        counts = [math.ceil(length / tile_size) for length in shape]
        self.window = (
            model.backbone.window(math.ceil(shape[0] / counts[0])),
            model.backbone.window(math.ceil(shape[1] / counts[1])),
        )
        self.tiles = [
            Tile((a, b), (c, d), (wy, wx))
            for a, b, wy in split(shape[0], counts[0], self.window[0])
            for c, d, wx in split(shape[1], counts[1], self.window[1])
        ]
        # As many tiles per call as the model likes, spread evenly so the padded last batch
        # wastes as little as possible.
        most = model.batch_size(self.window)
        self.batch = math.ceil(len(self.tiles) / math.ceil(len(self.tiles) / most))

    def batches(self) -> Iterator[list[Tile]]:
        for start in range(0, len(self.tiles), self.batch):
            yield self.tiles[start : start + self.batch]


def tiled_gradient(
    dream: np.ndarray,
    plan: TilePlan,
    model: DreamModel,
    shift: tuple[int, int],
    batch_done: Callable[[list[Tile], np.ndarray], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    objective: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """The dream loss's gradient for every pixel of `dream`, tile batch by tile batch (the loss
    of `objective`, by default the model's own).

    The tiles lie on the image rolled by `shift`, so their seams fall elsewhere at every step.
    The roll is never materialized: windows index the image through the shift, wrapping around.
    """
    gradient = np.empty_like(dream)
    tiles = np.zeros((plan.batch, *plan.window, 3), dtype=np.float32)
    for batch in plan.batches():
        if should_stop is not None and should_stop():
            raise Canceled
        places = []
        for k, tile in enumerate(batch):
            rows = _wrapped(tile.window[0] - shift[0], plan.window[0], plan.shape[0])
            cols = _wrapped(tile.window[1] - shift[1], plan.window[1], plan.shape[1])
            tiles[k] = _take(dream, rows, cols).transpose(1, 2, 0)
            places.append((rows, cols))
        tiles[len(batch) :] = 0.0  # the padding of a short last batch
        grads, losses = (objective or model.gradient)(tiles)
        for k, (tile, (rows, cols)) in enumerate(zip(batch, places, strict=True)):
            own_r = slice(tile.rows[0] - tile.window[0], tile.rows[1] - tile.window[0])
            own_c = slice(tile.cols[0] - tile.window[1], tile.cols[1] - tile.window[1])
            _put(
                gradient,
                _part(rows, own_r),
                _part(cols, own_c),
                grads[k, own_r, own_c].transpose(2, 0, 1),
            )
        if batch_done is not None:
            batch_done(batch, losses[: len(batch)])
    return gradient


Index = slice | np.ndarray


def _wrapped(start: int, size: int, length: int) -> Index:
    """Indices start .. start + size modulo `length`: a slice when they do not wrap around."""
    start %= length
    if start + size <= length:
        return slice(start, start + size)
    return np.arange(start, start + size) % length


def _part(index: Index, part: slice) -> Index:
    if isinstance(index, slice):
        return slice(index.start + part.start, index.start + part.stop)
    return index[part]


def _take(planar: np.ndarray, rows: Index, cols: Index) -> np.ndarray:
    # Slices are views; only windows that wrap around the image edge pay for fancy indexing.
    if isinstance(rows, slice) or isinstance(cols, slice):
        return planar[:, rows][:, :, cols] if isinstance(rows, slice) else planar[:, rows, cols]
    return planar[:, rows[:, None], cols[None, :]]


def _put(planar: np.ndarray, rows: Index, cols: Index, values: np.ndarray) -> None:
    if isinstance(rows, slice) or isinstance(cols, slice):
        planar[:, rows, cols] = values
    else:
        planar[:, rows[:, None], cols[None, :]] = values
