"""How the peak memory a job is sent by (shared/cost.py peak_memory_bytes) compares with the peak
RSS of real renders on this machine's CPU, random weights, one step.

Each render runs in a fresh process, so its peak RSS (ru_maxrss) is its own: the runtime, the
model, and the render. The estimate is taken with the CPU's tiles per call (a GPU worker's
estimate counts one tile, the least it can do with), so the two count the same batches.

    .venv/bin/python benchmarks/peak_memory.py

Prints, per case, the estimate, the measured peak and their ratio (estimate / measured); the
estimate is meant to be an upper bound (ratio >= 1) that is not wildly above (<= 2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (width, height, params): small, a megapixel, a tiled 3 MP render of two octaves, another
# backbone, and 16.8 MP, where the image's own bytes outweigh the runtime's.
CASES = [
    (64, 64, {"octaves": 1}),
    (1024, 1024, {"octaves": 1}),
    (2048, 1536, {"octaves": 2, "tile_size": 256}),
    (1024, 768, {"octaves": 1, "model": "vgg19"}),
    (4096, 4096, {"octaves": 1, "grad_norm": "laplacian", "tv_weight": 1.0}),
]

CHILD = """
import json, resource, sys
import numpy as np
from shared.catalogue import BACKBONES
from shared.params import RenderParams
from worker.engine import load_dream_model, render
width, height, params = json.loads(sys.argv[1])
params = RenderParams(steps=1, seed=1, **params)
layers = params.layers or BACKBONES[params.model].default_layers
model = load_dream_model("random", layers, model=params.model, allow_download=False)
image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
render(image, params, model)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def measured_peak(width: int, height: int, params: dict[str, object]) -> int:
    """Peak RSS in bytes of a fresh process rendering one step of the case."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([width, height, params])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


def estimated_peak(width: int, height: int, params: dict[str, object]) -> int:
    """peak_memory_bytes with the tiles per call the engine uses on a CPU."""
    from shared.cost import largest_window, peak_memory_bytes
    from shared.params import RenderParams
    from worker.engine.device import Device, tiles_per_call

    render = RenderParams(steps=1, seed=1, **params)  # type: ignore[arg-type]
    batch = tiles_per_call(Device("cpu", None, None), largest_window(width, height, render))
    return peak_memory_bytes(width, height, render, tiles_per_call=batch)


def main() -> None:
    print(f"{'case':<42} {'estimate':>10} {'measured':>10} {'ratio':>6}")
    for width, height, params in CASES:
        estimate, measured = (
            estimated_peak(width, height, params),
            measured_peak(width, height, params),
        )
        case = f"{width}x{height} {json.dumps(params)}"
        print(
            f"{case:<42} {estimate / 2**20:>8.0f}Mi {measured / 2**20:>8.0f}Mi "
            f"{estimate / measured:>6.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
