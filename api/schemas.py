"""Pydantic models of what /v1 takes and gives. They are the OpenAPI document's schemas (see
api/openapi.py); where a request part is validated, it is validated with the same model."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from api.idempotency import HEADER as IDEMPOTENCY_HEADER
from api.idempotency import MAX_KEY_LENGTH, WINDOW_TEXT
from shared.models import JobStatus
from shared.params import RenderParams
from shared.webhooks import Event, WebhookSpec


def _absent_not_null(schema: dict[str, Any]) -> None:
    # An optional part, header or argument is absent, never null: the document must not offer
    # null (nor its None default) as a value a client can send.
    schema.pop("default", None)
    options = [option for option in schema.pop("anyOf", []) if option != {"type": "null"}]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    """The `next_cursor` that resumes a listing after the job created at `created_at`."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{job_id}".encode()).decode()


def _decode_cursor(value: Any) -> tuple[datetime, uuid.UUID]:
    try:
        moment, _, ident = base64.urlsafe_b64decode(str(value)).decode().partition("|")
        return datetime.fromisoformat(moment), uuid.UUID(ident)
    except ValueError:  # also bad base64 (binascii.Error) and bad UTF-8
        raise ValueError("not a cursor this API gave out") from None


Cursor = Annotated[
    tuple[datetime, uuid.UUID],
    BeforeValidator(_decode_cursor),
    # Clients see an opaque string; what it holds is ours to change.
    WithJsonSchema({"type": "string", "description": "`next_cursor` of the previous page."}),
]


class JobListQuery(BaseModel):
    """Query of GET /v1/jobs. Unknown arguments are ignored."""

    status: Annotated[
        JobStatus | None,
        Field(description="Only jobs of this status.", json_schema_extra=_absent_not_null),
    ] = None
    limit: Annotated[int, Field(ge=1, le=100, description="Jobs per page.")] = 20
    cursor: Annotated[
        Cursor | None,
        Field(
            description="`next_cursor` of the previous page.", json_schema_extra=_absent_not_null
        ),
    ] = None


class JobSubmission(BaseModel):
    """The multipart/form-data parts of POST /v1/jobs. Documentation only: the handler reads
    the parts itself (it must tell a missing image from a bad one, and answer 415 and 413), and
    validates `params` and `webhook` with RenderParams and WebhookSpec, the models shown here."""

    image: Annotated[
        bytes | None,
        Field(
            description="The picture to dream on (or to animate, with params.animation): JPEG, "
            "PNG, WebP or TIFF (8 or 16 bits). Required unless a video is sent. Or, as a "
            "text part, `upload:<id>`: a complete resumable upload (/v1/uploads) of it.",
            json_schema_extra=_absent_not_null,
        ),
    ] = None
    video: Annotated[
        bytes | None,
        Field(
            description="Instead of an image, a video to dream frame by frame: MP4, MOV or WebM; "
            "or, as a text part, `upload:<id>`: a complete resumable upload of it.",
            json_schema_extra=_absent_not_null,
        ),
    ] = None
    params: Annotated[
        RenderParams | None,
        Field(
            description="Render parameters, a JSON object; all optional.",
            json_schema_extra=_absent_not_null,
        ),
    ] = None
    webhook: Annotated[
        WebhookSpec | None,
        Field(
            description="Where to POST the job's events, a JSON object.",
            json_schema_extra=_absent_not_null,
        ),
    ] = None
    guide: Annotated[
        bytes | None,
        Field(
            description="A guide image (JPEG, PNG or WebP) whose features the dream seeks; "
            "params.guide_weight mixes it with the plain objective.",
            json_schema_extra=_absent_not_null,
        ),
    ] = None
    mask: Annotated[
        bytes | None,
        Field(
            description="A greyscale image of the input's shape (any size): how strongly each "
            "pixel dreams, black 0 to white 1. params.mask_layers may dream the black part "
            "differently.",
            json_schema_extra=_absent_not_null,
        ),
    ] = None
    recipe: Annotated[
        str | None,
        Field(
            description="Render the look of an earlier result: a job id of this tenant, or the "
            "recipe JSON a result file carries (`oneiro recipe FILE`). Its params, overridden "
            "by `params`.",
            json_schema_extra=_absent_not_null,
        ),
    ] = None


_TUS_RESUMABLE = Field(
    alias="Tus-Resumable", description="The tus version the client speaks: `1.0.0`."
)


class UploadCreateHeaders(BaseModel):
    """Headers of POST /v1/uploads (tus creation; checked by the handler)."""

    tus_resumable: Annotated[Literal["1.0.0"], _TUS_RESUMABLE]
    upload_length: Annotated[
        int,
        Field(
            alias="Upload-Length",
            ge=0,
            description="The upload's size in bytes, at most ONEIRO_MAX_UPLOAD_GB.",
        ),
    ]
    upload_metadata: Annotated[
        str | None,
        Field(
            alias="Upload-Metadata",
            description="Comma-separated `key base64(value)` pairs, such as the `filename`.",
            json_schema_extra=_absent_not_null,
        ),
    ] = None


class UploadPatchHeaders(BaseModel):
    """Headers of PATCH /v1/uploads/{upload_id} (tus core; checked by the handler). The body
    is the bytes, as application/offset+octet-stream."""

    tus_resumable: Annotated[Literal["1.0.0"], _TUS_RESUMABLE]
    upload_offset: Annotated[
        int,
        Field(
            alias="Upload-Offset",
            ge=0,
            description="Where the body's bytes start: the upload's offset (HEAD says it).",
        ),
    ]


class SubmitHeaders(BaseModel):
    """Headers of POST /v1/jobs (checked by the handler)."""

    idempotency_key: Annotated[
        str | None,
        Field(
            alias=IDEMPOTENCY_HEADER,
            min_length=1,
            max_length=MAX_KEY_LENGTH,
            description=f"The same key and request within {WINDOW_TEXT} answer 200 with the "
            "original job instead of making another; the same key with another request is 422.",
            json_schema_extra=_absent_not_null,
        ),
    ] = None


class Progress(BaseModel):
    """How far the render is."""

    fraction: Annotated[float, Field(ge=0, le=1)]
    octave: int
    octaves: int | None
    step: int
    steps: int | None
    tiles_done: int
    tiles: int | None
    eta_seconds: float | None
    frame: Annotated[
        int | None, Field(description="Animation and video jobs: the frame in progress, from 1.")
    ] = None
    frames: Annotated[int | None, Field(description="Animation and video jobs: frames in all.")] = (
        None
    )


class InputSize(BaseModel):
    """The size of the uploaded image."""

    width: int
    height: int


class JobWebhook(BaseModel):
    """Where the job's events go."""

    url: str
    events: list[Event]


class RenderEstimate(BaseModel):
    """How long the render should take, from the workers' measured speed."""

    model_config = ConfigDict(title="RenderEstimate")

    render_seconds: Annotated[
        float | None,
        Field(
            description="Seconds of rendering, once a worker runs it; null before any worker "
            "has finished a job in the last hour."
        ),
    ]
    megapixel_steps: Annotated[
        float, Field(description="The job's cost: megapixels rendered x steps x octaves.")
    ]
    basis: Annotated[str, Field(description="What the estimate rests on, or why there is none.")]


class MemoryEstimate(BaseModel):
    """What a worker must hold to render the job, and which worker class it goes to."""

    model_config = ConfigDict(title="MemoryEstimate")

    peak_bytes: Annotated[
        int,
        Field(
            description="Peak memory a worker needs (runtime, weights, the largest octave, one "
            "tile's gradient): an upper bound, see docs/guide/estimates.md."
        ),
    ]
    worker_class: Annotated[
        str | None,
        Field(description="The smallest worker class that holds it; null on a farm of one."),
    ]


class WaitEstimate(BaseModel):
    """How long a job sent now should wait for a worker."""

    model_config = ConfigDict(title="WaitEstimate")

    seconds: Annotated[
        float | None,
        Field(
            description="Queued work (and what running jobs have left) over the farm's "
            "measured speed; null before any worker has finished a job in the last hour."
        ),
    ]
    work_ahead_megapixel_steps: float
    basis: Annotated[str, Field(description="What the estimate rests on, or why there is none.")]


class EstimateOut(BaseModel):
    """POST /v1/estimates: what a job of this request would cost, nothing stored."""

    model_config = ConfigDict(title="Estimate")

    params: Annotated[RenderParams, Field(description="The params, resolved (seed included).")]
    input: InputSize
    estimate: RenderEstimate
    memory: MemoryEstimate
    wait: WaitEstimate
    warnings: Annotated[
        list[str],
        Field(
            description="What to know before sending: a render estimated past the soft time "
            "limit (ONEIRO_SOFT_TIME_LIMIT), where it would be stopped and fail."
        ),
    ]


class QueueStanding(BaseModel):
    """Where a queued job stands; estimates (docs/guide/jobs.md, Where a job stands)."""

    model_config = ConfigDict(title="QueueStanding")

    position: Annotated[
        int,
        Field(
            description="1-based place in dispatch order among all queued jobs (1: next to "
            "start). It can grow when another tenant with less running submits."
        ),
    ]
    estimated_start_seconds: Annotated[
        float | None,
        Field(
            description="Seconds until a worker should start it: the work ahead (queued and "
            "running) over every worker's measured speed; null with no measurement or no worker."
        ),
    ]


class JobOut(BaseModel):
    """A job, as every /v1/jobs route answers it (shared.serializer.job_json)."""

    model_config = ConfigDict(title="Job")

    id: uuid.UUID
    status: JobStatus
    progress: Progress
    params: Annotated[RenderParams, Field(description="The params, resolved (seed included).")]
    input: InputSize
    attempt: Annotated[int, Field(description="Claims by a worker; 1 on the first run.")]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    webhook: JobWebhook | None
    result_url: Annotated[str | None, Field(description="Set once the job has succeeded.")]
    preview_url: str
    expired: Annotated[bool, Field(description="Retention has deleted the job's files.")]
    estimate: RenderEstimate
    queue: Annotated[
        QueueStanding | None, Field(description="Where the job stands while it is queued.")
    ] = None
    recipe: Annotated[
        dict[str, Any] | None,
        Field(
            description="What made the result, as its file carries it: params, backbone, "
            "weights, engine, backend, precision, device; for a job submitted with a recipe, "
            "`rerun` says whether it re-ran it faithfully. Set once the job has succeeded."
        ),
    ] = None
    kind: Annotated[
        Literal["image", "animation", "video"],
        Field(description="A still, a zoom animation of an image, or a dreamed video."),
    ] = "image"
    frames: Annotated[
        int | None, Field(description="Frames an animation or video job renders.")
    ] = None


class JobPage(BaseModel):
    """One page of GET /v1/jobs, newest first."""

    jobs: list[JobOut]
    next_cursor: Annotated[
        str | None, Field(description="Pass as `cursor` for the next page; null on the last.")
    ]


class FieldError(BaseModel):
    """One thing wrong with a request."""

    field: Annotated[str, Field(description="Dotted path of the field, e.g. `params.steps`.")]
    message: str


class ProblemOut(BaseModel):
    """An error, as application/problem+json (RFC 9457). Some carry more members, such as
    `limit`, `value` or `job_status`."""

    model_config = ConfigDict(title="Problem", extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: Annotated[str, Field(description="What went wrong and what to do about it.")]
    errors: Annotated[
        list[FieldError] | None,
        Field(description="In a 422: each bad field.", json_schema_extra=_absent_not_null),
    ] = None


class Health(BaseModel):
    """Liveness or readiness, and (readiness) what was checked."""

    model_config = ConfigDict(extra="allow")

    status: str


class LayerOut(BaseModel):
    """A layer a backbone can dream."""

    model_config = ConfigDict(title="Layer")

    name: str
    channels: Annotated[int, Field(description="Its channels, for `params.channels`.")]


class ModelOut(BaseModel):
    """A backbone this deployment can render, for `params.model`."""

    model_config = ConfigDict(title="Model")

    name: str
    default: Annotated[bool, Field(description="Used when `params.model` is not given.")]
    default_layers: Annotated[list[str], Field(description="Used when `params.layers` is not.")]
    layers: list[LayerOut]
    weights: Annotated[
        str,
        Field(
            description="The weights it dreams with, as a recipe records them: `random`, the "
            "sha256 of the weights file, or `imagenet` (not downloaded yet). A recipe made with "
            "other weights is refused."
        ),
    ]


class ModelList(BaseModel):
    """GET /v1/models: the backbones this deployment has weights for."""

    models: list[ModelOut]


class PresetOut(BaseModel):
    """A named look."""

    name: Annotated[str, Field(description="What `params.preset` names it by.")]
    title: str
    description: str
    params: Annotated[dict[str, Any], Field(description="The params it sets; yours override.")]
    thumbnail_url: Annotated[str, Field(description="A small JPEG of a photo in this look.")]


class PresetList(BaseModel):
    """GET /v1/presets."""

    presets: list[PresetOut]
