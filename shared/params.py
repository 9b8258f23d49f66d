"""Render parameters: validated once at submit time, stored resolved in the job row."""

from __future__ import annotations

import difflib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from shared.catalogue import BACKBONES, DEFAULT_BACKBONE
from shared.formats import DEFAULT_FORMAT, FORMAT_NAMES
from shared.presets import PRESETS, with_preset

LayerWeight = Annotated[float, Field(gt=0, le=100)]

# The params the queue and the worker act on, not the engine: `oneiro render`, which renders
# at once on this machine, has no options for them.
QUEUE_FIELDS = ("priority", "start_by", "max_run_seconds")


def look_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` without QUEUE_FIELDS: what makes a render's look, which a recipe carries on
    (a re-run months later is not refused for a start_by long passed)."""
    return {name: value for name, value in params.items() if name not in QUEUE_FIELDS}


# params.priority, and the rank the dispatcher sorts a tenant's jobs by (lower first).
PRIORITIES = {"high": 0, "normal": 1, "low": 2}


def _seconds_from_now(seconds: float) -> datetime:
    if not 0 <= seconds <= 366 * 24 * 3600:
        raise ValueError("start_by in seconds from now lies between 0 and a year")
    return datetime.now(UTC) + timedelta(seconds=seconds)


def _random_seed() -> int:
    return secrets.randbelow(2**31)


def _layers_schema(schema: dict[str, Any]) -> None:
    # What a client may send, for the OpenAPI document: the field's type is the resolved form
    # only, and its None default stands for "the backbone's own", which no client sends.
    schema.pop("default", None)
    weights = {key: schema.pop(key) for key in ("type", "additionalProperties") if key in schema}
    names = {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True}
    one = {"type": "string", "description": "One layer name, or names separated by commas."}
    schema["anyOf"] = [one, names, {**weights, "minProperties": 1}]


def _mask_layers_schema(schema: dict[str, Any]) -> None:
    # As `layers`, from the mapping branch of its `... | None`, and null: a job shows none.
    branches = schema.pop("anyOf", [])
    schema.update(next((b for b in branches if b.get("type") == "object"), {}))
    _layers_schema(schema)
    schema["anyOf"].append({"type": "null"})


class Animation(BaseModel):
    """A zoom animation from one image: frame n is the dream of frame n-1 transformed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: Annotated[int, Field(ge=1, le=100_000, description="Frames to render.")] = 48
    fps: Annotated[float, Field(gt=0, le=120, description="Frames per second of the video.")] = 24
    zoom: Annotated[
        float, Field(ge=0.5, le=2, description="Zoom factor per frame (above 1 zooms in).")
    ] = 1.02
    rotate: Annotated[
        float, Field(ge=-45, le=45, description="Degrees per frame, anticlockwise.")
    ] = 0
    translate: Annotated[
        tuple[float, float],
        Field(description="Pixels per frame the picture moves, x (right) and y (down)."),
    ] = (0.0, 0.0)

    @field_validator("translate", mode="before")
    @classmethod
    def _pair_from_list(cls, value: Any) -> Any:
        # JSON has no tuple, and the strict parse of a submission refused every list sent for
        # it (so no translate could ever be set): a list of two is the pair.
        return tuple(value) if isinstance(value, list) else value


# What a frame of an animation or a video is dreamed with unless the client says otherwise: a
# frame starts from the previous dream, so a few steps carry the dream on (20 per still).
FRAME_DEFAULTS = {"steps": 10, "octaves": 3}


def with_frame_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """The raw params of an animation or video job, with per-frame defaults where not given."""
    return {**FRAME_DEFAULTS, **raw}


class RenderParams(BaseModel):
    """What a client may ask of a render. Unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # `Literal[tuple(NAMES)]` (valid-type ignored below): the allowed names are read from one
    # catalogue at import, so they are written once; mypy reads no Literal made at runtime.
    model: Annotated[
        Literal[tuple(BACKBONES)],  # type: ignore[valid-type]
        Field(description="Backbone network."),
    ] = DEFAULT_BACKBONE
    layers: Annotated[
        dict[str, LayerWeight],
        Field(
            validate_default=True,
            description="Layers to dream: a name, a list of names, or {name: weight}. Default: the "
            "backbone's default layers, equally weighted.",
            json_schema_extra=_layers_schema,
        ),
    ] = None  # type: ignore[assignment]  # None: the validator fills in the backbone's layers
    channels: Annotated[
        dict[str, list[int]] | None,
        Field(description="Per layer, channel indices to maximize instead of the whole layer."),
    ] = None
    # 20, not the 100 of before nor the seed's 50: at 100 a first dream of a photo was an even
    # grid of eyes where the photo had been; 20 over five octaves dreams plainly and keeps the
    # photo (docs/guide/defaults.md shows the three; tests/engine/test_defaults.py measures it).
    steps: Annotated[int, Field(ge=1, le=1000, description="Gradient steps per octave.")] = 20
    step_size: Annotated[float, Field(gt=0, le=1, description="Gradient-ascent step.")] = 0.01
    octaves: Annotated[
        int, Field(ge=1, le=12, description="Number of octave scales, centred on the input.")
    ] = 5
    # Classic DeepDream steps 1.3 to 1.5 between octaves; past 2 an octave skips a scale of
    # detail and the top octave outgrows any pixel limit (the job's cost is checked too).
    octave_scale: Annotated[
        float, Field(ge=1.01, le=2, description="Size ratio between octaves.")
    ] = 1.3
    grad_norm: Annotated[
        Literal["std", "laplacian"],
        Field(description="Gradient normalization: by its std, or per Laplacian-pyramid level."),
    ] = "std"
    detail: Annotated[
        bool, Field(description="Re-inject the input's detail lost by downscaling, per octave.")
    ] = True
    tile_size: Annotated[
        int, Field(ge=64, le=2048, description="Gradient tile side in pixels.")
    ] = 512
    tv_weight: Annotated[
        float, Field(ge=0, le=10, description="Total-variation smoothing of the dream.")
    ] = 0.0
    preserve_colors: Annotated[
        bool, Field(description="Keep the input's colours: dream only in luminance.")
    ] = False
    max_loss: Annotated[
        float | None,
        Field(
            allow_inf_nan=False,
            description="Stop an octave's steps once the loss (the mean activation the layers "
            "are maximizing, as progress shows it) passes this, as the Keras DeepDream example "
            "does. Default: every step runs. The job costs its full steps either way.",
        ),
    ] = None
    seed: Annotated[
        int, Field(ge=0, lt=2**31, description="Random seed; the same seed gives the same image.")
    ] = Field(default_factory=_random_seed)
    max_dim: Annotated[
        int | None,
        Field(ge=32, le=65536, description="Downscale the input so its longer side fits."),
    ] = None
    guide_weight: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="With a guide image: how far the dream seeks the guide's features (1) "
            "rather than plainly what the layers see (0).",
        ),
    ] = 1.0
    mask_layers: Annotated[
        dict[str, LayerWeight] | None,
        Field(
            description="With a mask: the layers (as `layers`) the masked-out part dreams, so "
            "two regions dream differently. Default: the masked-out part keeps the input.",
            json_schema_extra=_mask_layers_schema,
        ),
    ] = None
    preset: Annotated[
        Literal[tuple(PRESETS)] | None,  # type: ignore[valid-type]
        Field(description="A named look (GET /v1/presets) to start from; params override it."),
    ] = None
    output_format: Annotated[
        Literal[FORMAT_NAMES],  # type: ignore[valid-type]
        Field(
            description="The result's format: png (8-bit), png16 and tiff16 (16-bit, from the "
            "float dream), jpeg or webp (with quality). A short animation: gif or webp "
            "(animated, looping) instead of its MP4."
        ),
    ] = DEFAULT_FORMAT
    quality: Annotated[
        int, Field(ge=1, le=100, description="JPEG and WebP quality; ignored by png and tiff.")
    ] = 90
    priority: Annotated[
        Literal[tuple(PRIORITIES)],  # type: ignore[valid-type]
        Field(
            description="Order among the tenant's own queued jobs: high before normal before "
            "low (between tenants, fair share decides; docs/operations/queue.md)."
        ),
    ] = "normal"
    start_by: Annotated[
        datetime | None,
        Field(
            description="Start no later than this (an ISO 8601 time, or seconds from now): a "
            "job no worker has started by then ends as `expired`. Stored as a time."
        ),
    ] = None
    max_run_seconds: Annotated[
        float | None,
        Field(
            gt=0,
            le=7 * 24 * 3600,
            description="Cancel the render when one attempt has run this long.",
        ),
    ] = None

    @field_validator("start_by", mode="before")
    @classmethod
    def _start_by_as_time(cls, value: Any) -> Any:
        # Seconds from now are resolved once, at submit; the stored params hold the time, so
        # validating them again later (the worker does) reads the same deadline.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _seconds_from_now(value)
        if isinstance(value, str):
            try:
                return _seconds_from_now(float(value))
            except ValueError:
                pass
            # An ISO 8601 time, parsed here: the strict parse of a submission takes no string
            # for a datetime, so the documented form was always refused.
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                return value  # the field's own error names what it takes
        return value

    @field_validator("start_by")
    @classmethod
    def _aware_start_by(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # a time without a zone is UTC, as Oneiro stores
        return value

    animation: Annotated[
        Animation | None,
        Field(description="Make a zoom animation of the image (a video job takes none)."),
    ] = None
    blend: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="Video jobs: the share of the previous dream, carried onto each new "
            "frame by optical flow, in the frame's starting image (0: every frame dreamed anew).",
        ),
        # 0.8 over 0.6: at the same dream strength, 2.34x less flicker than frames dreamed
        # anew against 1.99x (benchmarks/motion.py, benchmarks/README.md).
    ] = 0.8

    @model_validator(mode="before")
    @classmethod
    def _start_from_preset(cls, data: Any) -> Any:
        return with_preset(data) if isinstance(data, dict) else data

    @field_validator("layers", mode="before")
    @classmethod
    def _resolve_layers(cls, layers: Any, info: ValidationInfo) -> Any:
        if layers is None:
            backbone = BACKBONES.get(info.data.get("model", DEFAULT_BACKBONE))
            return {name: 1.0 for name in backbone.default_layers} if backbone else {}
        return _weighted_layers(layers)

    @field_validator("layers")
    @classmethod
    def _known_layers(cls, layers: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        return _known(layers, info.data.get("model"))

    @field_validator("channels")
    @classmethod
    def _known_channels(
        cls, channels: dict[str, list[int]] | None, info: ValidationInfo
    ) -> dict[str, list[int]] | None:
        layers, model = info.data.get("layers"), info.data.get("model")
        if channels is None or layers is None or model is None:
            return channels
        for name, indices in channels.items():
            if name not in layers:
                raise ValueError(f"channels names layer {name}, which is not among the layers")
            size = BACKBONES[model].layers[name]
            if not indices or len(set(indices)) != len(indices):
                raise ValueError(f"channels of {name} must be distinct and not empty")
            if not all(0 <= index < size for index in indices):
                raise ValueError(f"channels of {name} must lie in 0..{size - 1}")
        return channels

    @field_validator("mask_layers", mode="before")
    @classmethod
    def _resolve_mask_layers(cls, layers: Any) -> Any:
        return None if layers is None else _weighted_layers(layers)

    @field_validator("mask_layers")
    @classmethod
    def _known_mask_layers(
        cls, layers: dict[str, float] | None, info: ValidationInfo
    ) -> dict[str, float] | None:
        return None if layers is None else _known(layers, info.data.get("model"))


def _weighted_layers(layers: Any) -> Any:
    """A layer name, names separated by commas or a list of names as {name: 1.0}; a mapping
    as it is (its weights are validated by the field)."""
    if isinstance(layers, str):  # `--param layers=mixed4`, or `mixed3,mixed5`
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    if isinstance(layers, list | tuple):
        if not all(isinstance(name, str) for name in layers):
            raise ValueError("a list of layers holds layer names (strings)")
        if len(set(layers)) != len(layers):
            raise ValueError("layers must not repeat")
        return {name: 1.0 for name in layers}
    return layers


def _known(layers: dict[str, float], model: str | None) -> dict[str, float]:
    """`layers`, when `model` has them all and they are not none."""
    if model is None:  # the model itself was invalid; that error is enough
        return layers
    known = BACKBONES[model].layers
    if not layers:
        raise ValueError("name at least one layer")
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ValueError(
            f"{model} has no layer {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return layers


def error_message(error: ErrorDetails) -> str:
    """A validation error of RenderParams as a person reads it: an unknown name says which
    known one it was likely meant to be (`stepz`: did you mean `steps`?)."""
    if error["type"] != "extra_forbidden":
        return error["msg"]
    *parents, name = (str(part) for part in error["loc"])
    model: type[BaseModel] = Animation if parents == ["animation"] else RenderParams
    close = difflib.get_close_matches(name, list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f"not a parameter; did you mean `{close[0]}`?"
    return f"not a parameter; the parameters are {', '.join(model.model_fields)}"
