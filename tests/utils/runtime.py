"""The worker's Runtime in process: variants of the `runtime` fixture, hooks into its render."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from worker.runtime import Runtime


def with_settings(runtime: Runtime, **changes: Any) -> Runtime:
    """`runtime` with these settings changed (the Runtime itself is frozen)."""
    return dataclasses.replace(runtime, settings=runtime.settings.model_copy(update=changes))


def before_each_gradient(monkeypatch: pytest.MonkeyPatch, hook: Any) -> None:
    """Run `hook(n)` before the worker's n-th gradient call (n counts from 1)."""
    original = Runtime.dream_model
    calls = []

    def wrapped(self: Runtime, params: Any) -> Any:
        model = original(self, params)

        def gradient(tiles: Any) -> Any:
            calls.append(1)
            hook(len(calls))
            return model.gradient(tiles)

        return dataclasses.replace(model, gradient=gradient)

    monkeypatch.setattr(Runtime, "dream_model", wrapped)


def maintenance_tasks(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> Any:
    """worker.tasks, its tasks (maintenance among them) running on `runtime`."""
    from worker import tasks

    monkeypatch.setattr(tasks, "get_runtime", lambda: runtime)
    return tasks


def engine_progress(fraction: float = 0.5, eta_seconds: float | None = 1.0) -> Any:
    """What the engine reports (worker.engine.Progress), without importing TensorFlow."""
    return SimpleNamespace(
        fraction=fraction,
        octave=1,
        octaves=2,
        step=3,
        steps=8,
        tiles_done=5,
        tiles=6,
        eta_seconds=eta_seconds,
        loss=0.1,
    )
