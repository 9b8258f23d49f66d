"""docker-compose.yml cannot run here (no Docker engine): its promises are checked by reading."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.launcher import WEBHOOK_THREADS, api_command, maintenance_command, webhooks_command
from shared.queue import MAINTAIN_TASK, WEBHOOK_TASK
from shared.settings import load_settings
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROJECT_SERVICES = ["migrate", "api", "worker", "beat", "webhooks", "flower"]


def service(name: str) -> dict[str, Any]:
    return COMPOSE["services"][name]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_project_commands_exist(name: str) -> None:
    command = service(name)["command"]
    executable = Path(sys.executable).parent / command[0]
    assert executable.exists() or shutil.which(command[0]), f"{command[0]} is not installed"
    if command[0] == "gunicorn":
        module, factory = command[-1].removesuffix("()").split(":")
        assert callable(getattr(importlib.import_module(module), factory))
        # The same gunicorn settings module as `make run` (gc.freeze after start-up).
        config = command[command.index("--config") + 1]
        assert config == api_command("x")[api_command("x").index("--config") + 1]
        assert callable(importlib.import_module(config.removeprefix("python:")).post_worker_init)
    if command[0] == "celery" and command[3] == "flower":
        assert importlib.util.find_spec("flower") is not None
    elif command[0] == "celery":
        app = importlib.import_module(command[command.index("-A") + 1]).app
        queues = command[command.index("--queues") + 1].split(",")
        concurrency = command[command.index("--concurrency") + 1]
        routes = app.conf.task_routes
        if "--beat" in command:  # the maintenance worker: what beat schedules, nothing else
            assert queues == [routes[MAINTAIN_TASK]["queue"]]
            assert MAINTAIN_TASK in {e["task"] for e in app.conf.beat_schedule.values()}
            assert concurrency == "1"
        elif name == "webhooks":  # deliveries, apart, on threads: they wait on the network
            assert queues == [routes[WEBHOOK_TASK]["queue"]]
            assert command[command.index("--pool") + 1] == "threads"
            assert concurrency == str(WEBHOOK_THREADS)
        else:  # one render at a time per GPU
            assert queues == [app.conf.task_default_queue]
            assert concurrency == "1"
    if command[0] == "alembic":
        assert command[1:] == ["upgrade", "head"]


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_project_services_get_their_settings(name: str) -> None:
    env = service(name)["environment"]
    for variable in (
        "DATABASE_URL",
        "REDIS_URL",
        "ONEIRO_DATA_DIR",
        "ONEIRO_WEIGHTS",
        "ONEIRO_STORAGE_URL",
    ):
        assert env.get(variable), f"{name} lacks {variable}"
    if env["ONEIRO_STORAGE_URL"].startswith("s3://"):
        for variable in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env.get(variable), f"{name} lacks {variable}"
        assert env["AWS_ENDPOINT_URL"].split("//")[1].split(":")[0] in COMPOSE["services"]
    assert env["DATABASE_URL"].split("@")[1].split(":")[0] in COMPOSE["services"]
    assert env["REDIS_URL"].split("//")[1].split(":")[0] in COMPOSE["services"]


def options(command: list[str]) -> dict[str, str]:
    """A Celery worker command's options, `--name value`, whatever their order."""
    start = command.index("worker") + 1
    found, args = {}, command[start:]
    for index, arg in enumerate(args):
        if arg.startswith("--"):
            following = args[index + 1] if index + 1 < len(args) else ""
            found[arg] = "" if following.startswith("--") else following
    return found


@pytest.mark.parametrize(
    ("name", "launched"),
    [
        ("beat", lambda s: maintenance_command(s, Path("/data/celerybeat-schedule"))),
        ("webhooks", webhooks_command),
    ],
)
def test_compose_and_make_run_start_the_same_maintenance_and_webhook_workers(
    name: str, launched: Any
) -> None:
    settings = load_settings(queue="gpu")
    ours = options(launched(settings))
    # Node names must differ on one host (`make run`); compose gives each container its own.
    ours.pop("--hostname")
    assert options(service(name)["command"]) == ours


@pytest.mark.parametrize("name", ["api", "worker", "beat", "webhooks"])
def test_serving_waits_for_migrations(name: str) -> None:
    depends = service(name)["depends_on"]
    assert depends["migrate"] == {"condition": "service_completed_successfully"}


@pytest.mark.parametrize("name", ["api", "worker", "beat"])
def test_serving_waits_for_the_bucket(name: str) -> None:
    assert service(name)["depends_on"]["s3-init"] == {"condition": "service_completed_successfully"}
    bucket = service(name)["environment"]["ONEIRO_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    assert f"s3/{bucket}" in " ".join(service("s3-init")["entrypoint"])


def test_workers_reserve_a_gpu_and_redis_never_evicts() -> None:
    devices = service("worker")["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["count"] == 1
    assert "noeviction" in service("redis")["command"]
    assert "healthcheck" in service("postgres")


def test_the_dockerfile_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("api", "worker", "shared", "migrations"):
        assert (ROOT / package).is_dir() and f"COPY {package} {package}" in dockerfile


def test_the_image_bakes_the_imagenet_weights_where_the_worker_looks() -> None:
    from shared.catalogue import BACKBONES

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ENV KERAS_HOME=/opt/keras" in dockerfile
    for backbone in BACKBONES.values():
        assert f"'{backbone.keras_name}'" in dockerfile
