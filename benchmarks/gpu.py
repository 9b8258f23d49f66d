"""GPU benchmark of the engine on Keras's JAX backend; run it through benchmarks/gpu.sh.

Megapixel-steps per second at 1, 4, 16, 64 and 256 MP in each precision, against a
straightforward JAX loop (float32, one tile at a time) on the same image in the same run, with
the ratio; the process's peak device memory; the wall time of a 3840 x 2160 render at default
params. Prints a table; writes gpu.json to $OUT when set. `--smoke`: tiny sizes, on any device.
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
    args = parser.parse_args()
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


def time_render(smoke: bool, models: dict[str, Any]) -> dict[str, Any]:
    """Wall time of a 3840 x 2160 render at default params (5 octaves x 100 steps), in the
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
