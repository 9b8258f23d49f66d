"""The worker's Celery app: `celery -A worker.celery_app worker`."""

from typing import Any

from celery.signals import setup_logging

from shared.logs import configure_logging
from shared.queue import create_celery
from shared.settings import get_settings

app = create_celery(get_settings())
app.conf.include = ["worker.tasks", "worker.slots", "worker.shutdown"]


@setup_logging.connect
def _configure_logging(**_kwargs: Any) -> None:
    """Oneiro's log format for the worker (and the pool children it forks)."""
    # With a receiver here Celery installs none of its own handlers and leaves stdout and stderr
    # unredirected (celery/app/log.py, Logging.setup), so every record, Celery's own included,
    # reaches this one handler. The level is ONEIRO_LOG_LEVEL, not `--loglevel`.
    configure_logging(get_settings())
