"""The guide image and the mask a job may carry: checked by the API, decoded by the worker.

Pure Pillow and numpy: the API imports it without TensorFlow.
"""

from __future__ import annotations

import numpy as np

from shared.images import ImageRejected, as_depth, decode_image, inspect_image

# A mask may differ this much in aspect ratio from the image it is resized to: rounding when
# either was scaled, not a mask drawn for another picture.
MASK_ASPECT_TOLERANCE = 0.02


def inspect_guide(data: bytes, max_pixels: int) -> str:
    """Check that `data` is an image Oneiro accepts, within `max_pixels`; return its format.
    Raises ImageRejected (ImageTooLarge over the limit)."""
    image_format, _, _ = inspect_image(data, max_pixels)
    return image_format


def inspect_mask(data: bytes, max_pixels: int, image_size: tuple[int, int]) -> str:
    """Check that `data` is a greyscale image within `max_pixels` with the aspect ratio of the
    image of `image_size` (width, height); return its format. Raises ImageRejected."""
    image_format, width, height = inspect_image(data, max_pixels)
    decode_mask(data)  # refuses a colour mask
    image_w, image_h = image_size
    ratio, wanted = width / height, image_w / image_h
    if abs(ratio / wanted - 1.0) > MASK_ASPECT_TOLERANCE:
        raise ImageRejected(
            f"the mask is {width}x{height} and the image {image_w}x{image_h}: their aspect ratios "
            "differ; send a mask of the image's shape (any size: it is resized to the image)"
        )
    return image_format


def decode_mask(data: bytes) -> np.ndarray:
    """The mask in `data` as an upright H x W uint8 array (0: keep, 255: dream), decoded as any
    input is (shared/images.py). A colour image is refused (ImageRejected) unless its three
    channels are equal: which one would count?"""
    rgb = as_depth(decode_image(data).pixels, 8)
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
        raise ImageRejected(
            "the mask is a colour image; send a greyscale image: white dreams, black keeps the "
            "input"
        )
    return rgb[..., 0].copy()
