"""Named looks: a few RenderParams values a job starts from (`params.preset`) and overrides.

Listed by GET /v1/presets, which the web page and the CLI read: this is their one copy. The
layers are InceptionV3's (the default backbone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A look: what it does, in a line, and the params it sets."""

    name: str
    title: str
    description: str
    params: dict[str, Any]

    @property
    def thumbnail(self) -> str:
        """Where the web page serves its thumbnail (chelsea.png rendered with it, committed;
        docs/guide/presets.md says how to make them again)."""
        return f"/static/presets/{self.name}.jpg"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "subtle",
            "Subtle",
            "A light touch: fine patterns in the textures, the photo still itself.",
            {
                "steps": 20,
                "octaves": 3,
                "step_size": 0.005,
                "octave_scale": 1.3,
                "layers": ["mixed3"],
                "max_dim": 800,
            },
        ),
        Preset(
            "classic",
            "Classic",
            "The DeepDream look of 2015: swirls and eyes over the whole picture.",
            {
                "steps": 50,
                "octaves": 5,
                "step_size": 0.01,
                "octave_scale": 1.3,
                "layers": ["mixed3", "mixed5"],
                "max_dim": 1024,
            },
        ),
        Preset(
            "deep",
            "Deep",
            "Higher layers, longer: objects and creatures grow out of the image.",
            {
                "steps": 100,
                "octaves": 6,
                "step_size": 0.015,
                "octave_scale": 1.4,
                "layers": ["mixed4", "mixed5", "mixed6"],
                "max_dim": 1024,
            },
        ),
        Preset(
            "true-colour",
            "True colour",
            "The classic dream in luminance only: the photo keeps its own colours.",
            {
                "steps": 50,
                "octaves": 5,
                "step_size": 0.01,
                "octave_scale": 1.3,
                "layers": ["mixed3", "mixed5"],
                "preserve_colors": True,
                "max_dim": 1024,
            },
        ),
        Preset(
            "flowing",
            "Flowing",
            "Large, smooth structures: Laplacian-normalized gradients and a little smoothing.",
            {
                "steps": 60,
                "octaves": 5,
                "step_size": 0.012,
                "octave_scale": 1.4,
                "layers": ["mixed4", "mixed5"],
                "grad_norm": "laplacian",
                "tv_weight": 0.5,
                "max_dim": 1024,
            },
        ),
        Preset(
            "fine",
            "Fine",
            "Low layers: a fine woven texture of lines and dots, no objects.",
            {
                "steps": 40,
                "octaves": 4,
                "step_size": 0.01,
                "octave_scale": 1.3,
                "layers": ["mixed1", "mixed2"],
                "max_dim": 1024,
            },
        ),
    )
}


def with_preset(raw: dict[str, Any]) -> dict[str, Any]:
    """Params as sent, over the values of the preset they name (if they name a known one: an
    unknown name is left for the params' own validation to refuse)."""
    name = raw.get("preset")
    preset = PRESETS.get(name) if isinstance(name, str) else None
    return raw if preset is None else {**preset.params, **raw}


def preset_json(preset: Preset) -> dict[str, Any]:
    """A preset as GET /v1/presets lists it."""
    return {
        "name": preset.name,
        "title": preset.title,
        "description": preset.description,
        "params": preset.params,
        "thumbnail_url": preset.thumbnail,
    }
