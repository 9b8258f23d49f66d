"""GPU benchmark of the engine on Keras's JAX backend; run it through benchmarks/gpu.sh.

Megapixel-steps per second at 1, 4, 16, 64 and 256 MP in each precision, against a
straightforward JAX loop (float32, one tile at a time) on the same image in the same run, with
the ratio; the process's peak device memory; the wall time of a 3840 x 2160 render at default
params. Prints a table; writes gpu.json to $OUT when set. `--smoke`: tiny sizes, on any device.

`--predict` runs on any machine (a CPU here): XLA's cost analysis of the compiled gradient step
at 16 MP, turned into a roofline figure for an H100 and an H200, printing the peak figures it
assumed, with and without the host's work per step and the bus crossings of today's engine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# Before the engine is imported: Keras reads its backend once.
os.environ["ONEIRO_BACKEND"] = "jax"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from engine import (  # noqa: E402
    LAYERS,
    StraightforwardJaxLoop,
    baseline_timer,
    engine_rate,
    photo,
    weights,
)

PRECISIONS = ("bfloat16", "float16", "float32")


def peak_memory_gib() -> float | None:
    """The process's peak device memory so far, or None where the device does not say."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI on a CPU")
    parser.add_argument(
        "--budget", type=float, default=300.0, help="seconds; rows past it skip (not with --smoke)"
    )
    parser.add_argument(
        "--predict", action="store_true", help="a roofline from XLA's cost analysis, any device"
    )
    parser.add_argument(
        "--host-ms",
        type=float,
        default=HOST_MS_PER_MP_STEP,
        help="--predict: the host's work per MP-step (benchmarks/engine.py --host)",
    )
    args = parser.parse_args()
    if args.predict:
        predict(args.host_ms)
        return
    started = time.monotonic()

    import jax

    device = jax.devices()[0]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "backend": "jax",
        "jax": jax.__version__,
        "device": f"{device.platform}: {getattr(device, 'device_kind', '')}",
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "weights": "random" if weights() == "random" else "file",
        "smoke": args.smoke,
        "rows": [],
        "skipped": [],
    }
    print(f"{report['device']}, jax {jax.__version__}, {report['host']}", flush=True)

    from worker.engine import load_dream_model

    # The smoke run cuts the model early: the same code paths, a fraction of the compile time.
    layers = ("mixed0",) if args.smoke else LAYERS
    models = {p: load_dream_model(weights(), layers, precision=p) for p in PRECISIONS}
    loop = StraightforwardJaxLoop(weights(), layers)
    print(
        f"\n{'MP':>7} {'precision':>9} {'MP-steps/s':>11} {'loop':>8} {'ratio':>6} {'peak GiB':>8}"
    )
    # Squares of 1024 * 2^k pixels a side (1, 4, 16, 64, 256 MiP): whole 512-pixel tiles for
    # the loop and one window shape for the engine, so each compiles few shapes.
    sides: tuple[int | str, ...] = (
        (128,) if args.smoke else (1024, 2048, 4096, 8192, "render", 16384)
    )
    for side in sides:
        if time.monotonic() - started > args.budget and not args.smoke:
            report["skipped"].append(side)
            continue
        if side == "render":
            report["render"] = time_render(args.smoke, models)
            continue
        assert isinstance(side, int)
        image = photo_of((side, side))
        steps = 2 if side <= 4096 else 1
        base = baseline_timer(image, loop)(steps)
        for precision, model in models.items():
            rate = engine_rate(image, model, steps)
            row = {
                "megapixels": side * side / 1e6,
                "precision": precision,
                "mp_steps_per_s": rate,
                "s_per_mp_step": 1 / rate,
                "baseline_mp_steps_per_s": base,
                "ratio": rate / base,
                "peak_gib": peak_memory_gib(),
            }
            report["rows"].append(row)
            peak = "n/a" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
            print(
                f"{row['megapixels']:7.2f} {precision:>9} {rate:11.2f} {base:8.2f} "
                f"{rate / base:5.2f}x {peak:>8}",
                flush=True,
            )
    if args.smoke:
        report["render"] = time_render(args.smoke, models)
    if report["skipped"]:
        print(f"skipped (past the {args.budget:.0f} s budget): {report['skipped']}")
    report["seconds"] = time.monotonic() - started
    print(f"\ntotal {report['seconds']:.0f} s")
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu.json"
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")


# Peak figures the roofline assumes (NVIDIA's data sheets, SXM parts): dense bfloat16 tensor-core
# and plain float32 FLOP/s, memory bandwidth, and the host link (PCIe 5.0 x16, one direction).
PEAKS = {
    "H100 SXM": {"bfloat16": 989e12, "float32": 67e12, "memory": 3.35e12, "link": 64e9},
    "H200 SXM": {"bfloat16": 989e12, "float32": 67e12, "memory": 4.8e12, "link": 64e9},
}
# The host's work per megapixel-step at 16 MP as benchmarks/engine.py --host measured it on the
# 2-core development machine, 2026-12-07: while the engine tiled, normalized and updated in numpy
# between batches, and since it does all that on the device (the default of --host-ms).
NUMPY_HOST_MS_PER_MP_STEP = 42.0
HOST_MS_PER_MP_STEP = 1.1


def predict(host_ms: float) -> None:
    """What a GPU could do with the compiled gradient step at 16 MP: its FLOPs and bytes (XLA's
    cost analysis, compiled here for the CPU: the same program, counted before any GPU kernel
    choice) against each card's peaks, the bound of each; then with each engine's host work (and
    the numpy engine's bus crossings) around it."""
    from shared.cost import work
    from shared.params import RenderParams
    from worker.engine import load_dream_model
    from worker.engine.device import GPU_MAX_BATCH
    from worker.engine.tiling import TilePlan

    side = 4096
    megapixels = side * side / 1e6
    four_k = work(3840, 2160, RenderParams(seed=0)) / 1e6  # MP-steps of a default 4K render
    print(
        f"roofline at {side}x{side} ({megapixels:.1f} MP), InceptionV3 {'+'.join(LAYERS)}, tile "
        f"512; XLA cost analysis of the compiled gradient (jax {__import__('jax').__version__})"
    )
    for name, peak in PEAKS.items():
        figures = ", ".join(
            f"{key} {value / 1e12:g} T{'FLOP' if key in ('bfloat16', 'float32') else 'B'}/s"
            for key, value in peak.items()
        )
        print(f"  assumed {name}: {figures}")
    print(
        f"  assumed host work per MP-step: {host_ms:g} ms on the device engine (--host-ms), "
        f"{NUMPY_HOST_MS_PER_MP_STEP:g} ms on the numpy engine before it"
    )
    print(f"  a 3840x2160 render at default params: {four_k:.0f} MP-steps ('4K s')")
    for precision in ("bfloat16", "float32"):
        model = load_dream_model("random", LAYERS, precision=precision)
        plan = TilePlan((side, side), 512, model)
        batch = min(len(plan.tiles), GPU_MAX_BATCH)
        batches = -(-len(plan.tiles) // batch)
        cost = model.gradient.compiled.cost((batch, *plan.window, 3))  # type: ignore[attr-defined]
        flops, accessed = cost["flops"] * batches, cost["bytes"] * batches
        # The numpy engine sent each batch over the bus twice: float32 tiles in, gradients out.
        crossing = 2 * 4 * 3 * batch * batches * plan.window[0] * plan.window[1]
        print(
            f"\n  {precision}: {len(plan.tiles)} tiles of {plan.window[0]}x{plan.window[1]} in "
            f"{batches} batch(es) of {batch}; per step {flops / 1e12:.2f} TFLOP, "
            f"{accessed / 1e9:.1f} GB accessed; the numpy engine sent {crossing / 1e9:.2f} GB "
            "over the bus"
        )
        print(
            f"  {'card':>9} {'compute ms':>10} {'memory ms':>9} {'bound':>7} {'MP-steps/s':>10} "
            f"{'4K s':>6} {'device engine':>13} {'4K s':>6} {'numpy engine':>12} {'4K s':>6}"
        )
        for name, peak in PEAKS.items():
            compute, memory = flops / peak[precision], accessed / peak["memory"]
            device = max(compute, memory)
            # Each engine: the host's work, then (numpy) the bus, then the device, in turn.
            ondevice = device + host_ms * megapixels / 1e3
            numpy = device + crossing / peak["link"] + NUMPY_HOST_MS_PER_MP_STEP * megapixels / 1e3
            cells = [
                f"{megapixels / t:{w}.0f} {four_k * t / megapixels:6.1f}"
                for t, w in ((device, 10), (ondevice, 13), (numpy, 12))
            ]
            print(
                f"  {name:>9} {compute * 1e3:10.1f} {memory * 1e3:9.1f} "
                f"{'compute' if compute >= memory else 'memory':>7} {' '.join(cells)}"
            )
    print(
        "\n  a roofline is a ceiling: real kernels reach perhaps half of it. The bytes are the "
        "CPU program's, which fuses less than a GPU's:\n  the memory bound is pessimistic."
    )


def time_render(smoke: bool, models: dict[str, Any]) -> dict[str, Any]:
    """Wall time of a 3840 x 2160 render at default params (5 octaves x 20 steps), in the
    precision `auto` picks, after a 1-step render of the same shapes (compiling them)."""
    from shared.params import RenderParams
    from worker.engine import render
    from worker.engine.model import best_precision

    shape = (64, 96) if smoke else (2160, 3840)
    params = RenderParams(steps=2, octaves=2, seed=0) if smoke else RenderParams(seed=0)
    model = models[best_precision()]
    image = photo_of(shape)
    render(image, params.model_copy(update={"steps": 1}), model)
    began = time.perf_counter()
    render(image, params, model)
    seconds = time.perf_counter() - began
    print(
        f"{shape[1]}x{shape[0]} render, {params.octaves} octaves x {params.steps} steps, "
        f"{model.precision}: {seconds:.1f} s",
        flush=True,
    )
    return {
        "width": shape[1],
        "height": shape[0],
        "octaves": params.octaves,
        "steps": params.steps,
        "precision": model.precision,
        "seconds": seconds,
    }


def photo_of(shape: tuple[int, int]) -> np.ndarray:
    """The benchmark photo resized to exactly `shape` (height, width)."""
    from PIL import Image

    return np.asarray(Image.fromarray(photo(1.0)).resize((shape[1], shape[0])))


if __name__ == "__main__":
    main()
