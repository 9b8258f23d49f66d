"""What an attempt writes and records besides its state: its files, each fenced on the
attempt (a worker that lost its job writes nothing more), its preview, and its recipe. Shared
by the still's runner (worker/jobs.py) and the frame loop's (worker/frames.py)."""

from __future__ import annotations

import logging
from typing import Any

from shared.params import RenderParams
from shared.recipes import device_name, make_recipe, weights_digest
from shared.storage import StorageError, preview_key
from shared.transitions import LostJob
from shared.weights import require_weights
from worker.runtime import Runtime
from worker.watchers import ShouldStop

log = logging.getLogger(__name__)


def render_recipe(
    runtime: Runtime,
    params: RenderParams,
    model: Any,
    guide: bytes | None = None,
    mask: bytes | None = None,
) -> dict[str, Any]:
    """What made this render: its params, the weights, backend and precision it ran on
    (`model`, the engine's; None on a dry run, which ran no engine), its guide and mask."""
    settings = runtime.settings
    if model is None:
        backend, precision, device = settings.backend, settings.precision, None
    else:
        backend, precision, device = model.backend, model.precision, device_name(model.device)
    return make_recipe(
        params.model_dump(mode="json"),
        weights=weights_of(runtime, params),
        backend=backend,
        precision=precision,
        device=device,
        guide=guide,
        mask=mask,
    )


def weights_of(runtime: Runtime, params: RenderParams) -> str:
    """The digest of the weights this worker dreams `params.model` with."""
    return weights_digest(require_weights(runtime.settings, params.model))


def put_fenced(runtime: Runtime, should_stop: ShouldStop, key: str, data: bytes) -> None:
    """Store one of this attempt's files, unless the job is no longer this attempt's.

    The attempt in the key already keeps a lost worker off a newer attempt's files; the check
    keeps it from writing files no one will read.
    """
    if should_stop():
        raise LostJob(
            f"job {should_stop.job_id} attempt {should_stop.attempt} lost; {key} not written"
        )
    runtime.storage.put(key, data)


def put_preview(runtime: Runtime, should_stop: ShouldStop, jpeg: bytes) -> None:
    """Store the attempt's preview, fenced as every file; a preview that cannot be written is
    logged and skipped (the render matters, not its preview)."""
    try:
        key = preview_key(should_stop.job_id, should_stop.attempt)
        put_fenced(runtime, should_stop, key, jpeg)
    except StorageError:
        log.warning("job %s: preview not written", should_stop.job_id, exc_info=True)
