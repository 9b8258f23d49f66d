"""The tiles of an octave and the gradient through them: how an image of any size goes through a
model that takes one window shape, batch by batch, with seams that move at every step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.engine.model import DreamModel
from worker.engine.ondevice import (
    Pyramid,
    Tables,
    device_steps,
    pyramid,
    tables,
    to_device,
    to_host,
)


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
        self._tables: Tables | None = None
        self._pyramid: Pyramid | None = None

    def batches(self) -> Iterator[list[Tile]]:
        for start in range(0, len(self.tiles), self.batch):
            yield self.tiles[start : start + self.batch]

    def pyramid(self) -> Pyramid:
        """The Laplacian pyramid's taps over the octave, on the device, made on first use."""
        if self._pyramid is None:
            self._pyramid = pyramid(self.shape)
        return self._pyramid

    def tables(self) -> Tables:
        """The plan's tables on the device (worker/engine/ondevice.py), made on first use."""
        if self._tables is None:
            self._tables = tables(self.shape, self.window, self.batch, self.tiles)
        return self._tables


def tiled_gradient(
    dream: Any,
    plan: TilePlan,
    model: DreamModel,
    shift: tuple[int, int],
    batch_done: Callable[[list[Tile], np.ndarray], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    objective: Callable[[Any], tuple[Any, Any]] | None = None,
) -> Any:
    """The dream loss's gradient for every pixel of `dream` (3 x h x w float32, a backend array
    on its device or a numpy one), tile batch by tile batch (the loss of `objective`, by default
    the model's own); a backend array on the device, as `dream`'s shape.

    The tiles lie on the image rolled by `shift`, so their seams fall elsewhere at every step.
    The roll is never materialized: the windows index the image through the shift, wrapping
    around, on the device (worker/engine/ondevice.py). `batch_done` receives each batch's losses,
    the one thing read back to the host, only when it is given.
    """
    steps = device_steps(model)
    tables = plan.tables()
    at = to_device(np.array(shift, dtype=np.int32))
    image = to_device(dream)  # a device array as it is
    gradients = []
    for batch, rows, cols in zip(plan.batches(), tables.rows, tables.cols, strict=True):
        if should_stop is not None and should_stop():
            raise Canceled
        tiles = steps.gather(image, rows, cols, tables.offsets, at)
        grads, losses = (objective or model.gradient)(tiles)
        gradients.append(grads)
        if batch_done is not None:
            batch_done(batch, to_host(losses)[: len(batch)])
    return steps.scatter(gradients, tables.owners, at)
