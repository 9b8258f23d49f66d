"""The workers' measured speed, which a job's render estimate is computed at
(shared/serializer.py), read once per THROUGHPUT_TTL_S in each API process."""

from __future__ import annotations

import time

from flask import current_app

from api.db import get_db
from api.metrics import worker_throughput
from shared.serializer import Throughput

# The measured speed changes slowly; one query per API process this often serves every submit
# and poll in between.
THROUGHPUT_TTL_S = 30.0


def measured_throughput() -> Throughput:
    """The mean speed of the workers that finished jobs lately (api.metrics.worker_throughput),
    cached for THROUGHPUT_TTL_S in this app."""
    cache = current_app.extensions.setdefault("oneiro.throughput", {})
    now = time.monotonic()
    if cache.get("until", 0.0) < now:
        rates = worker_throughput(get_db())
        mean = sum(rates.values()) / len(rates) if rates else None
        cache.update(until=now + THROUGHPUT_TTL_S, value=Throughput(mean, len(rates)))
    return cache["value"]
