"""Hostile media made at test time: small files whose headers lie or whose pixels explode when
decoded (tile bombs, frames that grow, odd codecs, truncations). Each is a few hundred KB at
most; none is committed."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from tests.utils.paths import ROOT
from tests.utils.video import clip_bytes


def png_of(size: tuple[int, int], mode: str = "RGB") -> bytes:
    """A black PNG of `size` (compresses to almost nothing, decodes to every pixel)."""
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def growing_png_mov(
    first: tuple[int, int] = (64, 64),
    later: tuple[int, int] = (2000, 2000),
    frames: int = 4,
    later_data: bytes | None = None,
) -> bytes:
    """The issue's MOV: PNG codec, frame 1 a `first` PNG, every later frame one `later` PNG
    (or the bytes `later_data`). The header (from frame 1) says `first`."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mov") as out:
        stream = out.add_stream("png", rate=12)
        stream.width, stream.height, stream.pix_fmt = *first, "rgb24"
        image = np.zeros((first[1], first[0], 3), np.uint8)
        (packet,) = stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24"))
        step = int(1 / (Fraction(12) * packet.time_base))
        out.mux(packet)
        big = png_of(later) if later_data is None else later_data
        for n in range(1, frames):
            extra = av.Packet(big)
            extra.stream = stream  # type: ignore[assignment]
            extra.time_base, extra.pts, extra.dts = packet.time_base, n * step, n * step
            extra.duration = step
            out.mux(extra)
    return buffer.getvalue()


def corrupt_later_packet_mov(frames: int = 4) -> bytes:
    """A PNG-codec MOV whose frames after the first are not PNGs at all."""
    return growing_png_mov(frames=frames, later_data=b"\x89PNG\r\n\x1a\n" + bytes(4000))


def unknown_audio_mkv() -> bytes:
    """A Matroska clip whose audio track's codec nobody knows (its codec id renamed)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as out:
        video = out.add_stream("libx264", rate=12)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=8000)
        for _ in range(3):
            image = np.full((48, 64, 3), 90, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 2000), np.int16), "s16", "mono")
        samples.sample_rate, samples.pts = 8000, 0
        out.mux(sound.encode(samples))
        out.mux(sound.encode(None))
    data = buffer.getvalue()
    assert b"A_PCM/INT/LIT" in data
    return data.replace(b"A_PCM/INT/LIT", b"A_XYZ/INT/LIT")


def vfr_clip(times: list[float], size: tuple[int, int] = (64, 48)) -> bytes:
    """An MP4 whose frames start at `times` (seconds): a variable frame rate."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for n, t in enumerate(times):
            image = np.full((size[1], size[0], 3), (n * 40) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def rotated_clip(rotation: int, size: tuple[int, int] = (96, 64)) -> bytes:
    """`clip_bytes` with a display matrix that turns it `rotation` degrees (a phone's portrait
    clip is stored landscape with -90)."""
    source = av.open(io.BytesIO(clip_bytes(size, frames=3, audio=False)))
    buffer = io.BytesIO()
    with source, av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        stream.set_display_rotation(rotation)  # type: ignore[attr-defined]
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream  # type: ignore[assignment]
            out.mux(packet)
    return buffer.getvalue()


def _tiff(
    width: int, height: int, tags: list[tuple[int, int, int]], payload: bytes, offset_tag: int
) -> bytes:
    """A little-endian single-page grey TIFF: `tags` (tag, type, value) plus the offset of
    `payload` under `offset_tag` and its length under `offset_tag + 1`."""
    entries = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (262, 3, 1),
        (277, 3, 1),
        *tags,
    ]
    count = len(entries) + 2
    start = 8 + 2 + count * 12 + 4  # the payload follows the one IFD
    entries += [(offset_tag, 4, start), (offset_tag + 1, 4, len(payload))]
    ifd = struct.pack("<H", count) + b"".join(
        struct.pack("<HHI", tag, kind, 1)
        + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in sorted(entries)
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + payload


def _zeros_deflated(size: int) -> bytes:
    """`size` zero bytes as a zlib stream, made in milliseconds: after a full flush deflate
    starts afresh, so every 1 MiB block of zeros compresses to the same bytes."""
    block = 1 << 20
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: header and sum are ours
    same = packer.compress(bytes(block)) + packer.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(size, block)
    body = same * whole + packer.compress(bytes(rest)) + packer.flush()
    adler = ((size % 65521) << 16) | 1  # Adler-32 of `size` zeros
    return b"\x78\xda" + body + struct.pack(">I", adler)


def tiff_tile_bomb(size: tuple[int, int] = (64, 64), tile: int = 16384) -> bytes:
    """The issue's TIFF: a `size` grey image stored as one `tile` x `tile` deflate tile."""
    payload = _zeros_deflated(tile * tile)
    return _tiff(*size, [(259, 3, 8), (322, 4, tile), (323, 4, tile)], payload, 324)


def tiff_strip_bomb(size: tuple[int, int] = (64, 64), rows: int = 16384) -> bytes:
    """A `size` grey TIFF whose one deflate strip holds `rows` rows (its height is less)."""
    payload = _zeros_deflated(rows * size[0])
    return _tiff(*size, [(259, 3, 8), (278, 4, rows)], payload, 273)


def many_page_tiff(pages: int = 2000) -> bytes:
    """A TIFF of `pages` 1x1 pages."""
    import tifffile

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tiff:
        for _ in range(pages):
            tiff.write(np.zeros((1, 1), np.uint8), contiguous=False, metadata=None)
    return buffer.getvalue()


def huge_header_jpeg(side: int = 60000) -> bytes:
    """A small JPEG whose frame header claims `side` x `side` pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def sixteen_bit_mask(size: tuple[int, int]) -> bytes:
    """A black 16-bit greyscale PNG mask of `size`."""
    return png_of(size, mode="I;16")


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first `keep` of `data`: a download cut short."""
    return data[: int(len(data) * keep)]


# Run in a child Python: each call's CPU seconds and how far it raised the peak resident memory
# (VmHWM, reset before each call through /proc/self/clear_refs), so one call's peak is its own.
_MEASURE = """
import importlib, json, sys, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
results = []
for target, path, args in json.load(sys.stdin):
    module, name = target.split(":")
    function = getattr(importlib.import_module(module), name)
    data = open(path, "rb").read()
    open("/proc/self/clear_refs", "w").write("5")
    base, began, error = status("VmRSS"), time.process_time(), None
    try:
        made = function(data, *args)
        if hasattr(made, "__next__"):
            for _ in made:
                pass
    except Exception as exc:
        error = [type(exc).__name__, str(exc)]
    results.append(
        {"cpu_s": time.process_time() - began, "grown_mb": status("VmHWM") - base, "error": error}
    )
print(json.dumps(results))
"""


def measure(calls: list[tuple[str, bytes, list[object]]], folder: Path) -> list[dict[str, Any]]:
    """Each call (`module:function`, the bytes it is given, further arguments) run in a child
    Python, one after another: its CPU seconds, the MB it raised peak memory by, and the error
    it raised ([type name, message]) or None."""
    spec = []
    for n, (target, data, args) in enumerate(calls):
        path = folder / f"hostile-{n}"
        path.write_bytes(data)
        spec.append((target, str(path), args))
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=240,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]
