"""Which Keras backend the engine runs on: chosen once per process, before Keras is imported.

Keras reads KERAS_BACKEND when it is first imported and cannot change it afterwards, so this
module imports no Keras; `worker/engine/__init__.py` calls `choose_backend` before anything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from shared.settings import BACKENDS

VARIABLE = "ONEIRO_BACKEND"

# What a JAX worker wants, set only where unset so that an operator's own values win. Memory:
# what a worker wants from a GPU it owns alone (one worker process per GPU): JAX preallocates a
# pool, so the pool may take most of the card (its default 75% leaves a quarter unused); with
# preallocation, the pool's free bytes are what a tile batch can use.
JAX_DEFAULTS = {
    "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.90",
    # Every distinct shape is an XLA compile: a model's random initialization alone is some 55
    # of them (over a minute on a busy 2-core CPU), each tile shape's gradient one more. JAX's
    # on-disk cache makes them once per machine instead of once per process.
    "JAX_COMPILATION_CACHE_DIR": str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "oneiro" / "jax"
    ),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
}


# Deterministic GPU kernels for JAX (worker/engine/device.deterministic): XLA reads its flags
# once, when JAX first starts a backend, which finding the device already does; so the flag is
# set with the backend, where ONEIRO_GPU_DETERMINISM is not false. A CPU ignores it.
DETERMINISM_VARIABLE = "ONEIRO_GPU_DETERMINISM"
JAX_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


class BackendError(RuntimeError):
    """The backend asked for is unknown or cannot be had in this process."""


def choose_backend(name: str | None = None) -> str:
    """Set Keras's backend to `name` (default: $ONEIRO_BACKEND, else tensorflow); return it.

    Raises BackendError, naming ONEIRO_BACKEND, for an unknown name or when Keras is already
    loaded with another backend.
    """
    chosen = (name if name is not None else os.environ.get(VARIABLE, "") or "tensorflow").strip()
    if chosen not in BACKENDS:
        raise BackendError(f"{VARIABLE} must be one of {', '.join(BACKENDS)}, not {chosen!r}")
    keras = sys.modules.get("keras")
    if keras is not None:
        loaded = keras.backend.backend()
        if loaded != chosen:
            raise BackendError(
                f"{VARIABLE}={chosen} but Keras was already imported with the {loaded} backend "
                "in this process; choose the backend before importing Keras"
            )
        return chosen
    os.environ[VARIABLE] = chosen
    os.environ["KERAS_BACKEND"] = chosen
    if chosen == "jax":
        for key, value in JAX_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if gpu_determinism_wanted():
            flags = os.environ.get("XLA_FLAGS", "")
            if "xla_gpu_deterministic_ops" not in flags:  # an operator's own value wins
                os.environ["XLA_FLAGS"] = f"{flags} {JAX_DETERMINISM_FLAG}".strip()
    return chosen


def gpu_determinism_wanted() -> bool:
    """ONEIRO_GPU_DETERMINISM as the engine reads it on import (the settings' value, which the
    worker sets before it imports the engine): anything but a false value means yes."""
    value = os.environ.get(DETERMINISM_VARIABLE, "true").strip().lower()
    return value not in ("0", "false", "no", "off")
