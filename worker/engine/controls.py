"""Steering a render: a guide image whose features the dream seeks, a mask of where it dreams."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from worker.engine import imaging
from worker.engine.model import DreamModel

# The guide's longer side when its features are taken: about what the backbones were trained on
# (224 to 299), so its features are the model's usual ones, and few enough (some hundreds per
# layer) that matching every position against all of them costs little beside the gradient.
GUIDE_SIDE = 299
# Guide features are padded (with copies, which change no maximum) to a multiple of this, so
# guides of different shapes share a traced gradient function.
FEATURE_QUANTUM = 64
# The mask's edge is blurred over this fraction of the image's shorter side (at least a pixel):
# a hard edge would show as a seam between dreamed and untouched pixels.
FEATHER = 0.01


@dataclass(frozen=True)
class Controls:
    """What steers a render besides its params.

    `guide`: an H x W x 3 uint8 image whose features the dream seeks (mixed with the plain
    objective by params.guide_weight). `mask`: an H x W uint8 greyscale image of any size, how
    strongly each pixel dreams (0 to 255). `mask_model`: the objective of the masked-out part
    (params.mask_layers); without it that part does not dream.
    """

    guide: np.ndarray | None = None
    mask: np.ndarray | None = None
    mask_model: DreamModel | None = None


def guide_features(model: DreamModel, guide: np.ndarray) -> list[np.ndarray]:
    """Per layer of `model`, the guide's features: an N x C float32 matrix, one row a position.

    Each is scaled to a mean square of 1, so the guided loss weighs like the plain one whatever
    the layer's activations' size, and padded with copies of its first row to a multiple of
    FEATURE_QUANTUM rows.
    """
    if model.features is None:
        raise ValueError("this dream model cannot compute features for a guide")
    height, width = guide.shape[:2]
    scale = GUIDE_SIDE / max(height, width)
    shape = (
        model.backbone.window(max(1, round(height * scale))),
        model.backbone.window(max(1, round(width * scale))),
    )
    pixels = np.stack(
        [imaging.resize_plane(imaging.to_plane(guide[..., c]), shape) for c in range(3)], axis=-1
    )
    matrices = []
    for activation in model.features(pixels[None]):
        flat = activation.reshape(-1, activation.shape[-1]).astype(np.float32)
        flat /= np.sqrt(np.mean(flat**2)) + 1e-8
        rows = -(-len(flat) // FEATURE_QUANTUM) * FEATURE_QUANTUM
        padding = np.repeat(flat[:1], rows - len(flat), axis=0)
        matrices.append(np.concatenate([flat, padding]))
    return matrices


def mask_weights(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`mask` (uint8, any size) as float32 weights in [0, 1] at `shape` (h, w), its edges
    feathered. All 0 stays all 0 and all 255 all 1: the blur extends the border."""
    resized = Image.fromarray(mask).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    radius = max(1.0, FEATHER * min(shape))
    blurred = resized.filter(ImageFilter.GaussianBlur(radius))
    weights: np.ndarray = np.asarray(blurred, dtype=np.float32) / 255.0
    return weights


def composite(dreamed: np.ndarray, image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The input where `weights` (h x w in [0, 1]) is 0, the dream where it is 1, blended
    between: pixels that were not to dream are the input's own, not its resampled copy."""
    blend = image + weights[..., None] * (dreamed.astype(np.float32) - image)
    top = np.iinfo(image.dtype).max  # 255, or 65535 for a 16-bit render
    composed: np.ndarray = np.clip(np.rint(blend), 0, top).astype(image.dtype)
    return composed
