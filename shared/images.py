"""Decoding and encoding of the images that travel through Oneiro."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.cost import render_size

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")


class ImageRejected(ValueError):
    """The bytes are not an image Oneiro accepts; the message says why."""


class ImageTooLarge(ImageRejected):
    """The image has more pixels than the limit allows."""


def inspect_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Check that `data` is a whole JPEG, PNG or WebP image; return its format, width, height
    (of the first picture, upright).

    The header is read first, so an image with too many pixels is refused before its pixels
    are decoded (a decompression bomb costs nothing).
    """
    if not data:
        raise ImageRejected("the image file is empty")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning; the pixel limit below is the one that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            # A JPEG with a multi-picture block (phone HDR gain maps, stereo and DSLR previews)
            # opens as MPO; its first picture is the photo, a plain JPEG.
            kind = "JPEG" if image.format == "MPO" else image.format
            if kind not in ACCEPTED_FORMATS:
                raise ImageRejected(
                    f"unsupported image format {image.format}; send JPEG, PNG or WebP"
                )
            width, height = _upright_size(image)
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"the image has {width * height} pixels ({width}x{height}); "
                    f"the limit is {max_pixels}"
                )
            image.load()
            return kind, width, height
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        # Pillow's own message names its in-memory file object (<_io.BytesIO object at 0x...>).
        raise ImageRejected(
            "the file is not an image Oneiro can read; send JPEG, PNG or WebP"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(
            f"the image has too many pixels: {exc}; the limit is {max_pixels}"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"the file is not a readable image: {exc}") from None


def _upright_size(image: Image.Image) -> tuple[int, int]:
    # EXIF orientations 5-8 turn the image a quarter turn.
    orientation = image.getexif().get(0x0112, 1)
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def decode_rgb(data: bytes) -> np.ndarray:
    """The image in `data` as an upright H x W x 3 uint8 RGB array (the first frame of an
    animation, the first picture of a multi-picture JPEG)."""
    with warnings.catch_warnings():
        # The pixel limit is enforced at submit time by inspect_image.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)  # the first frame of an animation, the first picture of an MPO
            upright = ImageOps.exif_transpose(image)
            if upright.mode in ("I", "I;16", "I;16B", "I;16L"):
                # 16-bit greyscale: keep the high byte; a plain convert would clip at 255.
                high = np.asarray(upright, dtype=np.uint32) >> 8
                upright = Image.fromarray(np.clip(high, 0, 255).astype(np.uint8))
            return np.asarray(upright.convert("RGB"), dtype=np.uint8)


def fit_within(image: np.ndarray, max_dim: int | None) -> np.ndarray:
    """`image` scaled down (never up) so that its longer side is at most `max_dim`."""
    height, width = image.shape[:2]
    size = render_size(width, height, max_dim)
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def encode_png(image: np.ndarray) -> bytes:
    """An H x W x 3 uint8 array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    """An H x W x 3 uint8 array as JPEG bytes (for previews: small, lossy)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
