"""The worker's Celery app: `celery -A worker.celery_app worker`."""

from shared.queue import create_celery
from shared.settings import get_settings

app = create_celery(get_settings())
app.conf.include = ["worker.tasks"]
