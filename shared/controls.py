"""The guide image and the mask a job may carry: checked by the API, decoded by the worker.

Pure Pillow and numpy: the API imports it without TensorFlow.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageChops

from shared.images import ImageRejected, check_layout, inspect_image, orient

# A mask may differ this much in aspect ratio from the image it is resized to: rounding when
# either was scaled, not a mask drawn for another picture.
MASK_ASPECT_TOLERANCE = 0.02
# Pillow modes that are greyscale whatever their pixels: a mask in one needs no look at them.
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# Rows of a 16-bit mask narrowed to 8 bits at a time: the arithmetic's temporaries stay small.
ROWS_AT_ONCE = 256


def inspect_guide(data: bytes, max_pixels: int) -> str:
    """Check that `data` is an image Oneiro accepts, within `max_pixels`; return its format.
    Raises ImageRejected (ImageTooLarge over the limit)."""
    image_format, _, _ = inspect_image(data, max_pixels)
    return image_format


def inspect_mask(data: bytes, max_pixels: int, image_size: tuple[int, int]) -> str:
    """Check that `data` is a greyscale image within `max_pixels` with the aspect ratio of the
    image of `image_size` (width, height); return its format. Raises ImageRejected.

    As an image is checked: its header first, then one decode by Pillow at 8 (or 16) bits a
    sample, no wider; a mode that is grey by its kind is not looked at again."""
    image_format, width, height = inspect_image(data, max_pixels)
    image_w, image_h = image_size
    ratio, wanted = width / height, image_w / image_h
    if abs(ratio / wanted - 1.0) > MASK_ASPECT_TOLERANCE:
        raise ImageRejected(
            f"the mask is {width}x{height} and the image {image_w}x{image_h}: their aspect ratios "
            "differ; send a mask of the image's shape (any size: it is resized to the image)"
        )
    with _opened(data) as image:
        if image.mode not in GREY_MODES:
            _grey_band(image)  # refuses a colour mask
    return image_format


def decode_mask(data: bytes) -> np.ndarray:
    """The mask in `data` as an upright H x W uint8 array (0: keep, 255: dream). A colour image
    is refused (ImageRejected) unless its three channels are equal: which one would count?"""
    with _opened(data) as image:
        # Turned as numpy (a view, or one copy of 8-bit samples); Pillow's turn copies the image
        # at its own depth first, even when nothing turns.
        return orient(_grey(image), image.getexif().get(0x0112, 1))


def _grey(image: Image.Image) -> np.ndarray:
    """The image's grey samples at 8 bits, as stored (not yet turned upright)."""
    if image.mode in SIXTEEN_BIT_MODES:
        width, height = image.size
        grey = np.empty((height, width), np.uint8)
        for top in range(0, height, ROWS_AT_ONCE):
            bottom = min(top + ROWS_AT_ONCE, height)
            rows = np.asarray(image.crop((0, top, width, bottom))).astype(np.int64)
            grey[top:bottom] = (np.clip(rows, 0, 65535) + 128) // 257  # rint(x / 257)
        return grey
    if image.mode in GREY_MODES:
        return np.array(image if image.mode == "L" else image.convert("L"))
    return np.array(_grey_band(image))


def _opened(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
    check_layout(image)
    return image


def _grey_band(image: Image.Image) -> Image.Image:
    """The one band of an image whose red, green and blue are equal; ImageRejected otherwise.
    At 8 bits a sample (a 16-bit RGB PNG's high bytes), one band at a time."""
    red, green, blue = image.convert("RGB").split()
    if ImageChops.difference(red, green).getbbox() or ImageChops.difference(green, blue).getbbox():
        raise ImageRejected(
            "the mask is a colour image; send a greyscale image: white dreams, black keeps the "
            "input"
        )
    return red
