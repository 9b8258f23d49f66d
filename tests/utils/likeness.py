"""How much of a photo a dream keeps: the figure the default params are chosen by."""

from __future__ import annotations

import numpy as np
from PIL import Image


def block_luminance(image: Image.Image, block: int = 32) -> np.ndarray:
    """Mean luminance of each whole `block` x `block` square of `image`."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    rows, cols = grey.shape[0] // block, grey.shape[1] // block
    grey = grey[: rows * block, : cols * block]
    return grey.reshape(rows, block, cols, block).mean(axis=(1, 3))


def photo_kept(photo: Image.Image, dream: Image.Image, block: int = 32) -> float:
    """Correlation of the block luminances of `photo` and `dream` (same size): near 1 when the
    dream keeps the photo's light and shade, the cat still a cat; an even grid of eyes over
    the whole picture scores far lower."""
    a, b = block_luminance(photo, block), block_luminance(dream, block)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
