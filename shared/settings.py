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

    data_dir: Path = Path("data")
    # DATABASE_URL and REDIS_URL are the names every hosting platform uses, so no prefix.
    database_url: str = Field("", validation_alias="DATABASE_URL")
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    storage_url: str = ""
    weights: str = "imagenet"
    # Whether the ImageNet weights may be downloaded into the Keras cache when missing.
    weights_download: bool = True
    # Arithmetic of the dream model: auto picks bfloat16 where the CPU has native bfloat16
    # (measured about 2x faster there, see benchmarks/README.md), float32 elsewhere.
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    queue: str = "gpu"
    # How this worker names itself in job rows (with its pid); the host name when empty.
    worker_name: str = ""
    max_upload_bytes: int = Field(50 * 1024 * 1024, gt=0)
    # The most pixels of any image a job holds: the upload, and every octave the engine renders
    # (shared/cost.py), which is what a worker's memory grows with.
    max_pixels: int = Field(64 * 1024 * 1024, gt=0)
    # Pixel-steps, the pixels of every octave rendered x steps: what a job may cost. The
    # default admits the largest image whose octaves fit max_pixels at the default params.
    max_work: int = Field(64 * 1024 * 1024 * 100 * 5, gt=0)
    # Seconds between progress writes to the job row: often enough to look smooth, rare enough
    # that a thousand workers do not hammer the database.
    progress_interval: float = Field(1.0, ge=0)
    # Crash safety. A running job proves it is alive every heartbeat_interval seconds; one silent
    # for lease_seconds is presumed dead and put back (up to max_attempts claims in all). The
    # engine's state is saved every checkpoint_every steps and at octave ends, so a job put back
    # loses at most that much work. Queued jobs not picked up after relay_after seconds are sent
    # to Redis again (a lost message, a flushed Redis); maintenance runs every
    # maintenance_interval seconds.
    heartbeat_interval: float = Field(10.0, gt=0)
    lease_seconds: float = Field(120.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    checkpoint_every: int = Field(10, ge=0)
    relay_after: float = Field(300.0, gt=0)
    maintenance_interval: float = Field(30.0, gt=0)
    # The longest a render may run. Past the soft limit the task is told to stop (and the job
    # fails with a message); past the hard limit its process is killed. The Redis visibility
    # timeout is set longer than both, or Redis would hand a running job to a second worker.
    soft_time_limit: float = Field(6 * 3600.0, gt=0)
    hard_time_limit: float = Field(6 * 3600.0 + 300.0, gt=0)
    # How long the API waits for Redis when enqueueing before it gives up and leaves the job to
    # the relay; a submit must not hang because Redis does.
    enqueue_timeout: float = Field(3.0, gt=0)
    # The worker skips the engine and stores the input as the result: for measuring the service
    # around the engine (benchmarks/service.py), never for real renders.
    dry_run: bool = False
    # How long the API trusts a key it has checked before checking it again: a revoked key
    # stops working within this many seconds (0: check on every request).
    auth_cache_seconds: float = Field(10.0, ge=0)
    # Per tenant: requests to /v1 (a Flask-Limiter rate such as "120/minute", counted in Redis)
    # and jobs queued or running at once.
    rate_limit: str = "600/minute"
    max_active_jobs: int = Field(50, ge=1)
    # How often a worker writes the small JPEG preview of a running render, and its longest side.
    preview_interval: float = Field(5.0, ge=0)
    preview_size: int = Field(512, ge=16)
    # Webhooks: targets on loopback, private or link-local addresses are refused unless allowed
    # (so the service cannot be aimed at its own network); failed deliveries are retried with
    # back-off up to webhook_max_attempts; progress events go out at most every
    # webhook_progress_interval seconds. webhook_timeout bounds a whole delivery (connect, TLS,
    # request, answer), not each read: a target that drips bytes cannot hold a worker longer.
    webhook_allow_private: bool = False
    webhook_timeout: float = Field(10.0, gt=0)
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_backoff: float = Field(5.0, gt=0)
    webhook_progress_interval: float = Field(10.0, ge=0)
    # Files of jobs that ended longer ago than this are deleted; the row stays, marked expired.
    retention_seconds: float = Field(30 * 24 * 3600.0, gt=0)
    # Logs go to stderr, one JSON object per line for a log collector, or plain text for a
    # person at a terminal.
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # The longer side of an upload over its shorter: the engine raises every octave's shorter
    # side to what the backbone can see, so a thread-thin image renders huge, useless octaves.
    max_aspect_ratio: float = Field(20.0, ge=1)
    # A temporary file of a storage write older than this was left by a process killed
    # mid-write (a write in progress is far younger); maintenance deletes it.
    temp_file_max_age: float = Field(3600.0, gt=0)
    # How long /metrics reuses its count of online workers: a Celery broadcast that waits up to a
    # second for answers, which several or frequent scrapers would otherwise each pay.
    metrics_cache_seconds: float = Field(5.0, ge=0)
    # /metrics tells the backlog, the tenants' load and the farm's size: not for every client
    # of the API port.
    metrics_token: str | None = Field(
        None,
        min_length=16,
        description="A bearer token /metrics asks for (Authorization: Bearer TOKEN); unset, "
        "/metrics answers anyone who reaches the API directly (the proxy never serves it).",
    )
    # A directory of weights files, one per backbone, each named as Keras names its ImageNet
    # file (shared/catalogue.py `weights_file`): how a deployment offline gets more backbones
    # than the one ONEIRO_WEIGHTS names.
    weights_dir: Path | None = None
    # Event streams wait for change notifications (Redis pub/sub), not on the database. A
    # stream still re-reads its job at least every events_reread_seconds, so a lost
    # notification delays an event by at most that much, and re-checks its key every
    # events_key_recheck_seconds, so a revoked key's stream ends within that long (plus
    # auth_cache_seconds).
    events_reread_seconds: float = Field(60.0, gt=0)
    events_key_recheck_seconds: float = Field(30.0, gt=0)
    # How gunicorn serves the API (api/gunicorn_conf.py). gevent: each connection is a
    # greenlet, so open event streams and slow clients cost memory, not request threads;
    # api_worker_connections bounds them per process (gthread: api_threads per process).
    # A request's line and headers must arrive within api_keepalive seconds (also the idle
    # time allowed between keep-alive requests); a body read or a response write that stalls
    # for api_io_timeout seconds ends the connection; a process silent for api_timeout seconds
    # is restarted.
    api_worker_class: Literal["gevent", "gthread"] = "gevent"
    api_workers: int = Field(3, ge=1)
    api_worker_connections: int = Field(1000, ge=1)
    api_threads: int = Field(6, ge=1)
    api_keepalive: int = Field(5, ge=1)
    api_io_timeout: float = Field(30.0, gt=0)
    api_timeout: int = Field(30, ge=1)
    # The Keras backend the engine computes with: TensorFlow, or JAX (the `jax` extra). Read once
    # when a worker starts, before Keras is imported (Keras cannot change backend afterwards).
    backend: Literal["tensorflow", "jax"] = "tensorflow"
    # On a GPU, deterministic kernels, so that a recipe rendered again on the same kind of machine
    # gives the identical image (GPU reductions and cuDNN's fastest algorithms add in any order).
    # Costs some GPU speed; a CPU computes as it always did whatever this says.
    gpu_determinism: bool = True
    # Workers by size. The farm as the API and the relay see it: worker classes as
    # "name:GiB,name:GiB", smallest first, each served on its own queue `<queue>-<name>`; a job
    # goes to the smallest class that holds its peak memory (shared/cost.py) and one no class
    # holds is refused at submit. Empty: one class, the queue as it always was, holding
    # worker_memory_gb (unlimited when unset). A worker names its class with worker_class and
    # what it holds with worker_memory_gb (the class's size when unset).
    worker_classes: str = ""
    worker_class: str = ""
    worker_memory_gb: float | None = Field(None, gt=0)
    # With S3 storage, /result and /preview answer a redirect to a presigned URL valid this many
    # seconds instead of streaming the file through the API (off by default: the URL must be
    # reachable from the clients, which an internal endpoint is not).
    presigned_downloads: bool = False
    presigned_expiry: int = Field(300, ge=1, le=7 * 24 * 3600)
    # The wait /metrics sizes the farm for: `oneiro_workers_wanted` is the workers that would
    # render the queued work within this many seconds at the measured throughput.
    target_wait_seconds: float = Field(600.0, gt=0)
    # Animation and video jobs: the most frames one may render, and the longest video accepted
    # (in seconds). An upload's header is checked against both, and against max_pixels per
    # frame, before a frame is decoded: a small file can promise hours of 8K frames.
    max_frames: int = Field(3000, ge=1)
    max_video_seconds: float = Field(600.0, gt=0)
    # Jobs the dispatcher hands Redis beyond the free worker slots (shared/dispatch.py): a
    # worker that frees its slot finds its next job waiting, without a dispatch's round trip.
    # Every job in Redis is out of the fair order, so keep it small.
    dispatch_lookahead: int = Field(1, ge=0)
    # A zoom animation asked for as an animated GIF or WebP: the most frames, and pixels a frame.
    # Neither format compresses a long dream well, and Pillow holds every frame of a WebP in
    # memory while it encodes (300 frames of 640x640 are about 370 MB): longer or larger
    # animations are MP4s.
    max_gif_frames: int = Field(300, ge=1)
    max_gif_pixels: int = Field(640 * 640, ge=1)

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
