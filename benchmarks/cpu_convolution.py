"""One convolution's gradient on this CPU: TensorFlow (oneDNN) against JAX (XLA), per precision.

    .venv/bin/python benchmarks/cpu_convolution.py            # 2 rounds, interleaved
    .venv/bin/python benchmarks/cpu_convolution.py --rounds 3

A 3x3 convolution, 2 x 128 x 128 x 192 to 192 channels, then ReLU, differentiated with respect
to its input as the engine does (the forward and one backward convolution), compiled
(`tf.function`, `jax.jit`), GFLOP/s of the best of 5 calls. Each contender runs in a fresh
process (XLA reads its flags once); the ratio is against TensorFlow float32 of the same round.
It isolates what the engine cannot change: the convolution kernels
each backend brings (benchmarks/README.md, "Why JAX trails TensorFlow on this CPU").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

SHAPE, KERNEL = (2, 128, 128, 192), (3, 3, 192, 192)
FLOPS = 2 * np.prod(SHAPE) * np.prod(KERNEL[:3]) * 2  # forward, and backward to the input
CONTENDERS = {
    "tensorflow": "",
    "jax (XLA default)": "",
    "jax (YNNPACK off)": "--xla_cpu_experimental_ynn_fusion_type=",
}


def measure(backend: str, precision: str) -> float:
    """GFLOP/s of the convolution's gradient on `backend` in this process."""
    rng = np.random.default_rng(0)
    x, w = rng.random(SHAPE), rng.random(KERNEL) * 0.01
    if backend == "tensorflow":
        import tensorflow as tf

        x, w = tf.constant(x, precision), tf.constant(w, precision)

        @tf.function
        def gradient(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"))
                loss = tf.reduce_sum(tf.cast(y, tf.float32))
            return tape.gradient(loss, x)

        def call() -> None:
            gradient(x, w).numpy()
    else:
        import jax
        import jax.numpy as jnp

        x, w = jnp.asarray(x, precision), jnp.asarray(w, precision)

        def loss(x: jax.Array, w: jax.Array) -> jax.Array:
            dims = ("NHWC", "HWIO", "NHWC")
            y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
            return jnp.sum(jax.nn.relu(y).astype(jnp.float32))

        step = jax.jit(jax.grad(loss))

        def call() -> None:
            step(x, w).block_until_ready()

    call()  # compile
    times = []
    for _ in range(5):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return FLOPS / min(times) / 1e9


def child(name: str, precision: str) -> float:
    env = {**os.environ, "XLA_FLAGS": CONTENDERS[name], "TF_CPP_MIN_LOG_LEVEL": "3"}
    backend = name.split()[0]
    out = subprocess.run(
        [sys.executable, __file__, "--run", backend, precision],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(measure(*args.run))
        return
    print(f"load average {os.getloadavg()[0]:.1f}; GFLOP/s, best of 5 calls; ratio to TF float32")
    for round_ in range(1, args.rounds + 1):
        baseline = child("tensorflow", "float32")
        for precision in ("float32", "bfloat16"):
            for name in CONTENDERS:
                rate = baseline if (name, precision) == ("tensorflow", "float32") else None
                rate = rate or child(name, precision)
                ratio = rate / baseline
                print(f"  round {round_}  {name:20s} {precision:9s} {rate:7.1f}  {ratio:5.2f}x")


if __name__ == "__main__":
    main()
