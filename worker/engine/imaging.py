"""Whole-image array work for the dream loop, on channel-planar (3 x H x W) float32 arrays.

Planar, because every operation here can then go one contiguous plane at a time: the
temporaries of a 16384-pixel-wide render are a plane, not the whole image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Rows per chunk when reducing over a plane: bounds the temporary to a few megabytes.
CHUNK_ROWS = 256


def to_plane(channel: np.ndarray) -> np.ndarray:
    """One H x W uint8 or uint16 channel as float32 in [-1, 1]."""
    plane: np.ndarray = np.multiply(channel, 2 / np.iinfo(channel.dtype).max, dtype=np.float32)
    plane -= 1.0
    return plane


def to_image(planar: np.ndarray, dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """A 3 x H x W float32 array in [-1, 1] as an H x W x 3 image of `dtype` (uint8, or uint16:
    16 bits made from the floats themselves, never from 8-bit values)."""
    top = np.iinfo(dtype).max
    image = np.empty((*planar.shape[1:], 3), dtype=dtype)
    for c in range(3):
        plane = (planar[c] + 1.0) * (top / 2)
        np.clip(np.round(plane, out=plane), 0, top, out=plane)
        image[..., c] = plane
    return image


def resize_plane(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """One float32 plane resized (bilinear, antialiased when shrinking) to `shape` (h, w)."""
    if plane.shape == shape:
        return plane.copy()
    resized = Image.fromarray(np.ascontiguousarray(plane)).resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def resize(planar: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A planar image resized to `shape`, one plane at a time."""
    out = np.empty((planar.shape[0], *shape), dtype=np.float32)
    for c in range(planar.shape[0]):
        out[c] = resize_plane(planar[c], shape)
    return out


def std(array: np.ndarray) -> float:
    """The standard deviation of `array`, summed in float64 chunk by chunk (no full-size copy).

    Summation order is fixed, so the result is the same bit for bit on every run.
    """
    total = squares = 0.0
    flat_rows = array.reshape(-1, array.shape[-1])
    for start in range(0, flat_rows.shape[0], CHUNK_ROWS):
        chunk = flat_rows[start : start + CHUNK_ROWS].astype(np.float64)
        total += float(chunk.sum())
        squares += float(np.square(chunk, out=chunk).sum())
    count = array.size
    mean = total / count
    return float(np.sqrt(max(squares / count - mean * mean, 0.0)))


def laplacian_normalize(gradient: np.ndarray, levels: int = 4) -> np.ndarray:
    """`gradient` split into a Laplacian pyramid, each level scaled to unit std, merged again.
    The host's reference: renders run it on the device (worker/engine/ondevice.py), held to it by
    a test.

    Low and high spatial frequencies then weigh alike, so large structures grow as readily as
    fine texture (the Laplacian normalization of the original DeepDream notebook).
    """
    highs = []
    current = gradient
    for _ in range(levels - 1):
        shape = current.shape[1:]
        low = resize(current, (max(1, shape[0] // 2), max(1, shape[1] // 2)))
        highs.append(current - resize(low, shape))
        current = low
    merged = current / (std(current) + 1e-8)
    for high in reversed(highs):
        merged = resize(merged, high.shape[1:])
        merged += high / (std(high) + 1e-8)
    return merged


def tv_gradient(plane: np.ndarray) -> np.ndarray:
    """The gradient of one plane's total variation, in its squared-difference form (the host's
    reference of ondevice._tv_gradient).

    That is 4x minus the four neighbours (edges replicated): a step against it pulls each pixel
    toward its neighbours' mean and is stable for coefficients up to 1/4, unlike the sign of the
    absolute-difference form, which rings at large steps.
    """
    padded = np.pad(plane, 1, mode="edge")
    grad = 4.0 * plane
    grad -= padded[:-2, 1:-1]
    grad -= padded[2:, 1:-1]
    grad -= padded[1:-1, :-2]
    grad -= padded[1:-1, 2:]
    return grad


def keep_colors(dreamed: np.ndarray, original: np.ndarray) -> np.ndarray:
    """The luminance of `dreamed` with the colour (chroma) of `original`; H x W x 3 of their
    dtype (uint8 or uint16).

    In YCbCr a change of Y alone moves R, G and B by the same amount, so the original plus the
    luma difference is the original's chroma on the dream's luma, at any bit depth.
    """
    top = np.iinfo(dreamed.dtype).max
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma
    shift = (dreamed.astype(np.float32) - original.astype(np.float32)) @ weights
    merged = original.astype(np.float32) + shift[..., None]
    return np.clip(np.rint(merged), 0, top).astype(dreamed.dtype)
