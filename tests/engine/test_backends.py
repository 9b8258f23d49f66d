"""The engine on both Keras backends: choosing one, the same dream on each, the device policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.settings import SettingsError, load_settings
from tests.utils import CHELSEA, ROOT, oneiro_render
from worker.engine.device import (
    CPU_MAX_BATCH,
    GPU_MAX_BATCH,
    Device,
    best_precision,
    should_compile,
    tiles_per_call,
)

# Mean and largest absolute difference, in 8-bit units, allowed between the two backends' float32
# dreams of the same image, params and seed. The convolutions sum in different orders (oneDNN
# against XLA), and each compiles for the CPU it runs on, so some pixels round the other way:
# measured 0.004 (none off by more than 1) on the machine this test was written on, 0.088 (9% of
# values off, by 3 at most) on an AVX2 AMD EPYC (7 December 2026). The bound is about twice the
# larger; the dream itself moves pixels by about 3 on average.
AGREEMENT_MAD, AGREEMENT_MAX = 0.2, 6


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_both_backends_dream_the_same_and_each_repeats_itself_bit_for_bit(tmp_path: Path) -> None:
    images = {}
    for backend in ("tensorflow", "jax"):
        runs = []
        for run in range(2):
            out = tmp_path / f"{backend}-{run}.png"
            result = oneiro_render(backend, out)
            assert result.returncode == 0, result.stderr[-3000:]
            assert f"float32, {backend}" in result.stderr
            runs.append(pixels(out))
        assert np.array_equal(runs[0], runs[1]), f"{backend} differs from itself run to run"
        images[backend] = runs[0]

    difference = np.abs(images["tensorflow"] - images["jax"])
    with Image.open(CHELSEA) as source:
        cat = np.asarray(source.convert("RGB").resize(images["jax"].shape[1::-1])).astype(int)
    assert difference.mean() <= AGREEMENT_MAD, f"backends differ by {difference.mean():.3f}"
    assert difference.max() <= AGREEMENT_MAX, f"a value differs by {difference.max()}"
    assert np.abs(images["jax"] - cat).mean() > 1.0  # they did dream


def test_an_unknown_backend_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ONEIRO_BACKEND", "torch")
    with pytest.raises(SettingsError, match="ONEIRO_BACKEND"):
        load_settings()
    env = {**os.environ, "ONEIRO_BACKEND": "torch"}
    for start in ("import worker.celery_app", "import worker.engine"):
        result = subprocess.run(
            [sys.executable, "-c", start], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode != 0, start
        assert "ONEIRO_BACKEND" in result.stderr and "jax" in result.stderr, result.stderr
        assert "import keras" not in result.stderr  # stopped before Keras was loaded
    result = oneiro_render("torch", Path(os.devnull))
    assert result.returncode == 2 and "--backend must be one of tensorflow, jax" in result.stderr


def test_the_backend_is_chosen_once_per_process() -> None:
    code = "import keras, worker.engine.backend as b; b.choose_backend('jax')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "ONEIRO_BACKEND": "tensorflow", "KERAS_BACKEND": "tensorflow"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "already imported with the tensorflow backend" in result.stderr


def test_precision_and_compilation_follow_the_device() -> None:
    cpu = Device("cpu", None, None)
    hopper, volta = Device("gpu", (9, 0), 100 << 30), Device("gpu", (7, 0), 16 << 30)

    for backend in ("tensorflow", "jax"):
        assert best_precision(backend, hopper) == "bfloat16"
        assert best_precision(backend, volta) == "float16"
    assert best_precision("tensorflow", cpu) in ("bfloat16", "float32")  # bfloat16 if native
    assert best_precision("jax", cpu) == "float32"
    assert should_compile("jax", cpu) and should_compile("jax", hopper)
    assert should_compile("tensorflow", hopper) and not should_compile("tensorflow", cpu)


def test_tiles_per_call_come_from_free_accelerator_memory() -> None:
    window = (512, 512)
    cpu = Device("cpu", None, None)
    assert tiles_per_call(cpu, window) == 2  # 0.6 MP a call, as before
    assert tiles_per_call(cpu, (75, 75)) == CPU_MAX_BATCH

    small, large = Device("gpu", (8, 0), 4 << 30), Device("gpu", (8, 0), 16 << 30)
    # 4 GiB, half of it planned for, at 1,500 bytes a pixel: 5 tiles of 512 x 512; 21 in 16.
    assert tiles_per_call(small, window) == 5 and tiles_per_call(large, window) == 21
    assert tiles_per_call(Device("gpu", (9, 0), 140 << 30), window) == GPU_MAX_BATCH
    assert tiles_per_call(Device("gpu", (8, 0), 1 << 20), window) == 1
