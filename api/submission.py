"""What POST /v1/jobs sends, read and checked: the multipart parts (`image` or `video`,
`params`, `webhook`), the image's or video's format and size, the job's cost, and the tenant's
cap on active jobs.
Every refusal is a 4xx problem+json naming the part; nothing is stored before all pass."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import pydantic_core
from flask import request
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.auth import tenant_id
from api.controls import ControlParts, read_controls
from api.db import get_db, services
from api.problems import Problem, invalid
from shared.cost import CostRefused, check_frame_limits, check_limits, render_size
from shared.download_failures import download_failures
from shared.estimates import check_memory
from shared.formats import ANIMATED_FORMATS, OUTPUT_FORMATS, fps_problem, result_format
from shared.images import EXTENSIONS, ImageRejected, ImageTooLarge, inspect_image
from shared.models import Job, Upload, utcnow
from shared.params import RenderParams, error_message, look_params, with_frame_defaults
from shared.recipes import RecipeRefused, WeightsMismatch, check_weights, recipe_params
from shared.recipes import weights_digest as digest_of
from shared.settings import Settings
from shared.transitions import count_active
from shared.uploads import upload_store
from shared.webhooks import WebhookRefused, WebhookSpec, check_target
from shared.weights import NoWeights, require_weights

if TYPE_CHECKING:
    from shared.video import VideoInfo

FORM_PARTS = {"image", "params", "webhook", "guide", "mask", "recipe", "video"}
# When a tenant at its cap of active jobs may try again: a render takes seconds to hours.
ACTIVE_CAP_RETRY_AFTER_S = 30
# Browsers show a GIF frame shorter than 20 ms (2 hundredths, a GIF's unit) for 100 ms.
MAX_GIF_FPS = 50


@dataclass(frozen=True)
class Submission:
    """A job request that passed every check."""

    params: RenderParams
    # The params part as sent (not resolved): what the request asked for, for idempotency.
    asked: dict[str, Any]
    image: bytes
    extension: str
    width: int
    height: int
    webhook: WebhookSpec | None
    # The optional guide and mask parts, checked.
    controls: ControlParts
    # The recipe the job renders again (the 'recipe' part), for the worker to check against.
    rerun_of: dict[str, Any] | None = None
    # `image` (a still), `animation` (params.animation) or `video` (`image` holds the video);
    # the frame kinds' frame count, known at submit so cost and progress count every frame.
    kind: str = "image"
    frames: int | None = None
    # The complete resumable upload the input is (`image` is then empty): its bytes stay
    # where they are, and the job takes the upload.
    upload: Upload | None = None


def read_submission(settings: Settings) -> Submission:
    """This request's parts, checked (415, 413 or 422 otherwise)."""
    params, asked, rerun_of = _read_params()
    # A backbone the recipe chose is the recipe's to answer for, another the params'.
    from_recipe = rerun_of is not None and asked.get("model") == rerun_of["params"].get("model")
    field = "recipe" if from_recipe else "params.model"
    try:
        weights = require_weights(settings, params.model, download_failures(settings))
    except NoWeights as exc:  # accepted, it would fail on the worker: refuse it now
        raise invalid([{"field": field, "message": str(exc)}]) from None
    if rerun_of is not None:
        try:  # as the worker would find, from the same weights
            check_weights(rerun_of, params.model, digest_of(weights))
        except WeightsMismatch as exc:
            raise invalid([{"field": "recipe", "message": str(exc)}]) from None
    if params.start_by is not None and params.start_by <= utcnow():
        # It would only be recorded to expire at once.
        raise invalid(
            [{"field": "params.start_by", "message": "start_by has passed: give a later time"}]
        )
    if _sent("video"):
        return _read_video_submission(params, asked, rerun_of, settings)
    if not _sent("image"):
        raise invalid(
            [{"field": "image", "message": "a multipart file part named 'image' is required"}]
        )
    with _input("image", settings) as (data, upload):
        try:
            image_format, width, height = inspect_image(data, settings.max_pixels)
        except ImageTooLarge as exc:
            raise Problem(413, "Image too large", str(exc), limit=settings.max_pixels) from None
        except ImageRejected as exc:
            raise invalid([{"field": "image", "message": str(exc)}]) from None
    frames = None if params.animation is None else params.animation.frames
    _check_cost(width, height, params, frames, settings)
    if frames is not None:
        _check_frame_params(asked, "animation")
        _check_animated(params, render_size(width, height, params.max_dim), settings)
    elif params.output_format not in OUTPUT_FORMATS:
        message = f"{params.output_format} is written for animations (params.animation) only"
        raise invalid([{"field": "params.output_format", "message": message}])
    return Submission(
        params=params,
        asked=asked,
        image=data if isinstance(data, bytes) else b"",
        extension=EXTENSIONS[image_format],
        width=width,
        height=height,
        webhook=_read_webhook(settings),
        controls=read_controls(asked, (width, height), settings, EXTENSIONS),
        rerun_of=rerun_of,
        kind="image" if frames is None else "animation",
        frames=frames,
        upload=upload,
    )


def _read_video_submission(
    params: RenderParams,
    asked: dict[str, Any],
    rerun_of: dict[str, Any] | None,
    settings: Settings,
) -> Submission:
    """A video job: the `video` part inspected (its header against the limits before a frame
    is decoded), its frame size and count the job's."""
    if _sent("image"):
        raise invalid([{"field": "video", "message": "send an 'image' or a 'video', not both"}])
    if params.animation is not None:
        message = "a video job takes no animation; send an image to animate"
        raise invalid([{"field": "params.animation", "message": message}])
    _check_frame_params(asked, "video")
    with _input("video", settings) as (data, upload):
        info = _inspect_video(data, settings)
    _check_cost(info.width, info.height, params, info.frames, settings)
    return Submission(
        params=params,
        asked=asked,
        image=data if isinstance(data, bytes) else b"",
        extension=info.extension,
        width=info.width,
        height=info.height,
        webhook=_read_webhook(settings),
        controls=read_controls(asked, (info.width, info.height), settings, EXTENSIONS),
        rerun_of=rerun_of,
        kind="video",
        frames=info.frames,
        upload=upload,
    )


def _sent(part: str) -> bool:
    """Whether the request has the input part `part`: a file, or a text naming an upload."""
    return part in request.files or part in request.form


@contextlib.contextmanager
def _input(part: str, settings: Settings) -> Iterator[tuple[bytes | IO[bytes], Upload | None]]:
    """The input part's bytes, or the complete upload it names (`upload:<id>`) as a file read
    as needed: a large upload is inspected without being held in memory."""
    if part in request.files:
        yield request.files[part].read(), None
        return
    upload = _named_upload(part)
    store = upload_store(services().storage, settings.upload_part_bytes)
    with store.reader(upload) as file:
        yield file, upload


def _named_upload(part: str) -> Upload:
    """The complete upload of this tenant that the text part names; 422 otherwise."""
    text = request.form[part].strip()
    try:
        if not text.startswith("upload:"):
            raise ValueError
        upload_id = uuid.UUID(text.removeprefix("upload:"))
    except ValueError:
        message = f"send the {part} as a file part, or as the text upload:<id> of an upload"
        raise invalid([{"field": part, "message": message}]) from None
    upload = get_db().get(Upload, upload_id)
    problem = None
    if upload is None or upload.tenant_id != tenant_id():
        problem = f"there is no upload {upload_id} of this tenant"
    elif upload.job_id is None and upload.expires_at <= utcnow():
        problem = f"upload {upload_id} has expired"
    elif upload.completed_at is None:
        problem = (
            f"upload {upload_id} holds {upload.received} of its {upload.length} bytes: "
            "send the rest, then submit"
        )
    elif upload.length == 0:
        problem = f"upload {upload_id} is empty"
    if problem is not None:
        raise invalid([{"field": part, "message": problem}])
    assert upload is not None
    return upload


def _inspect_video(data: bytes | IO[bytes], settings: Settings) -> VideoInfo:
    """413 naming the limit a frame size, frame count or duration breaks (from the header,
    before a frame is decoded); 422 for a file that is no video we can decode."""
    # Imported when a video arrives: FFmpeg's libraries need not load at every API start.
    from shared.video import VideoRejected, VideoTooLarge, inspect_video

    try:
        return inspect_video(
            data, settings.max_pixels, settings.max_frames, settings.max_video_seconds
        )
    except VideoTooLarge as exc:
        raise Problem(413, "Video too large", str(exc), limit=exc.limit, what=exc.what) from None
    except VideoRejected as exc:
        raise invalid([{"field": "video", "message": str(exc)}]) from None


def _check_frame_params(asked: dict[str, Any], kind: str) -> None:
    """A frame job's result is an MP4 of 8-bit frames (or, for an animation, an animated GIF
    or WebP), dreamed without guide or mask: params (and parts) that would be silently ignored
    are refused."""
    defaults = {
        name: RenderParams.model_fields[name].default for name in ("output_format", "quality")
    }
    named = asked.get("output_format", defaults["output_format"])
    animated = ANIMATED_FORMATS.get(named) if kind == "animation" else None
    makes = (
        f"an animation makes an MP4, or the {' or '.join(ANIMATED_FORMATS)} asked for"
        if kind == "animation"
        else "a video job makes an MP4"
    )
    errors = []
    if named != defaults["output_format"] and animated is None:
        errors.append({"field": "params.output_format", "message": makes})
    if asked.get("quality", defaults["quality"]) != defaults["quality"] and not (
        animated and animated.lossy
    ):
        errors.append({"field": "params.quality", "message": f"{makes}; it takes no quality"})
    errors += [
        {"field": part, "message": "animation and video jobs take no guide or mask"}
        for part in ("guide", "mask")
        if part in request.files or part in request.form
    ]
    if errors:
        raise invalid(errors)


def _check_animated(params: RenderParams, size: tuple[int, int], settings: Settings) -> None:
    """An animation's rate, one its format holds (refused now, not after every frame is
    rendered); asked for as an animated GIF or WebP: short and small (an MP4 otherwise), and for
    a GIF, no faster than browsers play one."""
    if params.animation is None:
        return
    fps_error = fps_problem(params.animation.fps, result_format("animation", params.output_format))
    if fps_error is not None:
        raise invalid([{"field": "params.animation.fps", "message": fps_error}])
    if params.output_format not in ANIMATED_FORMATS:
        return
    name, animation = params.output_format, params.animation
    errors = []
    if animation.frames > settings.max_gif_frames:
        message = (
            f"an animated {name} holds at most {settings.max_gif_frames} frames "
            f"(ONEIRO_MAX_GIF_FRAMES), not {animation.frames}: render fewer or ask for an MP4"
        )
        errors.append({"field": "params.animation.frames", "message": message})
    width, height = size
    if width * height > settings.max_gif_pixels:
        message = (
            f"an animated {name}'s frames are at most {settings.max_gif_pixels} pixels "
            f"(ONEIRO_MAX_GIF_PIXELS), not {width}x{height} = {width * height}: set a smaller "
            "max_dim or ask for an MP4"
        )
        errors.append({"field": "params.max_dim", "message": message})
    if name == "gif" and animation.fps > MAX_GIF_FPS:
        message = (
            f"a GIF plays at most {MAX_GIF_FPS} fps (browsers show a frame shorter than 20 ms "
            "for 100 ms): lower fps or ask for webp or an MP4"
        )
        errors.append({"field": "params.animation.fps", "message": message})
    if errors:
        raise invalid(errors)


def _check_cost(
    width: int, height: int, params: RenderParams, frames: int | None, settings: Settings
) -> None:
    """The job's size and work against the limits, every frame of a frame job counted."""
    try:
        if frames is None:
            check_limits(width, height, params, settings)
        else:
            check_frame_limits(width, height, params, frames, settings)
        # Refused here rather than failing on a worker that cannot hold it (one frame at a
        # time: a frame job holds what a still of its size does).
        check_memory(width, height, params, settings)
    except CostRefused as exc:
        raise invalid([{"field": exc.field, "message": str(exc)}]) from None


def check_active_cap(session: Session, tenant_id: uuid.UUID, limit: int) -> None:
    """429 when the tenant already has `limit` jobs queued or running.

    A soft cap: submits of one tenant that arrive at the same moment each count the jobs
    committed before them, so the cap can be passed by as many as are in flight together
    (at most the API's threads). Locking the tenant's row until commit would make it exact,
    and would also line up every submit of a busy tenant behind one lock: measured, that
    doubled submit latency at 100 per second (benchmarks/README.md).
    """
    active = count_active(session, tenant_id)
    if active >= limit:
        raise Problem(
            429,
            "Too many active jobs",
            f"this tenant has {active} jobs queued or running; the limit is {limit}: "
            "wait for some to finish or cancel some",
            headers={"Retry-After": str(ACTIVE_CAP_RETRY_AFTER_S)},
            limit=limit,
            value=active,
        )


def _read_webhook(settings: Settings) -> WebhookSpec | None:
    """The optional 'webhook' part: {"url": ..., "events": [...]}, to a target we may call."""
    text = _form_text("webhook")
    if text is None:
        return None
    try:
        webhook = WebhookSpec.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise invalid(_field_errors("webhook", exc)) from None
    try:
        check_target(str(webhook.url), settings.webhook_allow_private)
    except WebhookRefused as exc:
        raise invalid([{"field": "webhook.url", "message": str(exc)}]) from None
    return webhook


def _form_text(name: str) -> str | None:
    """A form part sent as a field or as a file, as text; None when absent."""
    if name in request.files:
        return request.files[name].read().decode("utf-8", errors="replace")
    return request.form.get(name)


def _field_errors(part: str, exc: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join([part, *map(str, e["loc"])]),
            "message": error_message(e) if part == "params" else e["msg"],
        }
        for e in exc.errors()
    ]


def _read_params() -> tuple[RenderParams, dict[str, Any], dict[str, Any] | None]:
    # A part with an empty name or none (werkzeug keys that one None) is unknown, not a 500.
    names = (set(request.form) | set(request.files)) - FORM_PARTS
    unknown = sorted({name or "(unnamed part)" for name in names})
    if not request.content_type or not request.content_type.startswith("multipart/form-data"):
        raise Problem(
            415,
            "Unsupported Media Type",
            "send the job as multipart/form-data with an 'image' file part and an "
            "optional 'params' JSON part",
        )
    if unknown:
        raise invalid(
            [
                {
                    "field": name,
                    "message": (
                        "unknown form part; expected 'image' or 'video', 'params', "
                        "'webhook', 'guide', 'mask' and 'recipe'"
                    ),
                }
                for name in unknown
            ]
        )
    text = _form_text("params") or "{}"
    try:
        # pydantic's parser, which validates the part below: it refuses numbers past its range
        # and nesting past its depth with a ValueError, where json.loads raised RecursionError.
        raw = pydantic_core.from_json(text)
    except ValueError as exc:
        raise invalid([{"field": "params", "message": f"not valid JSON: {exc}"}]) from None
    if not isinstance(raw, dict):
        raise invalid([{"field": "params", "message": "must be a JSON object"}])
    recipe = _read_recipe()
    if recipe is not None:
        if "preset" in raw:
            raise invalid(
                [{"field": "recipe", "message": "give a recipe or a params.preset, not both"}]
            )
        # The recipe's params, overridden by the ones sent: the same look, on a new image.
        # The recipe's look: how its job was queued (priority, start_by, max_run_seconds) is
        # not carried onto the new one.
        raw = {**look_params(recipe["params"]), **raw}
        text = json.dumps(raw)
    if _sent("video") or raw.get("animation") is not None:
        # A frame starts from the previous dream: fewer steps and octaves than a still's. Not
        # in `raw`: the params as sent stay what the request asked for.
        text = json.dumps(with_frame_defaults(raw))
    try:
        return RenderParams.model_validate_json(text, strict=True), raw, recipe
    except ValidationError as exc:
        raise invalid(_field_errors("params", exc)) from None


def _read_recipe() -> dict[str, Any] | None:
    """The optional 'recipe' part: a job id of this tenant (its result's recipe, or its params
    while it has none, with "job" its id), or a recipe's JSON."""
    text = _form_text("recipe")
    if text is None:
        return None
    try:
        source = uuid.UUID(text.strip())
    except ValueError:
        source = None
    if source is not None:
        job = get_db().get(Job, source)
        if job is None or job.tenant_id != tenant_id():
            message = f"there is no job {source} of this tenant to take a recipe from"
            raise invalid([{"field": "recipe", "message": message}])
        return {**(job.recipe or {"params": job.params}), "job": str(job.id)}
    try:
        recipe = pydantic_core.from_json(text)
        recipe_params(recipe)  # checks it is one
        # "job" names the source job of a recipe taken by id; JSON sent names none.
        return {key: value for key, value in recipe.items() if key != "job"}
    except ValueError as exc:  # RecipeRefused, or not JSON at all
        message = str(exc) if isinstance(exc, RecipeRefused) else "neither a job id nor JSON"
        raise invalid([{"field": "recipe", "message": message}]) from None
