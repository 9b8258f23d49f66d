"""A render worker's announcement of its slot, which the dispatcher counts (shared/dispatch.py).

Each pool process that consumes the render queue is one slot: it says so in Redis every
heartbeat_interval, with a TTL of a few intervals, so a worker that dies without a word (kill -9,
a lost machine) stops counting within that TTL. The maintenance and webhook workers consume
other queues and announce nothing. A thread pool (`--pool threads`) runs no process hooks and
announces nothing: run render workers as prefork or solo.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from shared.dispatch import announce_slot, safely_dispatch, withdraw_slot
from shared.queue import worker_queue
from worker.runtime import get_runtime

log = logging.getLogger(__name__)

_stop = threading.Event()


def _serves_render_queue(sender_app: Any, queue: str) -> bool:
    consumed = sender_app.amqp.queues.consume_from
    return queue in consumed if consumed else True


def _announce_forever() -> None:
    runtime = get_runtime()
    while not _stop.is_set():
        try:
            if announce_slot(runtime.settings, runtime.name):
                # A slot Redis did not know of (this process's first, or after Redis lost
                # everything): give it a job without waiting for the next trigger.
                with runtime.sessions() as session:
                    safely_dispatch(session, runtime.celery(), runtime.settings)
        except Exception:  # Redis away for a moment; the TTL allows a missed beat
            log.warning("slot announcement failed", exc_info=True)
        _stop.wait(runtime.settings.heartbeat_interval)


@worker_process_init.connect
def _start_announcing(**_kwargs: Any) -> None:
    from worker.celery_app import app

    # A worker of a larger class consumes its class's queue (shared/queue.py worker_queue).
    if not _serves_render_queue(app, worker_queue(get_runtime().settings)):
        return
    threading.Thread(target=_announce_forever, name="slot-announcer", daemon=True).start()


@worker_process_shutdown.connect
def _stop_announcing(**_kwargs: Any) -> None:
    _stop.set()
    with contextlib.suppress(Exception):
        runtime = get_runtime()
        withdraw_slot(runtime.settings, runtime.name)
