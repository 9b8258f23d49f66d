"""Helpers the tests share; a test module imports them from here, never from another test module.

- `paths`: the repository root, the test images and the browser (`chromium_path`).
- `data`: small plain functions that make test data (images, tenants and keys, jobs).
- `client`: calling the API in process (submit, assert_problem, ...).
- `db`: a PostgreSQL database of a test's own, Alembic pointed at a database.
- `queue`: what waits in a test's Redis queues, and removing them.
- `runtime`: the worker's Runtime in process (the `runtime` fixture is in conftest).
- `processes`: the one way to start a Celery worker, the API under gunicorn, a redis-server.
- `stack`: migrations, API and worker together, for tests that act as a client.
- `tcpproxy`: a TCP link that can be cut and restored.
- `wait`: polling until something happens.
- `video`: short synthetic clips (moving shapes and a tone).
"""

from tests.utils.client import assert_problem, authed_client, submit, submit_with_key
from tests.utils.data import (
    TEST_TENANT,
    image_bytes,
    make_job,
    measured_worker,
    new_key,
    stored_files,
    tenant_named,
)
from tests.utils.db import POSTGRES_ADMIN_URL, alembic_config, postgres_database, running_on_ci
from tests.utils.paths import CHELSEA, DATA, ROOT, chromium_path
from tests.utils.processes import (
    GUNICORN_LISTENING,
    WERKZEUG_LISTENING,
    backends_on_jax,
    free_port,
    http_answers,
    kill_process,
    listening_port,
    oneiro_render,
    process_env,
    redis_on_free_port,
    running_worker,
    serving_api,
    start_worker,
    stop_process,
)
from tests.utils.queue import drop_queues, queued_job_ids, webhook_statuses
from tests.utils.runtime import (
    before_each_gradient,
    engine_progress,
    maintenance_tasks,
    with_settings,
)
from tests.utils.stack import Stack, running_stack
from tests.utils.tcpproxy import Proxy
from tests.utils.video import clip_bytes, write_padded_clip
from tests.utils.wait import wait_for

__all__ = [
    "CHELSEA",
    "DATA",
    "GUNICORN_LISTENING",
    "POSTGRES_ADMIN_URL",
    "ROOT",
    "TEST_TENANT",
    "WERKZEUG_LISTENING",
    "Proxy",
    "Stack",
    "alembic_config",
    "assert_problem",
    "authed_client",
    "before_each_gradient",
    "chromium_path",
    "clip_bytes",
    "drop_queues",
    "engine_progress",
    "free_port",
    "http_answers",
    "image_bytes",
    "kill_process",
    "listening_port",
    "maintenance_tasks",
    "make_job",
    "measured_worker",
    "new_key",
    "backends_on_jax",
    "oneiro_render",
    "postgres_database",
    "process_env",
    "queued_job_ids",
    "redis_on_free_port",
    "running_on_ci",
    "running_stack",
    "running_worker",
    "serving_api",
    "start_worker",
    "stop_process",
    "stored_files",
    "submit",
    "submit_with_key",
    "tenant_named",
    "wait_for",
    "webhook_statuses",
    "with_settings",
    "write_padded_clip",
]
