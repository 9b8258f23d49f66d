"""Engine benchmark: the straightforward tiled loop against the engine, then a scaling table.

    .venv/bin/python benchmarks/engine.py            # ratio and scaling (1, 4, 16, 64 MP)
    .venv/bin/python benchmarks/engine.py --huge     # also one step of a 16384 x 16384 render
    .venv/bin/python benchmarks/engine.py --backend jax   # the same on Keras's JAX backend
    .venv/bin/python benchmarks/engine.py --no-scaling    # the comparison only
    .venv/bin/python benchmarks/engine.py --host     # the host's work per step (JAX), 1-16 MP

`--host` measures what a GPU would feel: with JAX the compiled programs run on JAX's own threads,
so the CPU time of the thread that calls `render` is the host's own work (numpy, Python, the
transfers' copies). It is the median over a 6-step render's steps after the first of the main
thread's CPU time between two steps' ends (set-up, tracing and the final read-back left out), at
1, 4 and 16 MP, each in a fresh process; a GPU cannot render faster than 1 / that MP-steps per
second, whatever its speed. (The difference of a 6-step and a 2-step render, used at first,
drowned a fraction of a millisecond in the final image's conversion.)

Megapixel-steps per second: pixels x gradient steps / seconds, one octave at the input size,
after a warm-up step (tracing) for each. Each scaling row runs in a fresh process so its peak
resident memory is its own. Weights: ../shared/models' InceptionV3 file when present, else
random (the arithmetic, and so the speed, is the same).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WEIGHTS_FILE = ROOT.parent / "shared/models/inception_v3_notop_nsfwjs.weights.h5"
PHOTO = ROOT.parent / "shared/images/hubble_deep_field.jpg"
LAYERS = ("mixed3", "mixed5")
TILE = 512


def photo(megapixels: float) -> np.ndarray:
    """A real photo (or the repo's cat) resized to about `megapixels`, 4:3."""
    source = PHOTO if PHOTO.is_file() else ROOT / "tests/data/chelsea.png"
    width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = round(width * 3 / 4)
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC))


def weights() -> str:
    return str(WEIGHTS_FILE) if WEIGHTS_FILE.is_file() else "random"


class StraightforwardLoop:
    """The seed's tiled method done honestly, as the baseline.

    Keras InceptionV3 as it comes (float32, batch norms), cut at mixed3 and mixed5; a compiled
    gradient function called on one tile at a time; the image rolled randomly every step and
    every tile covered, the partial last row and column included.
    """

    def __init__(self, weights: str) -> None:
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(0)
        base = keras.applications.InceptionV3(
            include_top=False, weights=None if weights == "random" else weights
        )
        model = keras.Model(base.input, [base.get_layer(name).output for name in LAYERS])

        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
        def gradient(tile: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(tile)
                loss = tf.add_n([tf.reduce_mean(a) for a in model(tile[tf.newaxis])])
            return tape.gradient(loss, tile)

        self.gradient = gradient
        self.tf = tf

    def tile_gradient(self, tile: np.ndarray) -> np.ndarray:
        return self.gradient(self.tf.constant(tile)).numpy()

    def step(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = image.shape[:2]
        shift = (int(rng.integers(-TILE, TILE)), int(rng.integers(-TILE, TILE)))
        rolled = np.roll(image, shift, axis=(0, 1))
        grad = np.zeros_like(rolled)
        for y in range(0, height, TILE):
            for x in range(0, width, TILE):
                grad[y : y + TILE, x : x + TILE] = self.tile_gradient(
                    rolled[y : y + TILE, x : x + TILE]
                )
        grad = np.roll(grad, (-shift[0], -shift[1]), axis=(0, 1))
        grad /= grad.std() + 1e-8
        return np.clip(image + grad * 0.01, -1, 1)


class StraightforwardJaxLoop(StraightforwardLoop):
    """The same baseline on JAX: `jax.jit` of the gradient over `stateless_call`, one tile at a
    time (one compile per tile shape: the full tile and the partial last row and column)."""

    def __init__(self, weights: str, layers: tuple[str, ...] = LAYERS) -> None:
        import jax
        import jax.numpy as jnp
        import keras

        from worker.engine.model import randomize_kernels

        base = keras.applications.InceptionV3(
            include_top=False, weights=None if weights == "random" else weights
        )
        if weights == "random":
            randomize_kernels(base, 0)
        model = keras.Model(base.input, [base.get_layer(name).output for name in layers])
        trainable = [v.value for v in model.trainable_variables]
        fixed = [v.value for v in model.non_trainable_variables]

        def loss(tile: jax.Array, trainable: list, fixed: list) -> jax.Array:
            outputs, _ = model.stateless_call(trainable, fixed, tile[None], training=False)
            return sum(jnp.mean(a) for a in outputs)

        gradient = jax.jit(jax.grad(loss))
        self.gradient = lambda tile: gradient(tile, trainable, fixed)

    def tile_gradient(self, tile: np.ndarray) -> np.ndarray:
        return np.asarray(self.gradient(tile))


def baseline_timer(
    image: np.ndarray, loop: StraightforwardLoop | None = None
) -> Callable[[int], float]:
    """A function that runs `steps` baseline steps on `image` and returns MP-steps/s."""
    from worker.engine import BACKEND

    if loop is None:
        loop = (StraightforwardJaxLoop if BACKEND == "jax" else StraightforwardLoop)(weights())
    rng = np.random.default_rng(0)
    state = {"dream": loop.step(image.astype(np.float32) / 127.5 - 1, rng)}  # warm-up

    def run(steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            state["dream"] = loop.step(state["dream"], rng)
        return image.shape[0] * image.shape[1] * steps / 1e6 / (time.perf_counter() - started)

    return run


def engine_timer(image: np.ndarray, precision: str) -> Callable[[int], float]:
    """A function that renders `steps` engine steps on `image` and returns MP-steps/s."""
    from worker.engine import load_dream_model

    model = load_dream_model(weights(), LAYERS, precision=precision)
    return lambda steps: engine_rate(image, model, steps)


def engine_rate(image: np.ndarray, model: Any, steps: int) -> float:
    """MP-steps/s of the engine rendering `steps` steps on `image`, one octave at its size."""
    from shared.params import RenderParams
    from worker.engine import render

    params = RenderParams(steps=steps + 1, octaves=1, seed=0, tile_size=TILE, detail=False)
    stamps: list[float] = []

    def progress(p: Any) -> None:
        if p.tiles_done % (p.tiles // p.steps) == 0:  # a step ends
            stamps.append(time.perf_counter())

    render(image, params, model, on_progress=progress)
    # From the end of the first step (tracing, first touches) to the end of the last.
    return image.shape[0] * image.shape[1] * steps / 1e6 / (stamps[-1] - stamps[0])


def time_engine(image: np.ndarray, steps: int, precision: str) -> float:
    return engine_timer(image, precision)(steps)


def scaling_row(image: np.ndarray, precision: str) -> dict[str, float]:
    """Run in a child process: seconds per megapixel-step and peak RSS for one image."""
    rate = time_engine(image, 1, precision)
    return {
        "megapixels": image.shape[0] * image.shape[1] / 1e6,
        "s_per_mp_step": 1 / rate,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def host_row(image: np.ndarray, steps: int = 6) -> dict[str, float]:
    """Run in a child process on JAX: the main thread's CPU milliseconds per megapixel-step, the
    median over a render's steps after the first (each step's span ends when the engine hands
    the step's image on), and the render's wall time per megapixel-step."""
    from shared.params import RenderParams
    from worker.engine import load_dream_model, render

    model = load_dream_model("random", LAYERS, precision="float32")
    params = RenderParams(steps=steps, octaves=1, seed=0, tile_size=TILE, detail=False)
    render(image, params.model_copy(update={"steps": 1}), model)  # traces every shape
    stamps: list[float] = []
    began = time.perf_counter()
    render(image, params, model, on_step=lambda _: stamps.append(time.thread_time()))
    wall = time.perf_counter() - began
    megapixels = image.shape[0] * image.shape[1] / 1e6
    spans = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
    return {
        "megapixels": megapixels,
        "host_ms_per_mp_step": statistics.median(spans) / megapixels * 1e3,
        "wall_ms_per_mp_step": wall / (megapixels * steps) * 1e3,
    }


def child(
    megapixels: float, precision: str, side: int | None = None, host: bool = False
) -> dict[str, float]:
    args = [sys.executable, __file__, "--row", str(megapixels), "--precision", precision]
    if host:
        args += ["--host", "--backend", "jax"]
    if side:
        args += ["--side", str(side)]
    out = subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megapixels", type=float, default=1.0)
    parser.add_argument("--huge", action="store_true", help="also a 16384 x 16384 step")
    parser.add_argument(
        "--no-scaling", action="store_true", help="the comparison only, no scaling table"
    )
    parser.add_argument("--row", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--side", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    parser.add_argument(
        "--host", action="store_true", help="the host's work per MP-step of a JAX render"
    )
    parser.add_argument("--sizes", default="1,4,16", help="--host: megapixels, comma-separated")
    args = parser.parse_args()
    # Before the engine is imported: Keras reads its backend once. Child processes inherit it.
    os.environ["ONEIRO_BACKEND"] = args.backend

    if args.row is not None:
        if args.side:
            image = np.asarray(Image.fromarray(photo(1.0)).resize((args.side, args.side)))
        else:
            image = photo(args.row)
        print(json.dumps(host_row(image) if args.host else scaling_row(image, args.precision)))
        return
    if args.host:
        print(
            f"host work per megapixel-step, JAX, float32, random weights, tile {TILE}, layers "
            f"{'+'.join(LAYERS)}: main-thread CPU time per step, median of a 6-step render's, "
            "fresh process each; target at most 1 ms (1,000 MP-steps/s)"
        )
        header = f"{'host ms':>8} {'wall ms':>8} {'host share':>10} {'MP-steps/s cap':>14}"
        print(f"  {'MP':>6} {header}")
        for size in (float(s) for s in args.sizes.split(",")):
            row = child(size, "float32", host=True)
            host, wall = row["host_ms_per_mp_step"], row["wall_ms_per_mp_step"]
            print(
                f"  {row['megapixels']:6.1f} {host:8.1f} {wall:8.1f} {host / wall:10.1%} "
                f"{1e3 / host:14.0f}"
            )
        return

    from worker.engine.model import best_precision

    print(
        f"backend: {args.backend}; "
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"weights: {'shared InceptionV3 file' if weights() != 'random' else 'random'}; "
        f"auto precision here: {best_precision()}"
    )
    image = photo(args.megapixels)
    megapixels = image.shape[0] * image.shape[1] / 1e6
    print(
        f"\nsame image, {image.shape[1]}x{image.shape[0]} ({megapixels:.2f} MP), tile {TILE}, "
        f"layers {'+'.join(LAYERS)}; {args.rounds} interleaved rounds of {args.steps} steps, "
        "median"
    )
    timers = {"straightforward loop (float32, one tile at a time)": baseline_timer(image)}
    for precision in ("float32", "bfloat16"):
        timers[f"engine, {precision} (folded, batched, sized tiles)"] = engine_timer(
            image, precision
        )
    # Interleaved, so a noisy neighbour on this shared machine slows every contender alike.
    rates: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(args.rounds):
        for name, timer in timers.items():
            rates[name].append(timer(args.steps))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    baseline = next(iter(medians.values()))
    for name, rate in medians.items():
        spread = f"{min(rates[name]):.3f}-{max(rates[name]):.3f}"
        print(f"  {name:52s} {rate:6.3f} MP-steps/s ({spread})  ratio {rate / baseline:4.2f}x")

    if args.no_scaling:
        return
    precision = best_precision()
    print(f"\nscaling, engine ({precision}), one octave, one timed step, fresh process each")
    print(f"  {'MP':>6} {'s per MP-step':>14} {'peak RSS GiB':>13}")
    for size in (1, 4, 16, 64):
        row = child(size, precision)
        print(
            f"  {row['megapixels']:6.1f} {row['s_per_mp_step']:14.3f} {row['peak_rss_gib']:13.2f}"
        )
    if args.huge:
        row = child(0, precision, side=16384)
        print(
            f"  {row['megapixels']:6.1f} {row['s_per_mp_step']:14.3f} "
            f"{row['peak_rss_gib']:13.2f}  (16384 x 16384)"
        )


if __name__ == "__main__":
    main()
