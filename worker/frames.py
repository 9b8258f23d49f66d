"""Animation and video jobs on a worker: the engine's frame loop, each finished frame stored as
it is finished, a resumed attempt going on after the last frame stored, one encode at the end.

The frames of one attempt live under its own folder (shared/storage.py frame_key), written
fenced like checkpoints, so a worker that lost its job never overwrites a newer attempt's.
A new attempt reads the frames of the attempts before it: each attempt started where the
frames stored before it ended and stores frames in order, so together they are a run of
frames from 0, and the first missing one is found by bisection.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from shared.formats import MP4, frame_rate, output_format, result_format
from shared.images import decode_rgb, encode_animation, encode_image, encode_jpeg, fit_within
from shared.params import Animation, RenderParams
from shared.recipes import recipe_text
from shared.storage import ObjectNotFound, StorageError, frame_key, video_result_key
from shared.transitions import LostJob
from shared.video import decode_frames, encode_mp4, frame_times, video_fps
from worker.outputs import put_fenced, put_preview, render_recipe
from worker.runtime import Runtime
from worker.throttle import Throttle
from worker.watchers import ProgressReporter, ShouldStop

# Frames are stored as 8-bit PNG: lossless, so a resumed job goes on from the very pixels.
FRAME_FORMAT = output_format("png")

log = logging.getLogger(__name__)


def render_frames(
    job_id: uuid.UUID,
    attempt: int,
    runtime: Runtime,
    should_stop: ShouldStop,
    kind: str,
    params: RenderParams,
    input_key: str,
    frames: int,
) -> tuple[str, Any]:
    """Dream the job's frames from the first not yet stored, encode them all; the video's key
    and its recipe (which the file carries too, as a still's does)."""
    # Imported here: TensorFlow loads in the process that renders, never in Celery's parent.
    from worker.engine import Canceled, animate, dream_video

    try:
        data = runtime.storage.get(input_key)
    except ObjectNotFound:
        raise StorageError(f"the input of this job is missing from storage ({input_key})") from None
    # Every packet read before a frame is dreamed: a frame of another size than the job was
    # charged for, or a corrupt one, fails the job now (VideoRejected), not hours in. The
    # frames' times are the result's.
    times = frame_times(data) if kind == "video" else None
    start = _first_missing(runtime, job_id, attempt, frames)
    if start:
        log.info("job %s resumes at frame %d of %d", job_id, start + 1, frames)
    size = runtime.settings.preview_size
    # At most every preview_interval seconds, as a still's (it was rewritten every frame);
    # the last frame's always, so a finished job's preview is its end.
    previews = Throttle(runtime.settings.preview_interval)

    def store(n: int, frame: np.ndarray) -> None:
        put_fenced(
            runtime, should_stop, frame_key(job_id, attempt, n), encode_image(frame, FRAME_FORMAT)
        )
        if previews.take() or n == frames - 1:  # the preview is the latest finished frame
            put_preview(runtime, should_stop, encode_jpeg(fit_within(frame, size)))

    model = runtime.dream_model(params) if start < frames else None
    reporter = ProgressReporter(runtime, job_id, attempt)
    try:
        if model is None:
            pass  # every frame is stored: an attempt died while encoding
        elif kind == "animation":
            image = fit_within(decode_rgb(data), params.max_dim)
            previous = _frame(runtime, job_id, attempt, start - 1) if start else None
            animate(
                image,
                params,
                model,
                on_frame=store,
                start=start,
                previous=previous,
                on_progress=reporter,
                should_stop=should_stop,
            )
        else:
            source = decode_frames(data, params.max_dim)
            before = None
            if start:
                prior = _skip(source, start - 1)
                before = (prior, _frame(runtime, job_id, attempt, start - 1))
            dream_video(
                source,
                frames,
                params,
                model,
                on_frame=store,
                start=start,
                previous=before,
                on_progress=reporter,
                should_stop=should_stop,
            )
    except Canceled:
        raise LostJob(
            f"job {job_id} attempt {attempt} was canceled or taken from this worker"
        ) from None
    # A video may decode into fewer frames than its packets counted at submit.
    done = _first_missing(runtime, job_id, attempt, frames)
    if done == 0:
        raise StorageError("no frame of the video could be decoded on the worker")
    stored_frames = (_frame(runtime, job_id, attempt, n) for n in range(done))
    fps = (params.animation or Animation()).fps
    fmt = result_format(kind, params.output_format)
    recipe = render_recipe(runtime, params, model)
    text = recipe_text(recipe)
    if fmt is not MP4:  # a short animation asked for as an animated GIF or WebP
        video = encode_animation(stored_frames, done, fmt, fps, quality=params.quality, recipe=text)
    else:
        video = encode_mp4(
            stored_frames,
            frame_rate(fps) if kind == "animation" else video_fps(data),
            audio_from=data if kind == "video" else None,
            times=times[:done] if times and len(times) >= done else None,
            recipe=text,
        )
    stored = video_result_key(job_id, attempt, fmt.extension)
    put_fenced(runtime, should_stop, stored, video)
    return stored, recipe


def _skip(frames: Iterator[np.ndarray], index: int) -> np.ndarray:
    """Frame `index` of `frames`, the ones before it read and dropped."""
    for n, frame in enumerate(frames):
        if n == index:
            return frame
    raise StorageError(f"the video has no frame {index + 1} any more")


def _stored(runtime: Runtime, job_id: uuid.UUID, attempt: int, n: int) -> str | None:
    """The key of frame n as the newest attempt up to this one stored it, or None."""
    for earlier in range(attempt, 0, -1):
        key = frame_key(job_id, earlier, n)
        if runtime.storage.exists(key):
            return key
    return None


def _frame(runtime: Runtime, job_id: uuid.UUID, attempt: int, n: int) -> Any:
    key = _stored(runtime, job_id, attempt, n)
    if key is None:
        raise StorageError(f"frame {n + 1} of job {job_id} is missing from storage")
    return decode_rgb(runtime.storage.get(key))


def _first_missing(runtime: Runtime, job_id: uuid.UUID, attempt: int, frames: int) -> int:
    """The first frame no attempt up to this one has stored (`frames` when all are)."""
    low, high = 0, frames  # frames below low are stored; high is missing or the end
    while low < high:
        middle = (low + high) // 2
        if _stored(runtime, job_id, attempt, middle) is None:
            high = middle
        else:
            low = middle + 1
    return low
