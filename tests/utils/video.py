"""Videos made in the tests: short synthetic clips with moving shapes and a tone."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import av
import numpy as np


def clip_bytes(
    size: tuple[int, int] = (96, 64),
    frames: int = 6,
    fps: int = 12,
    audio: bool = True,
    container: str = "mp4",
    codec: str = "libx264",
) -> bytes:
    """A short video made here: a square and a disc moving over a gradient, and a 440 Hz tone."""
    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = (
            out.add_stream("aac" if container == "mp4" else "libopus", rate=48000)
            if audio
            else None
        )
        ys, xs = np.mgrid[0:height, 0:width]
        for n in range(frames):
            image = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 90)], -1)
            image[10:26, 4 + 4 * n : 20 + 4 * n] = (250, 240, 30)
            disc = (xs - (width - 20 - 3 * n)) ** 2 + (ys - height // 2) ** 2 < 81
            image[disc] = (20, 30, 220)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            samples = int(48000 * frames / fps)
            t = np.arange(samples) / 48000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            block = sound.codec_context.frame_size or 960
            for start in range(0, samples, block):
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(tone[:, start : start + block]),
                    format="fltp",
                    layout="mono",
                )
                chunk.sample_rate, chunk.pts = 48000, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return buffer.getvalue()


def write_padded_clip(path: Path, length: int, **clip: Any) -> None:
    """A valid MP4 of `length` bytes: a short clip, then a `free` box of zeros (ISO BMFF's own
    padding, which every reader skips), written a block at a time. A large upload whose
    render stays small."""
    data = clip_bytes(**clip)
    padding = length - len(data)
    assert 8 <= padding < 2**32, padding
    with path.open("wb") as out:
        out.write(data)
        out.write(struct.pack(">I4s", padding, b"free"))
        left = padding - 8
        block = bytes(8 * 1024 * 1024)
        while left:
            out.write(block[: min(left, len(block))])
            left -= min(left, len(block))
