"""The output formats a job may ask for: one table, read by the params, the worker, the storage
keys and the API's download."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OutputFormat:
    """How a result is written and served."""

    name: str
    media_type: str
    extension: str
    bits: int  # per channel: 8, or 16 (made from the float dream, never from 8-bit pixels)
    lossy: bool  # whether `quality` applies


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("png", "image/png", "png", 8, lossy=False),
        OutputFormat("png16", "image/png", "png", 16, lossy=False),
        OutputFormat("tiff16", "image/tiff", "tif", 16, lossy=False),
        OutputFormat("jpeg", "image/jpeg", "jpg", 8, lossy=True),
        OutputFormat("webp", "image/webp", "webp", 8, lossy=True),
    )
}
DEFAULT_FORMAT = "png"

# What an animation or video job's frames are written as: an MP4 unless a short animation asks
# for one of ANIMATED_FORMATS (params.output_format), looping at its fps. GIF has 256 colours a
# frame and no `quality`; WebP is lossy, with `quality` as a still's.
MP4 = OutputFormat("mp4", "video/mp4", "mp4", 8, lossy=True)
ANIMATED_FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (OutputFormat("gif", "image/gif", "gif", 8, lossy=False), OUTPUT_FORMATS["webp"])
}
# Every name params.output_format may hold: a still's formats, and the animated ones.
FORMAT_NAMES = (*OUTPUT_FORMATS, *(n for n in ANIMATED_FORMATS if n not in OUTPUT_FORMATS))


def output_format(name: str | None) -> OutputFormat:
    """The format named `name` (a job's `params.output_format`; None for jobs from before it)."""
    return OUTPUT_FORMATS[name or DEFAULT_FORMAT]


def result_format(kind: str, name: str | None) -> OutputFormat:
    """The format of a job's result: a still's `output_format`; for an animation the animated
    format it asked for, else (and for a video) an MP4."""
    if kind == "image":
        return output_format(name)
    if kind == "animation" and name in ANIMATED_FORMATS:
        return ANIMATED_FORMATS[name]
    return MP4
