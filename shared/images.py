"""Decoding and encoding of the images that travel through Oneiro."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO
from xml.etree import ElementTree

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from shared.cost import render_size
from shared.formats import OutputFormat

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")
# The file extension an accepted upload is stored under.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tif"}
SEND = "send JPEG, PNG, WebP or TIFF"


class ImageRejected(ValueError):
    """The bytes are not an image Oneiro accepts; the message says why."""


class ImageTooLarge(ImageRejected):
    """The image has more pixels than the limit allows."""


def inspect_image(data: bytes | IO[bytes], max_pixels: int) -> tuple[str, int, int]:
    """Check that `data` (bytes, or a file such as a resumable upload's) is a whole JPEG, PNG,
    WebP or TIFF image; return its format, width, height (of the first picture, upright).

    The header is read first, so an image with too many pixels is refused before its pixels
    are decoded (a decompression bomb costs nothing).
    """
    if isinstance(data, bytes) and not data:
        raise ImageRejected("the image file is empty")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning; the pixel limit below is the one that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        with image:
            # A JPEG with a multi-picture block (phone HDR gain maps, stereo and DSLR previews)
            # opens as MPO; its first picture is the photo, a plain JPEG.
            kind = "JPEG" if image.format == "MPO" else image.format
            if kind not in ACCEPTED_FORMATS:
                raise ImageRejected(f"unsupported image format {image.format}; {SEND}")
            width, height = _upright_size(image)
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"the image has {width * height} pixels ({width}x{height}); "
                    f"the limit is {max_pixels} (ONEIRO_MAX_PIXELS)"
                )
            check_layout(image)
            image.load()
            return kind, width, height
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        # Pillow's own message names its in-memory file object (<_io.BytesIO object at 0x...>).
        raise ImageRejected(f"the file is not an image Oneiro can read; {SEND}") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(
            f"the image has too many pixels: {exc}; the limit is {max_pixels} (ONEIRO_MAX_PIXELS)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"the file is not a readable image: {exc}") from None


# A TIFF tile's side may pass its image's (rounded up to the 16 pixels tiles come in) only up to
# this: a small image in one tile of a usual size is fine; a 64x64 image in one 16384x16384
# deflate tile (1.5 MB) decodes to 268 MB per channel before a pixel of it is used.
MAX_TILE_SIDE = 1024


def check_layout(image: Image.Image) -> None:
    """Refuse (ImageRejected) a TIFF whose tiles outgrow its image, read from its tags before
    anything is decoded. Strips need no bound: libtiff and tifffile read no more of a strip than
    the image's rows, and only the first page of a multi-page file is ever read."""
    if not isinstance(image, TiffImagePlugin.TiffImageFile):
        return
    tags = image.tag_v2
    tile = tags.get(322), tags.get(323)  # TileWidth, TileLength
    if tile[0] is None and tile[1] is None:
        return
    width, height = image.size
    for side, own, name in ((tile[0], width, "wide"), (tile[1], height, "long")):
        bound = max(-(-own // 16) * 16, MAX_TILE_SIDE)
        if not isinstance(side, int) or side <= 0 or side > bound:
            raise ImageRejected(
                f"the TIFF is {width}x{height} but stored in tiles {side} pixels {name}, past "
                f"the {bound} such an image needs: decoding one would cost far more than the "
                "image; save it again untiled or with tiles of at most "
                f"{MAX_TILE_SIDE} pixels"
            )


def _upright_size(image: Image.Image) -> tuple[int, int]:
    # EXIF orientations 5-8 turn the image a quarter turn.
    orientation = image.getexif().get(0x0112, 1)
    width, height = image.size
    if isinstance(image, TiffImagePlugin.TiffImageFile):
        # Pillow (13) gives a TIFF's size already turned by its orientation, other formats'
        # as stored: the stored size is in the TIFF's own tags (ImageWidth, ImageLength).
        width, height = image.tag_v2.get(256, width), image.tag_v2.get(257, height)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


@dataclass(frozen=True)
class Decoded:
    """An upright H x W x 3 RGB image, uint8 or uint16 as the file had it, and the file's ICC
    colour profile (kept to the output, so its colours mean what they meant)."""

    pixels: np.ndarray
    icc_profile: bytes | None


def decode_image(data: bytes) -> Decoded:
    """The image in `data` at its own depth (the first frame of an animation, the first picture
    of a multi-picture JPEG, the first page of a multi-page TIFF), EXIF orientation applied."""
    with warnings.catch_warnings():
        # The pixel limit is enforced at submit time by inspect_image.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            check_layout(image)  # the worker's own guard: a stored file is not trusted either
            icc = image.info.get("icc_profile") or None
            if _sixteen_bit(image, data):
                orientation = image.getexif().get(0x0112, 1)
                return Decoded(orient(_decode_sixteen(image.format, data), orientation), icc)
            upright = ImageOps.exif_transpose(image)
            if upright.mode in ("I", "I;16", "I;16B", "I;16L"):
                # 16-bit greyscale Pillow reads whole (a plain convert would clip at 255).
                grey = np.clip(np.asarray(upright, dtype=np.int64), 0, 65535).astype(np.uint16)
                return Decoded(np.repeat(grey[..., None], 3, axis=2), icc)
            return Decoded(np.asarray(upright.convert("RGB"), dtype=np.uint8), icc)


def decode_rgb(data: bytes) -> np.ndarray:
    """The image in `data` as an upright H x W x 3 uint8 RGB array (see decode_image)."""
    return as_depth(decode_image(data).pixels, 8)


def _sixteen_bit(image: Image.Image, data: bytes) -> bool:
    """Whether the file holds 16-bit colour, which Pillow would read as 8-bit."""
    if image.format == "PNG":
        return data[24] == 16 and image.mode not in ("I", "I;16", "I;16B", "I;16L")  # IHDR
    if isinstance(image, TiffImagePlugin.TiffImageFile):
        bits = image.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) == 16 and image.tag_v2.get(262) in (1, 2)  # grey or RGB
    return False


def _decode_sixteen(kind: str | None, data: bytes) -> np.ndarray:
    # Pillow holds no 16-bit RGB image: it would drop the low byte of every sample. libpng
    # (through imagecodecs) and tifffile (LZW and Deflate through imagecodecs) read them whole;
    # OpenCV could too, but it reads neither the ICC profile nor the text Oneiro keeps, so
    # Pillow still reads those, and nothing here needs OpenCV. Worker-only libraries: the API
    # validates uploads with Pillow, which decodes them (at 8 bits) as fully.
    if kind == "PNG":
        import imagecodecs

        pixels = imagecodecs.png_decode(data)
    else:
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages.first
            pixels = page.asarray()
            if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and pixels.ndim == 3:
                pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] in (1, 2):  # grey, grey and alpha
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3], dtype=np.uint16)  # alpha dropped, as Pillow does


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`pixels` turned upright by EXIF orientation 1-8, as ImageOps.exif_transpose turns an
    image."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return pixels if turned is None else np.ascontiguousarray(turned(pixels))


def as_depth(pixels: np.ndarray, bits: int) -> np.ndarray:
    """`pixels` (uint8 or uint16) at 8 or 16 bits per channel, the same colours."""
    if bits == 16:
        return pixels if pixels.dtype == np.uint16 else pixels.astype(np.uint16) * 257
    if pixels.dtype == np.uint8:
        return pixels
    # (x + 128) // 257 is rint(x / 257) (x / 257 is never a half), in 4 bytes a sample where
    # float division took 8 and a mask of 8000x8000 took 3 GB.
    return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)


def fit_within(image: np.ndarray, max_dim: int | None) -> np.ndarray:
    """`image` (uint8 or uint16) scaled down (never up) so that its longer side is at most
    `max_dim`, at its own depth."""
    height, width = image.shape[:2]
    size = render_size(width, height, max_dim)
    if size == (width, height):
        return image
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    # Pillow has no 16-bit RGB mode: each channel goes through its 32-bit float mode.
    planes = [
        np.asarray(
            Image.fromarray(image[..., c].astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
        )
        for c in range(image.shape[2])
    ]
    resized: np.ndarray = np.clip(np.rint(np.stack(planes, axis=-1)), 0, 65535).astype(np.uint16)
    return resized


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    """An H x W x 3 uint8 array as JPEG bytes (for previews: small, lossy)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# Where a result carries its recipe: a PNG iTXt keyword, an XMP property (JPEG and WebP); in a
# TIFF, the ImageDescription tag holds it alone.
RECIPE_KEYWORD = "oneiro:recipe"
XMP_NAMESPACE = "urn:oneiro:recipe:1"
_XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    f'<rdf:Description rdf:about="" xmlns:oneiro="{XMP_NAMESPACE}">'
    "<oneiro:recipe>{}</oneiro:recipe>"
    "</rdf:Description></rdf:RDF></x:xmpmeta>"
    '<?xpacket end="w"?>'
)


def encode_image(
    image: np.ndarray,
    fmt: OutputFormat,
    *,
    quality: int = 90,
    recipe: str | None = None,
    icc_profile: bytes | None = None,
) -> bytes:
    """An H x W x 3 image (uint16 for a 16-bit format, else uint8) as `fmt`, carrying `recipe`
    (text) in the format's own metadata and the ICC profile."""
    if image.dtype != (np.uint16 if fmt.bits == 16 else np.uint8):
        raise ValueError(f"{fmt.name} is written from {fmt.bits}-bit pixels, not {image.dtype}")
    if fmt.name == "png16":
        import imagecodecs

        chunks = []
        if icc_profile:
            chunks.append((b"iCCP", b"icc\0\0" + zlib.compress(icc_profile)))
        if recipe is not None:
            chunks.append((b"iTXt", RECIPE_KEYWORD.encode() + b"\0\0\0\0\0" + recipe.encode()))
        return _with_chunks(imagecodecs.png_encode(image), chunks)
    if fmt.name == "tiff16":
        import tifffile

        buffer = io.BytesIO()
        # Deflate: lossless, and read by every TIFF reader that reads compression at all.
        tifffile.imwrite(
            buffer,
            image,
            photometric="rgb",
            compression="zlib",
            description=recipe,
            iccprofile=icc_profile,
            metadata=None,
        )
        return buffer.getvalue()
    options: dict[str, object] = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt.name == "png":
        info = PngInfo()
        if recipe is not None:
            info.add_itxt(RECIPE_KEYWORD, recipe)
        options["pnginfo"] = info
    else:
        options["quality"] = quality
        if recipe is not None:
            options["xmp"] = _xmp(recipe)
    buffer = io.BytesIO()
    Image.fromarray(image).save(
        buffer, format={"jpeg": "JPEG", "webp": "WEBP"}.get(fmt.name, "PNG"), **options
    )
    return buffer.getvalue()


def _xmp(recipe: str) -> bytes:
    """An XMP packet holding `recipe`."""
    escaped = recipe.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _XMP.format(escaped).encode()


def encode_animation(
    frames: Iterable[np.ndarray],
    count: int,
    fmt: OutputFormat,
    fps: float,
    *,
    quality: int = 90,
    recipe: str | None = None,
) -> bytes:
    """`count` H x W x 3 uint8 frames as an animated GIF or WebP that loops forever at `fps`,
    carrying `recipe` (a GIF in its comment extension, a WebP in XMP, as a still WebP)."""
    images = (Image.fromarray(frame) for frame in frames)
    first = next(images)
    options: dict[str, object] = {"quality": quality} if fmt.name == "webp" else {}
    if recipe is not None:
        if fmt.name == "webp":
            options["xmp"] = _xmp(recipe)
        else:
            options["comment"] = recipe.encode()
    buffer = io.BytesIO()
    first.save(
        buffer,
        format=fmt.name.upper(),
        save_all=True,
        append_images=images,  # a GIF takes them one by one (Pillow lists a WebP's)
        duration=frame_durations(count, fps, fmt),
        loop=0,
        **options,
    )
    return buffer.getvalue()


def frame_durations(count: int, fps: float, fmt: OutputFormat) -> list[int]:
    """Each frame's duration in ms, rounded to what the format holds (a GIF's hundredths of a
    second, a WebP's ms) so that frame n still starts at n / fps: at 24 fps a GIF's frames
    last 40 or 50 ms, not 40 each (which would play at 25 fps)."""
    tick = 10 if fmt.name == "gif" else 1

    def start(n: int) -> int:
        return round(n * 1000 / fps / tick) * tick

    return [start(n + 1) - start(n) for n in range(count)]


def _with_chunks(png: bytes | bytearray, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """`png` with `chunks` (type, data) inserted after its header chunk (PNG spec 5.3, 5.6:
    iCCP and iTXt may stand before the image data). imagecodecs writes pixels only."""
    header_end = 8 + 8 + 13 + 4  # signature, then IHDR: length and type, 13 bytes, CRC
    made = b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in chunks
    )
    return bytes(png[:header_end]) + made + bytes(png[header_end:])


def read_recipe_text(data: bytes) -> str | None:
    """The recipe text an Oneiro output carries in its metadata; None when it has none."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if isinstance(image, PngImagePlugin.PngImageFile):
                image.load()  # text chunks after the image data are read with it
                text = image.text.get(RECIPE_KEYWORD)
                return str(text) if text is not None else None
            if isinstance(image, TiffImagePlugin.TiffImageFile):
                text = image.tag_v2.get(270)
                return str(text) if text else None
            if image.format == "GIF":
                comment = image.info.get("comment")
                return comment.decode("utf-8", errors="replace") if comment else None
            xmp = image.info.get("xmp")
    except (OSError, SyntaxError, ValueError):
        if data[4:8] == b"ftyp":  # an MP4 (or another ISO media file): its comment tag
            from shared.video import mp4_comment

            return mp4_comment(data)
        return None
    if not xmp:
        return None
    try:
        root = ElementTree.fromstring(xmp)
    except ElementTree.ParseError:
        return None
    found = root.find(f".//{{{XMP_NAMESPACE}}}recipe")
    return found.text if found is not None else None


def recipe_of(data: bytes) -> dict[str, object] | None:
    """The recipe an Oneiro output carries, as JSON; None when it carries none."""
    text = read_recipe_text(data)
    if text is None:
        return None
    try:
        recipe = json.loads(text)
    except ValueError:
        return None
    return recipe if isinstance(recipe, dict) else None
