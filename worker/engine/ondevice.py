"""An octave's image on the backend's device: the tile windows taken, the gradients put back, the
normalization, mask blend, update, smoothing and clip of a step, each one compiled program.

Written once in Keras ops and compiled by whichever backend runs (jax.jit, tf.function). Between
an octave's first image and its last, what crosses to the host is a few scalars: the step's shift
going in, the tiles' losses coming out when progress or max_loss asks for them. The windows and
the owned parts are index arithmetic on the device, from small per-octave tables (TilePlan).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from worker.engine import device as policy
from worker.engine.model import DreamModel, backend_module

Tensor = Any  # a backend's array (jax.Array, tf.Tensor)


def to_device(array: Any) -> Tensor:
    """A host array on the backend's device, an explicit transfer (a device array as it is)."""
    return backend_module().to_device(array)


def to_host(tensor: Any) -> np.ndarray:
    """A backend's array (or a numpy one) as a numpy array on the host, an explicit transfer."""
    return backend_module().to_host(tensor)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Tables:
    """One octave's tiling as device arrays: each batch's window corners, the window's offsets,
    and for each row and column of the rolled image where its owner's gradient lies."""

    rows: list[Tensor]  # per batch: (B,) int32 top rows of the windows on the rolled image
    cols: list[Tensor]  # per batch: (B,) int32 left columns
    offsets: tuple[Tensor, Tensor]  # (Hw,), (Ww,) int32: 0 .. window side
    owners: tuple[Tensor, Tensor]  # (h,), (w,) int32: its two parts of the flat gradient index


def tables(
    shape: tuple[int, int], window: tuple[int, int], batch: int, tiles: Sequence[Any]
) -> Tables:
    """The device tables of a TilePlan (its `tiles`, in batches of `batch`; a short last batch is
    padded with copies of the first tile, whose gradients nobody reads)."""
    count = -(-len(tiles) // batch) * batch
    padded = [*tiles, *[tiles[0]] * (count - len(tiles))]
    corners = np.array([tile.window for tile in padded], dtype=np.int32)
    # The flat index of the gradient of rolled pixel (Y, X) in the batches' gradients
    # (T x Hw x Ww x 3, read as (T * Hw * Ww) x 3) is a row part plus a column part: the owning
    # tile is (row part, column part) in TilePlan's order, rows outer.
    height, width = window
    row_parts = sorted({(t.rows, t.window[0]) for t in tiles})
    col_parts = sorted({(t.cols, t.window[1]) for t in tiles})
    per_tile = height * width
    if count * per_tile >= 2**31:
        raise ValueError(f"{count} tiles of {height} x {width} exceed a 32-bit index")
    by_row = np.empty(shape[0], dtype=np.int64)
    for part, ((start, end), top) in enumerate(row_parts):
        by_row[start:end] = part * len(col_parts) * per_tile + (np.arange(start, end) - top) * width
    by_col = np.empty(shape[1], dtype=np.int64)
    for part, ((start, end), left) in enumerate(col_parts):
        by_col[start:end] = part * per_tile + np.arange(start, end) - left
    return Tables(
        rows=[to_device(corners[s : s + batch, 0]) for s in range(0, count, batch)],
        cols=[to_device(corners[s : s + batch, 1]) for s in range(0, count, batch)],
        offsets=(
            to_device(np.arange(height, dtype=np.int32)),
            to_device(np.arange(width, dtype=np.int32)),
        ),
        owners=(to_device(by_row.astype(np.int32)), to_device(by_col.astype(np.int32))),
    )


def _gather(dream: Tensor, rows: Tensor, cols: Tensor, offsets: Any, shift: Tensor) -> Tensor:
    """The windows (B x Hw x Ww x 3) at `rows`, `cols` on the image rolled by `shift`: on the
    image itself, window row i of a window at top row r is row (r + i - shift) mod h."""
    height, width = dream.shape[1], dream.shape[2]
    row = ops.mod(rows[:, None] + offsets[0][None, :] - shift[0], height)
    col = ops.mod(cols[:, None] + offsets[1][None, :] - shift[1], width)
    index = row[:, :, None] * width + col[:, None, :]
    tiles = ops.take(ops.reshape(dream, (3, height * width)), index, axis=1)
    return ops.transpose(tiles, (1, 2, 3, 0))


def _scatter(gradients: list[Tensor], owners: Any, shift: Tensor) -> Tensor:
    """The image's gradient (3 x h x w) from the batches' (each B x Hw x Ww x 3): pixel (y, x)
    lies at (y + shift) mod the size on the rolled image, whose owners say where its
    gradient is."""
    by_row, by_col = owners
    height, width = by_row.shape[0], by_col.shape[0]
    rolled_rows = ops.mod(ops.arange(height, dtype="int32") + shift[0], height)
    rolled_cols = ops.mod(ops.arange(width, dtype="int32") + shift[1], width)
    index = ops.take(by_row, rolled_rows)[:, None] + ops.take(by_col, rolled_cols)[None, :]
    flat = ops.reshape(ops.concatenate(gradients, axis=0), (-1, 3))
    return ops.transpose(ops.take(flat, index, axis=0), (2, 0, 1))


def _spread(gradient: Tensor) -> Tensor:
    """The gradient's standard deviation plus 1e-8, what it is divided by. Summed in float64
    where the backend has it (TensorFlow; JAX runs without 64-bit types), as imaging.std sums on
    the host: the dream amplifies the last bit of this divisor over the steps."""
    if keras.backend.backend() == "tensorflow":
        wide = ops.cast(gradient, "float64")
        mean = ops.mean(wide)
        spread = ops.sqrt(ops.maximum(ops.mean(ops.square(wide)) - mean * mean, 0.0))
        return ops.cast(spread + 1e-8, "float32")
    return ops.std(gradient) + 1e-8


def _normalized(gradient: Tensor) -> Tensor:
    return gradient / _spread(gradient)


def bilinear_taps(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear resampling of an axis of `size` samples to `out` (antialiased when
    shrinking), as (out x K) source indices and weights: its precompute_coeffs, so that the
    device resizes as imaging.resize_plane does. Unused taps point at 0 with weight 0."""
    scale = size / out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter's support, stretched
    taps = int(np.ceil(support)) * 2 + 1
    index = np.zeros((out, taps), dtype=np.int32)
    weight = np.zeros((out, taps), dtype=np.float64)
    for position in range(out):
        center = (position + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), size) - first
        at = np.arange(count)
        # The triangle filter at each source sample's distance, in the stretched scale.
        w = np.maximum(0.0, 1.0 - np.abs((at + first - center + 0.5) / filterscale))
        total = w.sum()
        index[position, :count] = first + at
        weight[position, :count] = w / total if total else w
    return index, weight.astype(np.float32)


@dataclass(frozen=True)
class Pyramid:
    """The resampling taps of a Laplacian pyramid over one shape, on the device: per level, the
    halving and the doubling back of each axis (imaging.laplacian_normalize's resizes)."""

    levels: list[tuple[Tensor, ...]]  # per level: (down rows, down cols, up rows, up cols) taps


def pyramid(shape: tuple[int, int], levels: int = 4) -> Pyramid:
    """The taps of imaging.laplacian_normalize's pyramid over `shape` (h, w)."""
    steps = []
    for _ in range(levels - 1):
        low = (max(1, shape[0] // 2), max(1, shape[1] // 2))
        taps = [
            bilinear_taps(shape[0], low[0]),
            bilinear_taps(shape[1], low[1]),
            bilinear_taps(low[0], shape[0]),
            bilinear_taps(low[1], shape[1]),
        ]
        steps.append(tuple(to_device(array) for pair in taps for array in pair))
        shape = low
    return Pyramid(steps)


def _resize(planes: Tensor, rows: tuple[Tensor, Tensor], cols: tuple[Tensor, Tensor]) -> Tensor:
    """3 x h x w resized by taps, as Pillow does: the columns first, then the rows; an axis whose
    size does not change is left alone, as Pillow leaves it."""
    if cols[0].shape[0] != planes.shape[2]:
        planes = ops.sum(ops.take(planes, cols[0], axis=2) * cols[1], axis=-1)
    if rows[0].shape[0] != planes.shape[1]:
        planes = ops.sum(ops.take(planes, rows[0], axis=1) * rows[1][:, :, None], axis=2)
    return planes


def _laplacian(gradient: Tensor, levels: list[tuple[Tensor, ...]]) -> Tensor:
    """imaging.laplacian_normalize on the device: the gradient split into a Laplacian pyramid,
    each level scaled to unit spread, merged again."""
    highs = []
    current = gradient
    for taps in levels:
        down_rows, down_cols = (taps[0], taps[1]), (taps[2], taps[3])
        up_rows, up_cols = (taps[4], taps[5]), (taps[6], taps[7])
        low = _resize(current, down_rows, down_cols)
        highs.append((current - _resize(low, up_rows, up_cols), up_rows, up_cols))
        current = low
    merged = _normalized(current)
    for high, up_rows, up_cols in reversed(highs):
        merged = _resize(merged, up_rows, up_cols) + _normalized(high)
    return merged


def _tv_gradient(plane: Tensor) -> Tensor:
    """imaging.tv_gradient of one plane: 4x minus the four neighbours, edges replicated,
    subtracted in the same order."""
    above = ops.concatenate([plane[:1], plane[:-1]], axis=0)
    below = ops.concatenate([plane[1:], plane[-1:]], axis=0)
    left = ops.concatenate([plane[:, :1], plane[:, :-1]], axis=1)
    right = ops.concatenate([plane[:, 1:], plane[:, -1:]], axis=1)
    return 4.0 * plane - above - below - left - right


def _update(laplacian: bool, masked: bool, other: bool, smooth: bool) -> Callable[..., Tensor]:
    """A step's update: (dream, gradient, [weights, [other gradient]], pyramid, step size,
    smoothing) -> the next dream. Each objective's gradient is normalized over the whole image
    (by its spread, or per Laplacian level) before the mask weighs it; then the planes are
    updated one after another, as the host did, so that the temporaries are a plane's."""

    def update(dream: Tensor, gradient: Tensor, *rest: Any) -> Tensor:
        *blend, levels, step_size, smoothing = rest
        if laplacian:  # the pyramid is the whole image's: normalized before the planes
            planes = [dream, _laplacian(gradient, levels)]
            if other:
                planes.append(_laplacian(blend[1], levels))
            spreads = [1.0, 1.0]
        else:
            planes = [dream, gradient, *blend[1:]]
            spreads = [_spread(gradient), _spread(blend[1]) if other else 1.0]

        def plane_update(planes: Any) -> Tensor:
            plane, g, *second = planes
            g = g / spreads[0]
            if masked:
                g = g * blend[0]
                if other:
                    g = g + second[0] / spreads[1] * (1.0 - blend[0])
            plane = plane + g * step_size
            if smooth:
                plane = plane - _tv_gradient(plane) * smoothing
            return ops.clip(plane, -1.0, 1.0)

        return ops.map(plane_update, tuple(planes))

    return update


class DeviceSteps:
    """The compiled pieces of a step for one backend: gather, scatter and the update."""

    def __init__(self, backend: str, jit: bool) -> None:
        module = backend_module(backend)
        self.compile: Callable[[Callable[..., Tensor]], Callable[..., Tensor]] = functools.partial(
            module.compile, jit=jit
        )
        self.gather = self.compile(_gather)
        self.scatter = self.compile(_scatter)
        self._updates: dict[tuple[bool, ...], Callable[..., Tensor]] = {}

    def update(
        self,
        dream: Tensor,
        gradient: Tensor,
        blend: Sequence[Tensor],
        *,
        pyramid: Pyramid | None,
        step_size: float,
        smoothing: float,
    ) -> Tensor:
        """The next dream after `gradient` (and `blend`: the mask's weights, and the masked-out
        part's gradient), normalized per Laplacian level of `pyramid` when there is one."""
        key = (pyramid is not None, len(blend) > 0, len(blend) > 1, smoothing > 0)
        if key not in self._updates:
            self._updates[key] = self.compile(_update(*key))
        levels = [] if pyramid is None else pyramid.levels
        scalars = self.scalars(step_size, smoothing)
        return self._updates[key](dream, gradient, *blend, levels, *scalars)

    @functools.lru_cache(maxsize=8)  # noqa: B019  # one entry per render's params, few
    def scalars(self, *values: float) -> tuple[Tensor, ...]:
        """`values` as float32 scalars on the device, put there once per render's params."""
        return tuple(to_device(np.float32(value)) for value in values)


@functools.cache
def _steps(backend: str, jit: bool) -> DeviceSteps:
    return DeviceSteps(backend, jit)


def device_steps(model: DreamModel) -> DeviceSteps:
    """The compiled step pieces for `model`'s backend and device (built once per process), with
    XLA where the model's gradient has it (device.should_compile: not TensorFlow on a CPU)."""
    return _steps(model.backend, policy.should_compile(model.backend, model.device))
