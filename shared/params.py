"""Render parameters: validated once at submit time, stored resolved in the job row."""

from __future__ import annotations

import secrets
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Layers of Keras' InceptionV3 whose activations can be maximized: the concatenation outputs
# of each Inception block.
INCEPTION_V3_LAYERS = tuple(f"mixed{i}" for i in range(11))

DEFAULT_LAYERS = ("mixed3", "mixed5")


def _random_seed() -> int:
    return secrets.randbelow(2**31)


class RenderParams(BaseModel):
    """What a client may ask of a render. Unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: Annotated[int, Field(ge=1, le=1000, description="Gradient steps per octave.")] = 100
    step_size: Annotated[float, Field(gt=0, le=1, description="Gradient-ascent step.")] = 0.01
    octaves: Annotated[int, Field(ge=1, le=12, description="Number of octave scales.")] = 5
    octave_scale: Annotated[
        float, Field(ge=1.01, le=4, description="Size ratio between octaves.")
    ] = 1.3
    layers: Annotated[
        tuple[str, ...],
        Field(min_length=1, max_length=len(INCEPTION_V3_LAYERS), description="Layers to dream."),
    ] = DEFAULT_LAYERS
    seed: Annotated[
        int, Field(ge=0, lt=2**31, description="Random seed; the same seed gives the same image.")
    ] = Field(default_factory=_random_seed)
    max_dim: Annotated[
        int | None,
        Field(ge=32, le=16384, description="Downscale the input so its longer side fits."),
    ] = None
    tile_size: Annotated[
        int, Field(ge=128, le=2048, description="Gradient tile side in pixels.")
    ] = 512

    @field_validator("layers")
    @classmethod
    def _known_layers(cls, layers: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in layers if name not in INCEPTION_V3_LAYERS]
        if unknown:
            raise ValueError(
                f"unknown layer(s) {', '.join(unknown)}; "
                f"choose from {', '.join(INCEPTION_V3_LAYERS)}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError("layers must not repeat")
        return layers
