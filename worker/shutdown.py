"""A worker asked to stop (SIGTERM: Ctrl-C in `make run`, `docker stop`, a scale-in) hands its
running job back instead of finishing it or leaving it to the lease.

Celery's warm shutdown waits for the running task to end and tells it nothing: a render of
minutes held the worker until its supervisor killed it, and the job then sat 'running' until
the lease ran out. Here the shutdown sets `shutting_down`, which ShouldStop (worker/watchers.py)
reads before every tile batch; the render stops there and worker/jobs.py puts the job back in
the backlog (transitions.hand_back), to resume from its last checkpoint on the next worker.

Where the flag is set: Celery sends `worker_shutting_down` in its main process. With the solo
or threads pool the task runs in that process; with prefork (the default) it runs in a pool
child, which Celery's warm shutdown never signals (billiard's children keep the default SIGTERM
handling, and only a cold shutdown terminates them). So the main process passes it on to its
pool children with SIGUSR2, which each pool child handles by setting its own flag.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any

from billiard.process import active_children
from celery.signals import worker_process_init, worker_shutting_down

log = logging.getLogger(__name__)

# Set in the process that runs the task once its worker is asked to stop.
shutting_down = threading.Event()

# Not one billiard resets in a pool child after its start (billiard/common.py TERMSIGS_DEFAULT),
# nor one Celery uses unasked (SIGUSR1 is the soft time limit's).
HAND_BACK_SIGNAL = signal.SIGUSR2


def _set(_signum: int, _frame: Any) -> None:
    shutting_down.set()


@worker_process_init.connect
def _listen_in_pool_child(**_kwargs: Any) -> None:
    signal.signal(HAND_BACK_SIGNAL, _set)


@worker_shutting_down.connect
def _pass_on(**_kwargs: Any) -> None:
    shutting_down.set()  # the solo and threads pools run the task in this process
    for child in active_children():
        # Only the pool's processes: an embedded beat (`--beat`) would die of the signal.
        if "PoolWorker" in (child.name or "") and child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, HAND_BACK_SIGNAL)
