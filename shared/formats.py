"""The output formats a job may ask for: one table, read by the params, the worker, the storage
keys and the API's download."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


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


# Frame rates are written as rationals whose denominator is at most this: NTSC's x/1001 (29.97
# is 30000/1001), and every rate to 3 decimals; Fraction(29.97) itself (a 2**-52 grain)
# overflows a container's 32-bit time base.
RATE_DENOMINATOR = 1001
# How far the rate written may be from the rate asked for.
RATE_TOLERANCE = 1e-3
# The longest frame each animated format holds: a GIF's delay is 16-bit hundredths of a second,
# a WebP's 24-bit milliseconds.
LONGEST_FRAME_MS = {"gif": 655_350, "webp": 16_777_215}


def frame_rate(fps: float) -> Fraction:
    """`fps` as the rational a video is written at: an NTSC rate (n x 1000/1001, which 23.976,
    29.97, 59.94 and 119.88 stand for) when it is one to the precision given, else the nearest
    rational of denominator at most RATE_DENOMINATOR (0 for a rate too slow to write)."""
    ntsc = Fraction(round(fps * 1001 / 1000) * 1000, 1001)
    if fps != int(fps) and ntsc and abs(float(ntsc) - fps) < 0.0005 * max(1.0, fps / 100):
        return ntsc
    return Fraction(fps).limit_denominator(RATE_DENOMINATOR)


def fps_problem(fps: float, fmt: OutputFormat) -> str | None:
    """Why `fmt` cannot play frames at `fps`, or None when it can."""
    longest = LONGEST_FRAME_MS.get(fmt.name)
    if longest is not None:
        if 1000 / fps > longest:
            return (
                f"an animated {fmt.name}'s frames last at most {longest / 1000:g} s; at {fps:g} "
                f"fps each lasts {1 / fps:g} s: raise fps to at least {1000 / longest:.4g}"
            )
        return None
    rate = frame_rate(fps)
    if not rate or abs(float(rate) - fps) > RATE_TOLERANCE * fps:
        return (
            f"an MP4 cannot be written at {fps:g} fps (the nearest rate it holds is {rate}): "
            f"give at least {1 / RATE_DENOMINATOR:.4g} fps, to at most 3 decimals"
        )
    return None
