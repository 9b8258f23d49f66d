"""One typed settings object, read from the environment."""

from __future__ import annotations

import functools
import typing
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(RuntimeError):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(BaseSettings):
    """Everything a process of Oneiro reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="ONEIRO_", extra="ignore", frozen=True, populate_by_name=True
    )

    data_dir: Path = Field(
        Path("data"),
        description="Local data: the SQLite database, file storage, `make run`'s Redis and beat "
        "schedule.",
    )
    # DATABASE_URL and REDIS_URL are the names every hosting platform uses, so no prefix.
    database_url: str = Field(
        "",
        validation_alias="DATABASE_URL",
        description="The job records; `postgresql+psycopg://…` in production. Unset: "
        "`sqlite:///$ONEIRO_DATA_DIR/oneiro.db`.",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias="REDIS_URL",
        description="The queue, job change notifications and request rates.",
    )
    storage_url: str = Field(
        "",
        description="Inputs, results, previews, checkpoints: a directory, or `s3://bucket/prefix` "
        "(with the usual `AWS_*` variables). Unset: `$ONEIRO_DATA_DIR/storage`.",
    )
    weights: str = Field(
        "imagenet",
        description="The backbone's weights: `imagenet` (downloaded once into the Keras cache), "
        "`random` (seeded noise, for tests) or the path of a weights file.",
    )
    # Whether the ImageNet weights may be downloaded into the Keras cache when missing.
    weights_download: bool = Field(
        True,
        description="Whether missing ImageNet weights may be downloaded into the Keras cache "
        "(`KERAS_HOME`).",
    )
    # Arithmetic of the dream model: auto picks bfloat16 where the CPU has native bfloat16
    # (measured about 2x faster there, see benchmarks/README.md), float32 elsewhere.
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="The model's arithmetic: `auto` (bfloat16 where the hardware has it natively, "
        "float16 on older GPUs, else float32), or one of `float32`, `bfloat16`, `float16`.",
    )
    queue: str = Field(
        "gpu",
        description="The render queue; the maintenance and webhook queues are named after it "
        "(`gpu-maintenance`, `gpu-webhooks`).",
    )
    worker_name: str = Field(
        "",
        description="How a worker names itself (with its pid) in the job rows it claims. Unset: "
        "the host name.",
    )
    max_upload_bytes: int = Field(
        50 * 1024 * 1024, gt=0, description="The largest upload, in bytes; more is a `413`."
    )
    # The most pixels of any image a job holds: the upload, and every octave the engine renders
    # (shared/cost.py), which is what a worker's memory grows with.
    max_pixels: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="The most pixels of an upload (a `413`, read from the header before any pixel "
        "is decoded) and of a job's largest octave (a `422`).",
    )
    # The default admits the largest image whose octaves fit max_pixels at the default params.
    max_work: int = Field(
        64 * 1024 * 1024 * 100 * 5,
        gt=0,
        description="Pixel-steps a job may cost (the pixels of every octave it renders x steps, "
        "x frames); more is a `422`.",
    )
    # Often enough to look smooth, rare enough that a thousand workers do not hammer the database.
    progress_interval: float = Field(
        1.0, ge=0, description="Seconds between progress writes to the job row."
    )
    # Crash safety: a job put back loses at most checkpoint_every steps of work; the relay catches
    # a lost message or a flushed Redis.
    heartbeat_interval: float = Field(
        10.0, gt=0, description="How often, in seconds, a running job proves its worker alive."
    )
    lease_seconds: float = Field(
        120.0, gt=0, description="A running job silent this long is presumed dead and put back."
    )
    max_attempts: int = Field(3, ge=1, description="Claims a job gets in all before it fails.")
    checkpoint_every: int = Field(
        10,
        ge=0,
        description="Steps between saves of the engine's state (also at octave ends): what a job "
        "put back can lose.",
    )
    relay_after: float = Field(
        300.0,
        gt=0,
        description="A dispatched job not picked up this long, whose message is no longer in "
        "Redis, is put back in the backlog.",
    )
    maintenance_interval: float = Field(
        30.0,
        gt=0,
        description="Seconds between maintenance runs (reaper, relay, retention, temporary files).",
    )
    # The Redis visibility timeout is set longer than both time limits, or Redis would hand a
    # running job to a second worker.
    soft_time_limit: float = Field(
        6 * 3600.0,
        gt=0,
        description="A render running longer (seconds) is told to stop, and its job fails saying "
        "so.",
    )
    hard_time_limit: float = Field(
        6 * 3600.0 + 300.0, gt=0, description="A render running longer has its process killed."
    )
    # A submit must not hang because Redis does.
    enqueue_timeout: float = Field(
        3.0,
        gt=0,
        description="How long a submit waits for Redis before leaving the job to the relay.",
    )
    dry_run: bool = Field(
        False,
        description="The worker stores the input as the result, skipping the engine: for "
        "measuring the service around the engine (`benchmarks/service.py`), never for real "
        "renders.",
    )
    auth_cache_seconds: float = Field(
        10.0,
        ge=0,
        description="How long the API trusts a checked key: a revoked key stops working within "
        "this (`0`: check on every request).",
    )
    rate_limit: str = Field(
        "600/minute",
        description="Requests to `/v1` per tenant (a Flask-Limiter rate such as `120/minute`, "
        "counted in Redis); more is a `429`.",
    )
    max_active_jobs: int = Field(
        50,
        ge=1,
        description="Jobs a tenant may have queued or running at once; more is a `429`.",
    )
    preview_interval: float = Field(
        5.0, ge=0, description="Seconds between the JPEG previews of a running render."
    )
    preview_size: int = Field(512, ge=16, description="The longer side of a preview, in pixels.")
    # Webhook targets on private addresses are refused so the service cannot be aimed at its own
    # network. webhook_timeout bounds a whole delivery, not each read: a target that drips bytes
    # cannot hold a worker longer.
    webhook_allow_private: bool = Field(
        False,
        description="Whether webhook targets on loopback, private, link-local or reserved "
        "addresses are allowed.",
    )
    webhook_timeout: float = Field(
        10.0,
        gt=0,
        description="The longest a whole webhook delivery may take (connect, TLS, request, "
        "answer).",
    )
    webhook_max_attempts: int = Field(
        8, ge=1, description="Attempts at delivering one webhook event before it is given up."
    )
    webhook_backoff: float = Field(
        5.0,
        gt=0,
        description="The first wait before a delivery is retried, doubling each time, at most 1 h.",
    )
    webhook_tenant_deliveries: int = Field(
        8,
        ge=1,
        description="The most webhook deliveries of one tenant in flight at once, over all "
        "webhooks workers (each has 32 threads): a tenant's slow receiver holds no more, and "
        "its other events wait their turn.",
    )
    webhook_progress_interval: float = Field(
        10.0, ge=0, description="The least time between two progress webhooks of a job."
    )
    retention_seconds: float = Field(
        30 * 24 * 3600.0,
        gt=0,
        description="Files of jobs that ended longer ago are deleted; the row stays, marked "
        "expired.",
    )
    # `auto` chooses by whether stderr is a terminal (`make run`'s is).
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="Log lines on stderr: json (one object a line, for a collector), text (for "
        "a person), or auto: text where stderr is a terminal, else json.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="The log level of the API and the worker (any case)."
    )
    # The engine raises every octave's shorter side to what the backbone can see, so a
    # thread-thin image renders huge, useless octaves.
    max_aspect_ratio: float = Field(
        20.0,
        ge=1,
        description="An upload's longer side over its shorter may be at most this; more is a "
        "`422`.",
    )
    # A write in progress is far younger.
    temp_file_max_age: float = Field(
        3600.0,
        gt=0,
        description="A storage write's temporary file older than this (seconds) was left by a "
        "killed process; maintenance deletes it.",
    )
    # A Celery broadcast waits up to a second for answers, which several or frequent scrapers
    # would otherwise each pay.
    metrics_cache_seconds: float = Field(
        5.0, ge=0, description="How long `/metrics` reuses its count of online workers."
    )
    # /metrics tells the backlog, the tenants' load and the farm's size: not for every client
    # of the API port.
    metrics_token: str | None = Field(
        None,
        min_length=16,
        description="A bearer token /metrics asks for (Authorization: Bearer TOKEN); unset, "
        "/metrics answers anyone who reaches the API directly (the proxy never serves it).",
    )
    weights_dir: Path | None = Field(
        None,
        description="A directory of weights files, one per backbone, each named as Keras names "
        "its ImageNet file (`shared/catalogue.py`): how a deployment offline gets more backbones "
        "than the one `ONEIRO_WEIGHTS` names.",
    )
    # Event streams wait for change notifications (Redis pub/sub), not on the database; these
    # bound what a lost notification or a revoked key can cost.
    events_reread_seconds: float = Field(
        60.0,
        gt=0,
        description="An event stream re-reads its job at least this often, should a notification "
        "be lost.",
    )
    events_key_recheck_seconds: float = Field(
        30.0,
        gt=0,
        description="An event stream re-checks its key this often, so a revoked key's stream ends "
        "(within this plus `ONEIRO_AUTH_CACHE_SECONDS`).",
    )
    # How gunicorn serves the API (api/gunicorn_conf.py). gevent: each connection is a
    # greenlet, so open event streams and slow clients cost memory, not request threads.
    api_worker_class: Literal["gevent", "gthread"] = Field(
        "gevent",
        description="How gunicorn serves the API: `gevent` (a greenlet a connection) or `gthread` "
        "(threads).",
    )
    api_workers: int = Field(3, ge=1, description="API processes.")
    api_worker_connections: int = Field(
        1000, ge=1, description="Open connections per API process (gevent)."
    )
    api_threads: int = Field(6, ge=1, description="Threads per API process (gthread only).")
    api_keepalive: int = Field(
        5,
        ge=1,
        description="Seconds for a request's line and headers to arrive, and for an idle "
        "keep-alive connection to stay open.",
    )
    api_io_timeout: float = Field(
        30.0,
        gt=0,
        description="A body read or a response write stalled this long (seconds) ends the "
        "connection.",
    )
    api_timeout: int = Field(
        30, ge=1, description="An API process silent this long (seconds) is restarted."
    )
    # Read once when a worker starts, before Keras is imported (Keras cannot change backend
    # afterwards).
    backend: Literal["tensorflow", "jax"] = Field(
        "tensorflow",
        description="The Keras backend the engine computes with: `tensorflow` or `jax` (the `jax` "
        "extra); also `oneiro render --backend`.",
    )
    # GPU reductions and cuDNN's fastest algorithms add in any order.
    gpu_determinism: bool = Field(
        True,
        description="On a GPU, deterministic kernels (TensorFlow's op determinism, XLA's "
        "`--xla_gpu_deterministic_ops`) so a recipe re-runs to the identical image; costs some GPU "
        "speed; no effect on a CPU.",
    )
    # Workers by size: a job goes to the smallest class that holds its peak memory
    # (shared/cost.py) and one no class holds is refused at submit.
    worker_classes: str = Field(
        "",
        description="The farm's worker classes as `name:GiB`, smallest first (`gpu:24,large:80`); "
        "the smallest keeps `ONEIRO_QUEUE`, each larger one gets `<queue>-<name>`. Unset: one "
        "class, the queue as it always was.",
    )
    worker_class: str = Field(
        "",
        description="The class of this worker (a name of `ONEIRO_WORKER_CLASSES`): its queue and "
        "memory. Unset: the smallest.",
    )
    worker_memory_gb: float | None = Field(
        None,
        gt=0,
        description="What this worker holds, in GiB: it fails a job that needs more, saying why; "
        "with no classes, the API refuses jobs over it. Unset: its class's size (with no classes, "
        "unlimited).",
    )
    # Off by default: the URL must be reachable from the clients, which an internal endpoint is
    # not.
    presigned_downloads: bool = Field(
        False,
        description="With S3 storage, `/result` and `/preview` answer a `307` to a presigned URL "
        "instead of streaming the file through the API.",
    )
    presigned_expiry: int = Field(
        300,
        ge=1,
        le=7 * 24 * 3600,
        description="How long, in seconds, a presigned download URL is valid.",
    )
    target_wait_seconds: float = Field(
        600.0,
        gt=0,
        description="The wait `oneiro_workers_wanted` sizes the farm for: the workers that would "
        "render the queued work within this many seconds at the measured throughput.",
    )
    # An upload's header is checked against both, and against max_pixels per frame, before a
    # frame is decoded: a small file can promise hours of 8K frames.
    max_frames: int = Field(
        3000,
        ge=1,
        description="The most frames an animation or video job may render; a video promising "
        "more is a `413`, an animation asking more a `422`.",
    )
    max_video_seconds: float = Field(
        600.0,
        gt=0,
        description="The longest video accepted, in seconds (a `413`, read from its header before "
        "a frame is decoded).",
    )
    # Every job in Redis is out of the fair order, so keep it small.
    dispatch_lookahead: int = Field(
        1,
        ge=0,
        description="Jobs the dispatcher hands Redis beyond the free worker slots, so a worker "
        "that frees its slot finds its next job waiting; the rest of the backlog waits in the "
        "database in fair order.",
    )
    # Neither format compresses a long dream well, and Pillow holds every frame of a WebP in
    # memory while it encodes (300 frames of 640x640 are about 370 MB): longer or larger
    # animations are MP4s.
    max_gif_frames: int = Field(
        300,
        ge=1,
        description="The most frames of an animation asked for as an animated GIF or WebP "
        "(`params.output_format`); more is a `422` (ask for an MP4).",
    )
    max_gif_pixels: int = Field(
        640 * 640,
        ge=1,
        description="The most pixels of each frame of an animated GIF or WebP (after `max_dim`); "
        "more is a `422`.",
    )
    # Resumable uploads (tus, api/uploads.py): inputs too large for one request. The largest
    # upload, what one tenant's unfinished (not yet submitted) uploads may hold together, and
    # how long an upload that nothing is sent to lives before it and its bytes are deleted.
    max_upload_gb: float = Field(
        20.0, gt=0, description="The largest resumable upload, in GB (10^9 bytes)."
    )
    upload_quota_gb: float = Field(
        100.0,
        gt=0,
        description="Per tenant: the GB its unfinished uploads (not yet a job's input) may "
        "hold together; a new upload past it is refused.",
    )
    upload_ttl: float = Field(
        24 * 3600.0,
        gt=0,
        description="Seconds an upload may sit unused (no byte sent, not submitted) before it "
        "expires and maintenance deletes its bytes.",
    )
    # With S3 storage an upload is an S3 multipart upload: each part is at least 5 MiB (S3's
    # minimum, but for the last), and at most this many bytes, spooled to a temporary file.
    upload_part_bytes: int = Field(
        64 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        description="With S3 storage, the largest part of an upload's S3 multipart upload: a "
        "PATCH body is cut into parts of this size, spooled on the API's disk, never in memory.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        # `info` and `INFO` both name a level; Python's logging only knows the second.
        return value.upper() if isinstance(value, str) else value

    @field_validator("worker_classes")
    @classmethod
    def _check_classes(cls, value: str) -> str:
        # Parsed here so a typo stops every process at start-up, naming the variable.
        parse_worker_classes(value)
        return value

    @field_validator("worker_class")
    @classmethod
    def _check_class(cls, value: str, info: ValidationInfo) -> str:
        classes = dict(parse_worker_classes(info.data.get("worker_classes", "")))
        if value and value not in classes:
            known = ", ".join(classes) or "none: ONEIRO_WORKER_CLASSES is empty"
            raise ValueError(f"{value!r} is not a class of ONEIRO_WORKER_CLASSES ({known})")
        return value

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'oneiro.db'}")
        if not self.storage_url:
            object.__setattr__(self, "storage_url", str(self.data_dir / "storage"))
        return self


def parse_worker_classes(text: str) -> list[tuple[str, float]]:
    """ONEIRO_WORKER_CLASSES ("gpu:24,gpu-large:80") as [(name, GiB)], smallest first; []
    when empty. ValueError saying what is wrong otherwise."""
    classes: list[tuple[str, float]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, size = item.partition(":")
        name = name.strip()
        try:
            gib = float(size)
        except ValueError:
            gib = 0.0
        if not name.replace("-", "").replace("_", "").isalnum() or gib <= 0 or gib != gib:
            raise ValueError(f"{item!r} is not name:GiB (such as gpu-large:80)")
        if classes and (name in dict(classes) or gib <= classes[-1][1]):
            raise ValueError("give each class once, smallest first (gpu:24,gpu-large:80)")
        classes.append((name, gib))
    return classes


# The Keras backends the engine runs on, for the engine and the CLI to check against.
BACKENDS: tuple[str, ...] = typing.get_args(Settings.model_fields["backend"].annotation)

_ENV_NAMES = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL"}


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and overrides), naming the variable on error."""
    try:
        # Overrides are checked by Settings itself, which names the variable on error.
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            name = _ENV_NAMES.get(field, f"ONEIRO_{field.upper()}")
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
