"""What a worker process holds for its lifetime: settings, database, storage, dream models."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from shared.db import create_db_engine, create_session_factory
from shared.download_failures import forget_download_failure, record_download_failure
from shared.params import RenderParams
from shared.queue import create_celery
from shared.settings import Settings, get_settings
from shared.storage import Storage, open_storage
from shared.weights import require_weights

if TYPE_CHECKING:
    from worker.engine import DreamModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    name: str

    def dream_model(self, params: RenderParams) -> DreamModel:
        """The dream model for a job's params, built once per process (loading takes seconds)."""
        channels = params.channels or {}
        # What the engine reads on import: these settings' backend, even when they were given.
        os.environ["ONEIRO_BACKEND"] = self.settings.backend
        # And whether JAX starts with deterministic GPU kernels (worker/engine/backend.py).
        os.environ["ONEIRO_GPU_DETERMINISM"] = str(self.settings.gpu_determinism).lower()
        from worker.engine import DownloadFailed

        source = require_weights(self.settings, params.model)
        try:
            model = _dream_model(
                params.model,
                tuple(params.layers.items()),
                tuple((name, tuple(indices)) for name, indices in channels.items()),
                source,
                self.settings.weights_download,
                self.settings.precision,
                self.settings.gpu_determinism,
            )
        except DownloadFailed as exc:
            # So that the API refuses the next jobs at submit, naming the fix, instead of
            # accepting each to fail here (shared/weights.py download_failures).
            record_download_failure(self.settings, params.model, exc.reason)
            raise
        if source == "imagenet":
            forget_download_failure(self.settings, params.model)
        return model

    def mask_model(self, params: RenderParams) -> DreamModel | None:
        """The dream model of the part a job's mask keeps out, if params.mask_layers names one."""
        if not params.mask_layers:
            return None
        return self.dream_model(
            params.model_copy(update={"layers": params.mask_layers, "channels": None})
        )

    def celery(self) -> Celery:
        """A Celery app to send messages with (webhook events), one per settings."""
        return _celery(self.settings)


@functools.lru_cache(maxsize=8)
def _celery(settings: Settings) -> Celery:
    return create_celery(settings)


# The webhooks worker runs its tasks on threads: the first few, arriving together, must share
# one runtime (one engine and its pool of connections), not make one each.
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime, made on first use: after the fork, never before it."""
    with _runtime_lock:
        return _make_runtime()


@functools.cache
def _make_runtime() -> Runtime:
    settings = get_settings()
    return Runtime(
        settings=settings,
        sessions=create_session_factory(create_db_engine(settings.database_url)),
        storage=open_storage(settings.storage_url),
        name=f"{settings.worker_name or socket.gethostname()}:{os.getpid()}",
    )


@functools.lru_cache(maxsize=4)
def _dream_model(
    model: str,
    layers: tuple[tuple[str, float], ...],
    channels: tuple[tuple[str, tuple[int, ...]], ...],
    weights: str,
    allow_download: bool,
    precision: str,
    gpu_determinism: bool = True,
) -> DreamModel:
    # Keras is imported here, in the process that renders, never in Celery's parent; the engine
    # sets its backend from ONEIRO_BACKEND on import.
    from worker.engine import load_dream_model

    loaded = load_dream_model(
        weights,
        dict(layers),
        model=model,
        channels=dict(channels),
        precision=precision,
        allow_download=allow_download,
        gpu_determinism=gpu_determinism,
    )
    # Which backend, device and precision a worker really computes with: `auto` decides here.
    log.info(
        "dream model %s loaded: %s backend, %s, %s",
        model,
        loaded.backend,
        loaded.device.kind,
        loaded.precision,
    )
    return loaded
