"""docker-compose.yml cannot run here (no Docker engine): its promises are checked by reading."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from werkzeug.serving import make_server

from dev.launcher import WEBHOOK_THREADS, api_command, maintenance_command, webhooks_command
from shared.queue import MAINTAIN_TASK, WEBHOOK_TASK
from shared.settings import load_settings
from tests.utils import ROOT, free_port

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
        # The same gunicorn settings file as `make run` (worker class, timeouts, gc.freeze),
        # relative to the image's working directory, where the Dockerfile copies api/.
        config = command[command.index("--config") + 1]
        launched = Path(api_command("x")[api_command("x").index("--config") + 1])
        assert (ROOT / config).resolve() == launched.resolve()
        defined = {
            getattr(node, "name", None) or getattr(node.targets[0], "id", None)
            for node in ast.parse(launched.read_text()).body
            if isinstance(node, ast.FunctionDef | ast.Assign)
        }
        assert {"worker_class", "workers", "keepalive", "timeout", "post_worker_init"} <= defined
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
    for package in ("api", "worker", "shared", "client", "migrations"):
        assert (ROOT / package).is_dir() and f"COPY {package} {package}" in dockerfile
    # The launcher and the throwaway Redis are for a developer's machine, not an image.
    assert (ROOT / "dev").is_dir() and "COPY dev" not in dockerfile


def test_the_oneiro_command_is_installed_and_shipped() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, function = pyproject["project"]["scripts"]["oneiro"].split(":")
    assert callable(getattr(importlib.import_module(module), function))
    package = module.split(".")[0]
    assert f"{package}*" in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert f"COPY {package} {package}" in (ROOT / "Dockerfile").read_text()


def test_the_image_bakes_the_imagenet_weights_where_the_worker_looks() -> None:
    from shared.catalogue import BACKBONES

    worker_image = dockerfile_stages()["worker"]
    assert ("ENV", "KERAS_HOME=/opt/keras") in worker_image
    baking = " ".join(rest for keyword, rest in worker_image if keyword == "RUN")
    for backbone in BACKBONES.values():
        assert f"'{backbone.keras_name}'" in baking


def nginx_directives(block: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The simple directives of an nginx block, by name."""
    return {d["directive"]: d["args"] for d in block if "block" not in d}


def test_a_buffering_proxy_with_client_timeouts_fronts_the_api(tmp_path: Path) -> None:
    import crossplane

    from api import MULTIPART_OVERHEAD, streams
    from shared.settings import Settings

    proxy = service("proxy")
    mount = next(v for v in proxy["volumes"] if v.endswith("/etc/nginx/conf.d/default.conf:ro"))
    conf = ROOT / mount.split(":")[0]
    # Read as nginx's own nginx.conf includes conf.d/*.conf: inside `http`, which checks that
    # every directive is allowed where it stands.
    main = tmp_path / "nginx.conf"
    main.write_text(f"events {{}}\nhttp {{\n    include {conf};\n}}\n")
    parsed = crossplane.parse(str(main))
    assert parsed["status"] == "ok", parsed["errors"]
    top = next(c for c in parsed["config"] if c["file"] == str(conf))["parsed"]
    upstream = next(d for d in top if d["directive"] == "upstream")
    (server,) = [d for d in top if d["directive"] == "server"]
    settings = nginx_directives(server["block"])

    # It is the public port, and it forwards to the API service's port.
    assert proxy["ports"] == ["8000:8000"] and "ports" not in service("api")
    api_port = service("api")["command"][service("api")["command"].index("--bind") + 1]
    assert nginx_directives(upstream["block"])["server"] == [f"api:{api_port.split(':')[1]}"]
    assert settings["listen"] == ["8000"]
    # Slow clients are timed out by nginx, and uploads are buffered whole, up to the API's limit.
    for name in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert int(settings[name][0].removesuffix("s")) <= 60, name
    assert settings["proxy_request_buffering"] == ["on"]
    limit = int(settings["client_max_body_size"][0].removesuffix("m")) * 1024 * 1024
    assert limit >= Settings().max_upload_bytes + MULTIPART_OVERHEAD
    # Event streams are passed through unbuffered and outlive their keep-alive interval.
    locations = {d["args"][-1]: d["block"] for d in server["block"] if d["directive"] == "location"}
    events = next(block for pattern, block in locations.items() if "events" in pattern)
    pattern = next(p for p in locations if "events" in p)
    assert re.fullmatch(pattern, "/v1/jobs/0b5e1a52-7c0a-4a8e-9d38-6a1f0c1e2d3f/events")
    assert not re.fullmatch(pattern, "/v1/jobs/0b5e1a52-7c0a-4a8e-9d38-6a1f0c1e2d3f/result")
    assert nginx_directives(events)["proxy_buffering"] == ["off"]
    read_timeout = nginx_directives(events)["proxy_read_timeout"][0]
    assert int(read_timeout.removesuffix("h")) * 3600 > streams.KEEPALIVE_S
    assert nginx_directives(locations["/"])["proxy_buffering"] == ["on"]
    # Resumable uploads stream through, of any size the API takes.
    uploads = nginx_directives(locations["/v1/uploads"])
    assert uploads["proxy_request_buffering"] == ["off"]
    assert uploads["client_max_body_size"] == ["0"]
    # /metrics is never served on the public port (issue 23.10).
    assert nginx_directives(locations["/metrics"])["return"] == ["404"]


def test_prometheus_scrapes_the_api_service_with_the_metrics_token() -> None:
    scrape = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())["scrape_configs"][0]
    api_port = service("api")["command"][service("api")["command"].index("--bind") + 1]
    assert scrape["static_configs"][0]["targets"] == [f"api:{api_port.split(':')[1]}"]
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["authorization"]["type"] == "Bearer"
    env = service("api")["environment"]
    assert env["ONEIRO_METRICS_TOKEN"].startswith("${ONEIRO_METRICS_TOKEN:-")


# -- the images ---------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each build stage's instructions (keyword, rest), those of the stage it starts FROM first."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, rest = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            image, _, name = rest.partition(" AS ")
            current = list(stages.get(image.strip(), []))
            stages[name.strip() or image.strip()] = current
        current.append((keyword.upper(), rest.strip()))
    return stages


def targets() -> dict[str, str]:
    """The Dockerfile target each project service is built from."""
    return {name: service(name)["build"]["target"] for name in PROJECT_SERVICES}


def test_the_api_image_has_no_tensorflow_and_the_worker_image_has_it() -> None:
    stages = dockerfile_stages()
    assert targets() == {
        "migrate": "api",
        "api": "api",
        "flower": "worker",
        "worker": "worker",
        "beat": "worker",
        "webhooks": "worker",
    }
    installs = {
        name: " ".join(rest for keyword, rest in stages[name] if keyword == "RUN" and "pip" in rest)
        for name in ("api", "worker")
    }
    assert "tensorflow" not in installs["api"] and "[worker]" not in installs["api"]
    assert "'.[worker]'" in installs["worker"] and "tensorflow" in installs["worker"]
    # `pip install .` brings the base dependencies only, and they hold no TensorFlow.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert not [d for d in pyproject["project"]["dependencies"] if "tensorflow" in d]
    assert "tensorflow>=2.16" in pyproject["project"]["optional-dependencies"]["worker"]


@pytest.mark.parametrize("target", ["api", "worker"])
def test_both_images_run_as_a_non_root_user(target: str) -> None:
    instructions = dockerfile_stages()[target]
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:"))
    made = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "useradd" in made and users[-1] in made.split()
    # The data volume's mount point belongs to that user, so the services can write there.
    assert f"chown {users[-1]}" in made and "/data" in made


def test_every_service_restarts_when_it_dies() -> None:
    for name, item in COMPOSE["services"].items():
        # A one-shot that succeeded must stay done; the others come back whatever stopped them.
        one_shot = name in ("migrate", "s3-init")
        assert item.get("restart") == ("on-failure" if one_shot else "unless-stopped"), name


def run_healthcheck(port: int) -> subprocess.CompletedProcess[bytes]:
    """The api service's healthcheck command, run here against 127.0.0.1:`port`."""
    test = service("api")["healthcheck"]["test"]
    assert test[0] == "CMD" and "/healthz" in " ".join(test)
    command = [arg.replace(":8000/", f":{port}/") for arg in test[1:]]
    python = sys.executable if command[0] == "python" else command[0]
    return subprocess.run([python, *command[1:]], capture_output=True, timeout=30)


def test_the_api_healthcheck_passes_on_a_live_api_and_fails_without_one(app: Flask) -> None:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        live = run_healthcheck(server.server_port)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert live.returncode == 0, live.stderr
    assert run_healthcheck(free_port()).returncode != 0


def test_the_api_images_default_command_is_the_compose_one() -> None:
    # `docker run` of the API image without a command serves as compose does: gevent, the
    # timeouts, gc.freeze (api/gunicorn_conf.py), not gunicorn's sync default.
    (cmd,) = [rest for keyword, rest in dockerfile_stages()["api"] if keyword == "CMD"]
    assert json.loads(cmd) == service("api")["command"]


def uncommented_compose() -> dict[str, Any]:
    """docker-compose.yml with its worker classes uncommented, as the comments tell one to:
    the ONEIRO_WORKER_CLASSES line and the gpu-large service."""
    lines, out, in_service = (ROOT / "docker-compose.yml").read_text().splitlines(), [], False
    for line in lines:
        stripped = line.lstrip()
        in_service = stripped.startswith("# gpu-large:") or (
            in_service and stripped.startswith("#")
        )
        if in_service or stripped.startswith("# ONEIRO_WORKER_CLASSES:"):
            indent = line[: len(line) - len(stripped)]
            line = indent + stripped.removeprefix("# ")
        out.append(line)
    return yaml.safe_load("\n".join(out))  # type: ignore[no-any-return]


def test_the_commented_large_class_consumes_the_queue_its_jobs_are_sent_to() -> None:
    from shared.queue import worker_classes, worker_queue

    compose = uncommented_compose()
    large, plain = compose["services"]["gpu-large"], compose["services"]["worker"]
    env = large["environment"]
    assert (
        env["ONEIRO_WORKER_CLASSES"]
        and env["ONEIRO_STORAGE_URL"] == COMPOSE["x-oneiro-env"]["ONEIRO_STORAGE_URL"]
    )
    farm = load_settings(queue="gpu", worker_classes=env["ONEIRO_WORKER_CLASSES"])
    classes = worker_classes(farm)
    assert len(classes) == 2 and classes[-1].name == env["ONEIRO_WORKER_CLASS"]
    large_farm = farm.model_copy(update={"worker_class": env["ONEIRO_WORKER_CLASS"]})
    for service_, settings in ((large, large_farm), (plain, farm)):
        found = options(service_["command"])
        assert found["--queues"] == worker_queue(settings) and found["--concurrency"] == "1"
    assert found["--queues"] == "gpu"  # the present workers are the smallest class, unchanged
    assert large["deploy"] == plain["deploy"] and large["depends_on"] == plain["depends_on"]
    # Commented out, the farm is one class: nothing changes for a present deployment.
    assert "ONEIRO_WORKER_CLASSES" not in COMPOSE["x-oneiro-env"]
    assert "gpu-large" not in COMPOSE["services"]
