"""What a render costs, from the engine's own octave schedule.

The engine (worker/engine/dream.py) renders exactly the sizes `octave_sizes` returns, and the
API charges and limits a job by the same function, so the price of a job and what the worker
does cannot drift apart. Pure Python: the API imports it without TensorFlow.
"""

from __future__ import annotations

import math
from typing import Any

from shared.catalogue import BACKBONES
from shared.params import RenderParams
from shared.settings import Settings


class CostRefused(ValueError):
    """A job breaks a limit; `field` is the request part to change, the message says how."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def render_size(width: int, height: int, max_dim: int | None) -> tuple[int, int]:
    """(width, height) the engine renders a width x height input at: scaled down (never up) so
    its longer side is at most `max_dim`."""
    longest = max(width, height)
    if max_dim is None or longest <= max_dim:
        return width, height
    scale = max_dim / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def octave_sizes(width: int, height: int, params: RenderParams) -> list[tuple[int, int]]:
    """(width, height) of every octave the engine renders for a width x height input, smallest
    first: octave n = -(octaves // 2) ... at octave_scale ** n times the size after max_dim,
    those above the input at the input's size.

    Octaves above the input are capped so that a photo is never dreamed larger than itself:
    uncapped, five octaves at 1.3 render the last at 1.69x a side (2.86x the pixels), which
    refused any photo above a third of ONEIRO_MAX_PIXELS at default params. Below the input,
    where a dream's larger shapes form, the classic schedule is unchanged.

    An octave whose shorter side would fall below what the backbone can see is raised to it,
    as the engine must, so a tiny or thin input costs what it really renders.
    """
    width, height = render_size(width, height, params.max_dim)
    min_side = BACKBONES[params.model].min_side
    octaves = params.octaves
    sizes = []
    for n in range(-(octaves // 2), octaves - octaves // 2):
        factor = max(min(params.octave_scale**n, 1.0), min_side / min(width, height))
        sizes.append((max(1, round(width * factor)), max(1, round(height * factor))))
    return sizes


def passes(params: RenderParams) -> int:
    """Gradient passes per step: two when a mask gives its masked-out part layers of its own
    (each part's objective has its own gradient), else one. A guide image adds one forward pass
    of a small image per job, nothing per step, so it does not count."""
    return 2 if params.mask_layers else 1


def work(width: int, height: int, params: RenderParams) -> int:
    """Pixel-steps a job costs: the pixels of every octave it renders x steps per octave x
    gradient passes per step."""
    pixels = sum(w * h for w, h in octave_sizes(width, height, params))
    return pixels * params.steps * passes(params)


def megapixel_steps(
    width: int, height: int, params: dict[str, Any], frames: int | None = None
) -> float:
    """A stored job's work in megapixel-steps (the unit of the throughput metric and of the
    render estimate), from its stored params; every frame of a frame job counted."""
    # Stored params are resolved and were valid when submitted; not validated again, so a
    # range tightened since cannot break a scrape or a poll.
    return frame_work(width, height, RenderParams.model_construct(**params), frames) / 1e6


def peak_pixels(width: int, height: int, params: RenderParams) -> int:
    """Pixels of the largest octave: what the engine's memory grows with."""
    return max(w * h for w, h in octave_sizes(width, height, params))


# A worker's peak memory, in three parts (peak_memory_bytes); benchmarks/peak_memory.py checks
# the sum against the peak RSS of real renders on the CPU.
# What a worker holds before any job: the interpreter with Keras and its backend imported, and
# a gradient traced. Measured on the CPU at about 670 MiB besides the weights; a GPU's
# runtime (CUDA context, cuDNN workspaces) takes more, so a round GiB.
RUNTIME_BYTES = 1 << 30
# The backbone's weights, float32, held twice: as loaded, and folded into the model that runs.
WEIGHT_COPIES = 2
# Per pixel of the largest octave, on the device: the dream (3 float32 planes), the batches'
# gradients and the gradient put together from them, the normalization's temporaries (a
# Laplacian pyramid's levels), the next dream and the next octave's start (3 planes each). The
# engine on the device measured about 100 on a CPU with TensorFlow's graph (a 16.8 MP step,
# Laplacian, benchmarks/peak_memory.py), where the numpy engine had needed about 36.
OCTAVE_BYTES_PER_PIXEL = 120
# Per pixel of the input: the decoded image (up to 16 bits a channel), the dream scaled back to
# it (3 float32 planes) and the result.
INPUT_BYTES_PER_PIXEL = 24
GIB = float(1 << 30)


def largest_window(width: int, height: int, params: RenderParams) -> tuple[int, int]:
    """The largest tile window (height, width) the engine feeds the model over all octaves: each
    axis cut into as few parts as keep a part within tile_size, the window the smallest side the
    backbone fully covers that holds a part (worker/engine/tiling.py TilePlan)."""
    backbone = BACKBONES[params.model]

    def side(length: int) -> int:
        return backbone.window(math.ceil(length / math.ceil(length / params.tile_size)))

    windows = [(side(h), side(w)) for w, h in octave_sizes(width, height, params)]
    return max(windows, key=lambda window: window[0] * window[1])


def peak_memory_bytes(
    width: int, height: int, params: RenderParams, tiles_per_call: int = 1
) -> int:
    """The memory a worker needs to render a width x height input with `params`: the runtime and
    the backbone's weights, the image state at the largest octave and at the input size, and
    the gradient temporaries of `tiles_per_call` of the largest tile window (a GPU worker sizes
    its batches to its free memory, so one tile is what it cannot do without; a mask that
    dreams its own layers runs a second model).

    An upper bound, not a measurement. The per-pixel figures of the tile's gradient are a GPU's
    (XLA's memory analysis); TensorFlow on a CPU frees as it goes and needs several times less,
    so there the estimate lies 1.5-3x above the peak RSS of real renders
    (benchmarks/peak_memory.py)."""
    backbone = BACKBONES[params.model]
    models = passes(params)
    window_h, window_w = largest_window(width, height, params)
    return (
        RUNTIME_BYTES
        + models * WEIGHT_COPIES * 4 * backbone.parameters
        + peak_pixels(width, height, params) * OCTAVE_BYTES_PER_PIXEL
        + width * height * INPUT_BYTES_PER_PIXEL
        + tiles_per_call * window_h * window_w * backbone.gradient_bytes_per_pixel
    )


def check_limits(width: int, height: int, params: RenderParams, settings: Settings) -> None:
    """Raise CostRefused when a width x height input with `params` breaks a limit: its aspect
    ratio, the pixels of its largest octave, or its work."""
    ratio = max(width, height) / min(width, height)
    if ratio > settings.max_aspect_ratio:
        raise CostRefused(
            "image",
            f"the image is {width}x{height}, an aspect ratio of {_figure(ratio)}:1; the limit is "
            f"{_figure(settings.max_aspect_ratio)}:1 (ONEIRO_MAX_ASPECT_RATIO): crop the image",
        )
    sizes = octave_sizes(width, height, params)
    top_w, top_h = max(sizes, key=lambda size: size[0] * size[1])
    if top_w * top_h > settings.max_pixels:
        fits = _largest_max_dim(width, height, params, settings.max_pixels)
        hint = f", or set max_dim to at most {fits}" if fits else ""
        raise CostRefused(
            "params",
            f"the largest of its {len(sizes)} octaves would be {top_w}x{top_h} = "
            f"{top_w * top_h} pixels; the limit is {settings.max_pixels} (ONEIRO_MAX_PIXELS): "
            f"lower octaves or octave_scale{hint}",
        )
    cost = work(width, height, params)
    if cost > settings.max_work:
        raise CostRefused(
            "params",
            f"the job would cost {cost} pixel-steps (the pixels of its {len(sizes)} octaves, "
            f"{sizes[0][0]}x{sizes[0][1]} to {top_w}x{top_h}, x {params.steps} steps"
            f"{' x 2 passes for mask_layers' if passes(params) > 1 else ''}); the "
            f"limit is {settings.max_work} (ONEIRO_MAX_WORK): lower steps, octaves or max_dim",
        )


def _largest_max_dim(width: int, height: int, params: RenderParams, max_pixels: int) -> int | None:
    """The largest max_dim (at least 32, the least the params allow) under which the job's
    largest octave fits `max_pixels`, or None when none does."""

    def fits(max_dim: int) -> bool:
        return (
            peak_pixels(width, height, params.model_copy(update={"max_dim": max_dim})) <= max_pixels
        )

    low, high = 32, max(width, height)
    if not fits(low):
        return None
    while low < high:  # the largest octave grows with max_dim: bisect for the last that fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def _figure(number: float) -> str:
    """`number` to two decimals, without trailing zeros (20.04, 20.5, 20)."""
    return f"{number:.2f}".rstrip("0").rstrip(".")


def frame_work(width: int, height: int, params: RenderParams, frames: int | None) -> int:
    """Pixel-steps of a job of `frames` frames (None: a still), every frame counted."""
    return work(width, height, params) * (frames or 1)


def check_frame_limits(
    width: int, height: int, params: RenderParams, frames: int, settings: Settings
) -> None:
    """check_limits for an animation or video job of `frames` frames of width x height: the
    frame count, each frame's size, and the work of every frame together."""
    if frames > settings.max_frames:
        raise CostRefused(
            "params" if params.animation else "video",
            f"the job would render {frames} frames; the limit is {settings.max_frames} "
            "(ONEIRO_MAX_FRAMES): render fewer frames",
        )
    check_limits(width, height, params, settings)
    cost = frame_work(width, height, params, frames)
    if cost > settings.max_work:
        raise CostRefused(
            "params",
            f"the job would cost {cost} pixel-steps ({work(width, height, params)} a frame x "
            f"{frames} frames); the limit is {settings.max_work} (ONEIRO_MAX_WORK): lower "
            "steps, octaves, max_dim or the frame count",
        )
