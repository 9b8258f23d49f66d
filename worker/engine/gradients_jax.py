"""The engine's JAX-specific code: the batched gradient of the dream loss, the device."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

from worker.engine.backend import JAX_DETERMINISM_FLAG
from worker.engine.device import Device

log = logging.getLogger(__name__)


def make_gradient_fn(
    model: keras.Model,
    preprocess: Callable[[Any], Any],
    tile_losses: Callable[[Any], Any],
    *,
    jit: bool = True,
) -> Callable[..., tuple[Any, Any]]:
    """A compiled function: (tiles (B x H x W x 3), loss scale, *extra) -> (d loss_b / d tile_b,
    loss_b), the backend's arrays, left on its device.

    `tile_losses` maps the model's outputs (and the `extra` arrays) to one float32 loss per
    tile. The gradient is taken of the scaled sum (tiles are independent, so each gets its own)
    and unscaled in float32.
    JAX is always compiled: uncompiled, every operation is a separate dispatch.
    """
    del jit
    trainable = [v.value for v in model.trainable_variables]
    fixed = [v.value for v in model.non_trainable_variables]
    traces = [0]

    def scaled_loss(
        tiles: jax.Array,
        scale: jax.Array,
        trainable: list[Any],
        fixed: list[Any],
        extra: tuple[Any, ...],
    ) -> tuple[jax.Array, jax.Array]:
        traces[0] += 1  # runs only while jax.jit traces
        outputs, _ = model.stateless_call(trainable, fixed, preprocess(tiles), training=False)
        losses = tile_losses(outputs, *extra)
        return jnp.sum(losses) * scale, losses

    gradient = jax.value_and_grad(scaled_loss, has_aux=True)

    def unscaled(
        tiles: jax.Array, scale: jax.Array, trainable: list[Any], fixed: list[Any], extra: Any
    ) -> tuple[jax.Array, jax.Array]:
        (_, losses), grads = gradient(tiles, scale, trainable, fixed, extra)
        return grads / scale, losses

    # The weights go in as arguments, not captured constants: XLA would fold megabytes of
    # constants into every compiled shape.
    step = jax.jit(unscaled)

    # On a GPU the call waits for its result, so that running out of device memory raises here,
    # where the engine turns it into DeviceOutOfMemory, and not at some later read. On a CPU it
    # need not wait (host memory), and waiting costs the calling thread a spin.
    wait = jax.devices()[0].platform == "gpu"

    scales: dict[float, jax.Array] = {}  # the loss scale on the device, put there once

    def run(tiles: Any, scale: float, *extra: Any) -> tuple[jax.Array, jax.Array]:
        if scale not in scales:
            scales[scale] = jax.device_put(np.float32(scale))
        grads, losses = step(to_device(tiles), scales[scale], trainable, fixed, extra)
        return (grads.block_until_ready() if wait else grads), losses

    def cost(shape: tuple[int, ...]) -> dict[str, float]:
        """XLA's cost analysis of the program compiled for a tile batch of `shape` (with no
        extra arrays): its FLOPs and bytes accessed, for a roofline (benchmarks/gpu.py)."""
        tiles = jax.ShapeDtypeStruct(shape, jnp.float32)  # type: ignore[no-untyped-call]  # JAX has no types for it
        compiled = step.lower(tiles, jnp.float32(1.0), trainable, fixed, ()).compile()
        analysis: Any = compiled.cost_analysis()
        # A list of one dict per program in older JAX releases, a dict in newer ones.
        found = analysis[0] if isinstance(analysis, list) else analysis
        return {"flops": float(found["flops"]), "bytes": float(found["bytes accessed"])}

    # The gradient function carries its trace counter (tests read it) and its cost analysis:
    # function attributes.
    run.traces = lambda: traces[0]  # type: ignore[attr-defined]
    run.cost = cost  # type: ignore[attr-defined]
    return run


def to_device(array: Any) -> jax.Array:
    """`array` on the device, an explicit transfer (none where it is there already), so that a
    render runs under jax.transfer_guard("disallow"): nothing crosses unasked."""
    return array if isinstance(array, jax.Array) else jax.device_put(array)


def to_host(array: Any) -> np.ndarray:
    """`array` as numpy on the host, an explicit transfer."""
    return np.asarray(jax.device_get(array))


def compile(fn: Callable[..., Any], *, jit: bool) -> Callable[..., Any]:  # noqa: A001
    """`fn`, written in Keras ops, as one XLA program (JAX always compiles: see above)."""
    del jit
    return jax.jit(fn)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is XLA saying a device ran out of memory."""
    return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def enable_determinism() -> None:
    """Deterministic kernels (a GPU's; see device.deterministic): XLA took its flags when JAX
    started, where worker/engine/backend.choose_backend set them; say so when it did not."""
    if "xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
        log.warning(
            "JAX started without %s in XLA_FLAGS: re-runs of a recipe on this GPU may differ",
            JAX_DETERMINISM_FLAG,
        )


def device() -> Device:
    """The device JAX computes on: the first GPU, or the CPU."""
    first = jax.devices()[0]
    if first.platform != "gpu":
        return Device("cpu", None, None)
    capability = getattr(first, "compute_capability", "0.0")
    major, _, minor = str(capability).partition(".")
    stats = first.memory_stats() or {}
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0) if "bytes_limit" in stats else None
    return Device("gpu", (int(major), int(minor or 0)), free)
