"""gunicorn settings that are Python, not flags: `gunicorn --config python:api.gunicorn_conf`."""

from __future__ import annotations

import gc
from typing import Any


def post_worker_init(_worker: Any) -> None:
    """Move what the app made at start-up out of the garbage collector's sight.

    Each full collection otherwise walks every long-lived object (SQLAlchemy, pydantic and
    OpenAPI models): a pause of tens of milliseconds in the middle of requests.
    """
    gc.freeze()
