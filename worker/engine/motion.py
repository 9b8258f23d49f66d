"""Dreams in motion: a zoom animation from one image, and a video dreamed frame by frame.

Frame n starts from the dream of frame n-1: for an animation, that dream zoomed, rotated and
shifted; for a video, that dream carried onto frame n by dense optical flow and blended with
it, with the pixels the flow cannot carry (occluded or newly seen) taken from frame n alone.
So the dream moves with the picture instead of being dreamed anew, flickering, every frame.

Pure like the still loop: numpy frames (H x W x 3 uint8) in and out, a progress callback,
each finished frame handed to `on_frame` (the caller stores it; a resumed loop starts after
the last one stored). Decoding, encoding and storage live outside. Flow and warping are
OpenCV's (DIS optical flow, cv2.remap), not hand-written kernels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from shared.params import Animation, RenderParams
from worker.engine.dream import Progress, render
from worker.engine.model import DreamModel


@dataclass(frozen=True)
class FrameProgress(Progress):
    """Progress of a frame job: the still render's fields for the frame in progress, with
    `fraction` and `eta_seconds` over the whole job; `frame` counts from 1."""

    frame: int
    frames: int


def transform(
    frame: np.ndarray, zoom: float, rotate: float, translate: tuple[float, float]
) -> np.ndarray:
    """`frame` zoomed by `zoom` and rotated by `rotate` degrees about its centre, then shifted
    by `translate` (x, y) pixels; the same size, edges filled by reflection."""
    height, width = frame.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rotate, zoom)
    matrix[:, 2] += np.asarray(translate)
    # Reflected edges: a zoom out or a shift brings no black border into the dream.
    return cv2.warpAffine(
        frame, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def dense_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Where each pixel of `source` moved to in `target` (H x W x 2 float32, x then y)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]  # not in OpenCV's stubs
    flow: np.ndarray = dis.calc(_gray(source), _gray(target), None)
    return flow


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` resampled at each pixel's position plus `flow` (a backward warp)."""
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(
        np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    )
    warped: np.ndarray = cv2.remap(
        image,
        grid_x + flow[..., 0],
        grid_y + flow[..., 1],
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return warped


def occluded(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """H x W bool: pixels of the new frame the flow cannot carry from the previous one.

    The forward-backward check (Sundaram et al. 2010, as Ruder et al. use it for video style
    transfer): a pixel followed back into the previous frame and forward again should come
    home; where it does not, it was hidden there or is newly seen.
    """
    forward_there = warp(forward, backward)  # the forward flow where each pixel came from
    round_trip = forward_there + backward
    error = np.sum(round_trip**2, axis=-1)
    scale = np.sum(forward_there**2, axis=-1) + np.sum(backward**2, axis=-1)
    hidden: np.ndarray = error > 0.01 * scale + 0.5
    return hidden


def carry(
    previous_frame: np.ndarray, previous_dream: np.ndarray, frame: np.ndarray, blend: float
) -> np.ndarray:
    """The starting image of `frame`'s dream: the previous dream carried onto `frame` by
    optical flow, blended with `frame` (`blend` of the dream), and `frame` itself wherever
    the flow check finds the previous frame has nothing to carry."""
    backward = dense_flow(frame, previous_frame)
    forward = dense_flow(previous_frame, frame)
    carried = warp(previous_dream, backward).astype(np.float32)
    mixed = blend * carried + (1.0 - blend) * frame.astype(np.float32)
    hidden = occluded(backward, forward)
    mixed[hidden] = frame[hidden]
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def animate(
    image: np.ndarray,
    params: RenderParams,
    model: DreamModel,
    *,
    on_frame: Callable[[int, np.ndarray], None],
    start: int = 0,
    previous: np.ndarray | None = None,
    on_progress: Callable[[FrameProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Dream a zoom animation from `image` (params.animation says how), frame by frame.

    Frame 0 is the dream of `image`; frame n the dream of frame n-1 transformed. Each
    finished frame goes to `on_frame(n, frame)`. To resume, pass `start` and the dream of
    frame start-1 as `previous`: the frames that follow are those of a loop that never
    stopped. `should_stop` is asked before every tile batch (render raises Canceled).
    """
    animation = params.animation or Animation()
    if start > 0 and previous is None:
        raise ValueError("resuming an animation needs the previous frame's dream")
    counter = _FrameCounter(animation.frames, start, on_progress)
    for n in range(start, animation.frames):
        if n == 0:
            source = image
        else:
            assert previous is not None
            source = transform(previous, animation.zoom, animation.rotate, animation.translate)
        previous = render(source, params, model, on_progress=counter.at(n), should_stop=should_stop)
        on_frame(n, previous)


def dream_video(
    frames: Iterable[np.ndarray],
    count: int,
    params: RenderParams,
    model: DreamModel,
    *,
    on_frame: Callable[[int, np.ndarray], None],
    start: int = 0,
    previous: tuple[np.ndarray, np.ndarray] | None = None,
    on_progress: Callable[[FrameProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Dream `count` video frames, each starting from the previous dream carried onto it.

    `frames` yields the video's frames from frame `start` on. To resume, pass `start` and
    (frame start-1, its dream) as `previous`. Each finished frame goes to `on_frame(n, frame)`.
    """
    if start > 0 and previous is None:
        raise ValueError("resuming a video needs the previous frame and its dream")
    counter = _FrameCounter(count, start, on_progress)
    for n, frame in enumerate(frames, start):
        if n >= count:
            break
        source = frame if previous is None else carry(*previous, frame, params.blend)
        dreamed = render(source, params, model, on_progress=counter.at(n), should_stop=should_stop)
        previous = (frame, dreamed)
        on_frame(n, dreamed)


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


class _FrameCounter:
    """Turns the still render's progress within frame n into progress over all frames."""

    def __init__(
        self, frames: int, start: int, on_progress: Callable[[FrameProgress], None] | None
    ) -> None:
        self.frames, self.start, self.on_progress = frames, start, on_progress
        self.began = time.monotonic()

    def at(self, n: int) -> Callable[[Progress], None] | None:
        if self.on_progress is None:
            return None
        report = self.on_progress

        def frame_progress(progress: Progress) -> None:
            fraction = (n + progress.fraction) / self.frames
            # The rate of this run's frames: a resumed run's earlier frames took no time here.
            done = fraction - self.start / self.frames
            elapsed = time.monotonic() - self.began
            # None until a frame of this run is done: the first frame pays for tracing.
            eta = (1.0 - fraction) * elapsed / done if n > self.start and done > 0 else None
            report(
                FrameProgress(
                    fraction=fraction,
                    octave=progress.octave,
                    octaves=progress.octaves,
                    step=progress.step,
                    steps=progress.steps,
                    tiles_done=progress.tiles_done,
                    tiles=progress.tiles,
                    eta_seconds=eta,
                    loss=progress.loss,
                    frame=n + 1,
                    frames=self.frames,
                )
            )

        return frame_progress
