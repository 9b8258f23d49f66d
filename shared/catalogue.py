"""The backbones Oneiro can dream with, and their layers: a static list the API checks against.

Kept free of TensorFlow so the API can validate a job without importing it; a test checks every
entry against Keras (tests/engine/test_catalogue.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    """A Keras application cut at dreamable layers."""

    keras_name: str  # the constructor in keras.applications
    # The ImageNet weights without the top, as Keras names the file it downloads; a weights
    # directory (ONEIRO_WEIGHTS_DIR) or the Keras cache holds it under this name.
    weights_file: str
    # "tf": pixels scaled to [-1, 1]; "caffe": BGR with the ImageNet channel means subtracted.
    preprocessing: str
    layers: dict[str, int]  # dreamable layer -> channels
    default_layers: tuple[str, ...]
    min_side: int  # the smallest input for which the deepest layer still has an output
    # Input sides s with s % size_step in size_residues give every pixel a gradient: the model's
    # valid-padded strided layers ignore the trailing rows and columns of any other size.
    size_step: int
    size_residues: tuple[int, ...]
    # What a worker's memory needs for it (shared/cost.py peak_memory_bytes): its weights
    # (Keras count_params without the top, checked by tests/engine/test_catalogue.py), and the bytes
    # the gradient through it keeps per input pixel of a tile (activations and their
    # gradients). InceptionV3's is measured (XLA's memory analysis, worker/engine/device.py);
    # the others are scaled from it by the activations per input pixel their first blocks keep
    # at full and half resolution, where nearly all of it is.
    parameters: int = 0
    gradient_bytes_per_pixel: int = 1_500

    def window(self, length: int) -> int:
        """The smallest side >= `length` (and >= min_side) giving every pixel a gradient."""
        side = max(length, self.min_side)
        while side % self.size_step not in self.size_residues:
            side += 1
        return side


def _names(template: str, *ranges: tuple[int, int, int]) -> dict[str, int]:
    return {
        template.format(i): channels for start, stop, channels in ranges for i in range(start, stop)
    }


BACKBONES: dict[str, Backbone] = {
    "inception_v3": Backbone(
        keras_name="InceptionV3",
        weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        preprocessing="tf",
        layers=_names(
            "mixed{}", (0, 1, 256), (1, 3, 288), (3, 8, 768), (8, 9, 1280), (9, 11, 2048)
        ),
        default_layers=("mixed3", "mixed5"),
        min_side=75,
        size_step=8,
        size_residues=(3, 5),
        parameters=21_802_784,
        gradient_bytes_per_pixel=1_500,
    ),
    "vgg19": Backbone(
        keras_name="VGG19",
        weights_file="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        preprocessing="caffe",
        layers={
            f"block{block}_{kind}": channels
            for block, convs, channels in (
                (1, 2, 64),
                (2, 2, 128),
                (3, 4, 256),
                (4, 4, 512),
                (5, 4, 512),
            )
            for kind in [*(f"conv{i}" for i in range(1, convs + 1)), "pool"]
        },
        default_layers=("block4_conv3", "block5_conv3"),
        min_side=32,
        size_step=1,
        size_residues=(0,),
        parameters=20_024_384,
        gradient_bytes_per_pixel=4_000,
    ),
    "resnet50": Backbone(
        keras_name="ResNet50",
        weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        preprocessing="caffe",
        layers={
            f"conv{stage}_block{block}_out": channels
            for stage, blocks, channels in ((2, 3, 256), (3, 4, 512), (4, 6, 1024), (5, 3, 2048))
            for block in range(1, blocks + 1)
        },
        default_layers=("conv4_block2_out", "conv4_block6_out"),
        min_side=32,
        size_step=1,
        size_residues=(0,),
        parameters=23_587_712,
        gradient_bytes_per_pixel=2_500,
    ),
    "mobilenet_v2": Backbone(
        keras_name="MobileNetV2",
        weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        preprocessing="tf",
        layers={
            **_names(
                "block_{}_expand_relu",
                (1, 2, 96),
                (2, 4, 144),
                (4, 7, 192),
                (7, 11, 384),
                (11, 14, 576),
                (14, 17, 960),
            ),
            "out_relu": 1280,
        },
        default_layers=("block_6_expand_relu", "block_13_expand_relu"),
        min_side=32,
        size_step=1,
        size_residues=(0,),
        parameters=2_257_984,
        gradient_bytes_per_pixel=2_000,
    ),
}

DEFAULT_BACKBONE = "inception_v3"
