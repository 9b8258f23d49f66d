"""What the engine chooses per device: precision, compilation, tiles per call, loss scaling.

Backend-neutral: each backend module reports its Device; the choices here are plain rules,
each measured where it says (benchmarks/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Device:
    """The device a backend computes on."""

    kind: str  # "cpu" or "gpu"
    compute_capability: tuple[int, int] | None  # CUDA's, on a GPU
    free_bytes: int | None  # accelerator memory a tile batch may use; None on a CPU or unknown


# On a CPU: tiles per model call, about this many pixels. Batches of about 0.6 MP ran 5-10%
# faster per pixel than single tiles on a 2-core CPU, small tiles gaining most.
CPU_BATCH_PIXELS = 600_000
CPU_MAX_BATCH = 16
# On a GPU: tiles per call from free memory. XLA's own memory analysis of the compiled
# gradient through InceptionV3 to mixed5 (batch 1, 256 and 512 pixels a side) gives about
# 960-1,150 bytes of temporaries per input pixel in float32 and 1,400 in bfloat16 (XLA keeps
# some float32 copies); this covers both. Only a share of the free memory is planned for: the
# rest is headroom for convolution workspaces and for backbones heavier per pixel.
GRADIENT_BYTES_PER_PIXEL = 1_500
GPU_MEMORY_SHARE = 0.5
# More tiles per call stop paying once the GPU is busy; beyond this a batch only costs memory.
GPU_MAX_BATCH = 64
# float16 loss scaling: the loss is multiplied by this before the backward pass and the gradient
# divided by it after, in float32, so that gradients under float16's smallest normal number
# (6e-5) are not flushed to zero. Halved while a gradient overflows.
FLOAT16_LOSS_SCALE = 2.0**15


class DeviceOutOfMemory(RuntimeError):
    """A tile batch did not fit in the device's memory; the message says what to change."""


def best_precision(backend: str, device: Device) -> str:
    """The fastest precision measured for `device`: bfloat16 on GPUs that have it (Ampere and
    newer), float16 on older GPUs; on a CPU, bfloat16 with TensorFlow where the CPU has native
    bfloat16 (oneDNN: about 2x float32), float32 otherwise and always with JAX.

    Why float32 for JAX on a CPU: XLA's CPU convolutions (YNNPACK by default in jaxlib 0.10,
    Eigen without it) have no fast bfloat16 path; they ran bfloat16 at 0.86x of float32 through
    the whole engine, and one convolution's input gradient at about the same speed in either
    precision, at or below TensorFlow's float32, where TensorFlow's oneDNN (AMX) bfloat16 was
    3-7x faster (benchmarks/cpu_convolution.py). That is why JAX's engine runs at about a
    third of TensorFlow's on a CPU whatever the engine chooses; no XLA flag of
    jaxlib 0.10.2 sends convolutions to oneDNN (benchmarks/README.md)."""
    if device.kind == "gpu":
        return "bfloat16" if (device.compute_capability or (0, 0)) >= (8, 0) else "float16"
    return "bfloat16" if backend == "tensorflow" and _cpu_has_bfloat16() else "float32"


@cache
def _cpu_has_bfloat16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def should_compile(backend: str, device: Device) -> bool:
    """Whether to compile the gradient with XLA: always with JAX (its eager mode dispatches op
    by op); with TensorFlow on a GPU, not on a CPU, where jit_compile measured 0.75x."""
    return backend == "jax" or device.kind == "gpu"


def loss_scale(precision: str) -> float:
    """The initial loss scale for `precision`: only float16 has too few exponent bits."""
    return FLOAT16_LOSS_SCALE if precision == "float16" else 1.0


def tiles_per_call(device: Device, window: tuple[int, int]) -> int:
    """How many tiles of `window` go through the model in one call on `device`."""
    pixels = window[0] * window[1]
    if device.kind != "gpu" or device.free_bytes is None:
        return max(1, min(CPU_MAX_BATCH, round(CPU_BATCH_PIXELS / pixels)))
    per_tile = pixels * GRADIENT_BYTES_PER_PIXEL
    return max(1, min(GPU_MAX_BATCH, math.floor(device.free_bytes * GPU_MEMORY_SHARE / per_tile)))


def deterministic(device: Device, wanted: bool) -> bool:
    """Whether to compute with deterministic kernels (ONEIRO_GPU_DETERMINISM: `wanted`): on a GPU
    only. A GPU's atomic reductions and cuDNN's fastest convolution algorithms add in whatever
    order they run, so two renders of one recipe could differ in the last bits, and the dream
    amplifies those; deterministic kernels cost some speed there. A CPU already renders the
    identical image (tests/e2e/test_recipes_e2e.py), and stays as it was."""
    return wanted and device.kind == "gpu"
