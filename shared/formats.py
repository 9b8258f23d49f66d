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


def output_format(name: str | None) -> OutputFormat:
    """The format named `name` (a job's `params.output_format`; None for jobs from before it)."""
    return OUTPUT_FORMATS[name or DEFAULT_FORMAT]
