"""Deterministic kernels on a GPU, so a recipe re-runs to the identical image there too: the
policy, and that the engine asks its backend for them when its device is a GPU. There is no GPU
here: the device is reported as one; that a GPU then renders identically is unverified."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from shared.params import RenderParams
from tests.utils import ROOT, with_settings
from worker.engine import BACKEND, load_dream_model
from worker.engine.backend import JAX_DETERMINISM_FLAG
from worker.engine.device import Device, deterministic
from worker.engine.model import backend_module
from worker.runtime import Runtime, _dream_model

GPU = Device("gpu", (9, 0), 8 * 2**30)
CPU = Device("cpu", None, None)


def test_deterministic_kernels_are_for_a_gpu_that_wants_them() -> None:
    assert deterministic(GPU, wanted=True)
    assert not deterministic(GPU, wanted=False)
    assert not deterministic(CPU, wanted=True)  # a CPU computes as it always did


@pytest.fixture
def asked_for_determinism(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records each time the engine turns TensorFlow's op determinism on (not turned on for
    real: it would hold for the rest of this process)."""
    calls: list[bool] = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism", lambda: calls.append(True))
    return calls


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's op determinism")
@pytest.mark.parametrize(
    ("device", "wanted", "turned_on"),
    [(GPU, True, True), (GPU, False, False), (CPU, True, False)],
)
def test_the_engine_turns_op_determinism_on_for_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
    asked_for_determinism: list[bool],
    device: Device,
    wanted: bool,
    turned_on: bool,
) -> None:
    monkeypatch.setattr(backend_module(), "device", lambda: device)

    model = load_dream_model(
        "random", ["block1_conv1"], model="vgg19", precision="float32", gpu_determinism=wanted
    )

    assert model.device == device
    assert asked_for_determinism == ([True] if turned_on else [])


def jax_flags(**env: str) -> str:
    """XLA_FLAGS after the engine's backend is chosen as JAX, in a fresh process (backend.py
    alone: the engine package would choose its backend, and load Keras, on import)."""
    code = (
        "import importlib.util as u, os; "
        "s = u.spec_from_file_location('backend', 'worker/engine/backend.py'); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); m.choose_backend('jax'); "
        "print(os.environ.get('XLA_FLAGS', ''))"
    )
    unset = ("XLA_FLAGS", "ONEIRO_GPU_DETERMINISM")
    clean = {k: v for k, v in os.environ.items() if k not in unset}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_jax_starts_with_deterministic_gpu_kernels_unless_told_not_to() -> None:
    assert jax_flags() == JAX_DETERMINISM_FLAG
    assert jax_flags(ONEIRO_GPU_DETERMINISM="false") == ""
    # An operator's own flags are kept, their own determinism choice too.
    assert (
        jax_flags(XLA_FLAGS="--xla_dump_to=/tmp/x")
        == f"--xla_dump_to=/tmp/x {JAX_DETERMINISM_FLAG}"
    )
    mine = "--xla_gpu_deterministic_ops=false"
    assert jax_flags(XLA_FLAGS=mine) == mine


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's op determinism")
def test_the_worker_turns_it_on_as_its_setting_says(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, asked_for_determinism: list[bool]
) -> None:
    monkeypatch.setattr(backend_module(), "device", lambda: GPU)
    params = RenderParams(model="vgg19", layers={"block1_pool": 1.0}, seed=1)
    try:
        with_settings(runtime, gpu_determinism=False).dream_model(params)
        assert asked_for_determinism == []
        assert os.environ["ONEIRO_GPU_DETERMINISM"] == "false"  # what JAX would start with

        with_settings(runtime, gpu_determinism=True).dream_model(params)
        assert asked_for_determinism == [True]
    finally:
        _dream_model.cache_clear()  # models of a pretended GPU are no one else's
