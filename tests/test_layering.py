"""The boundaries of the design (invariant 6 of docs/internals/architecture.md), checked on what
Python really imports and, for imports made only when a function runs, on what the source says.

The rooms: `api/` and `worker/` stand on `shared/`; `client/` (the `oneiro` command) speaks HTTP
to the API; `dev/` (`make run`, a local Redis) is for development only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.utils import ROOT

SERVICES = ("api", "worker", "shared")


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {name.split(".")[0] for name in out.split()}


def imports_in_source(path: Path) -> set[str]:
    """The top-level packages a module imports anywhere, inside functions too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def sources(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def test_the_api_imports_neither_tensorflow_nor_the_worker() -> None:
    modules = imported_after("from api import create_app; create_app")
    assert not modules & {"tensorflow", "keras", "worker"}


def test_the_worker_parent_process_stays_free_of_tensorflow() -> None:
    # Celery forks its pool from this process: TensorFlow must load in the child, after the fork.
    modules = imported_after("import worker.tasks")
    assert not modules & {"tensorflow", "keras", "flask", "api"}


def test_the_engine_imports_no_service_library() -> None:
    modules = imported_after("import worker.engine")
    assert "tensorflow" in modules
    assert not modules & {"flask", "celery", "sqlalchemy", "redis", "api"}


def test_the_oneiro_command_starts_without_any_service_code() -> None:
    # `oneiro submit` and friends must start at once on a machine without the worker extra,
    # and with every command registered (client.cli imports them all).
    modules = imported_after("import client.cli")
    assert "client" in modules
    service_libraries = {"tensorflow", "keras", "jax", "flask", "celery", "sqlalchemy", "redis"}
    assert not modules & (service_libraries | {"boto3", "api", "worker", "dev"})


def test_the_client_reaches_the_engine_and_the_database_only_when_asked_to() -> None:
    # `oneiro render` imports the engine when it runs, `oneiro keys` the database; nothing else
    # in the client goes past HTTP, and no module of it knows the API's code or the dev tools.
    for path in sources("client"):
        names = imports_in_source(path)
        assert not names & {"api", "dev", "flask", "celery"}, path
        if path.name != "render.py":
            assert not names & {"worker", "tensorflow", "keras"}, path
        if path.name != "keys.py":
            assert "sqlalchemy" not in names, path


def test_no_service_imports_the_client_or_the_dev_tools() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(*SERVICES, "migrations")
        for name in imports_in_source(path) & {"client", "dev"}
    ]
    assert not offenders


def test_only_tests_and_benchmarks_import_the_dev_tools() -> None:
    # Nothing that ships may lean on the launcher or the throwaway Redis: the images leave dev/ out.
    tops = [
        top.name
        for top in ROOT.iterdir()
        if top.is_dir() and not top.name.startswith(".")  # the virtualenv, git, caches
        if top.name not in {"dev", "tests", "benchmarks"}
    ]
    assert {"client", "migrations", "mutation", *SERVICES} <= set(tops)
    offenders = [path for path in sources(*tops) if "dev" in imports_in_source(path)]
    assert not offenders


def test_no_blueprint_imports_another() -> None:
    # The request's session lives in api/db.py (flaskr's db.py), so no module of the API reaches
    # into a blueprint for it (auth did, from inside a function, to dodge the import loop):
    # only the factory and the server's stop hook import blueprints.
    blueprints = {"api.jobs", "api.models", "api.health", "api.web"}
    allowed = {"__init__.py", "gunicorn_conf.py"}
    found = {}
    for path in sorted((ROOT / "api").glob("*.py")):
        own = f"api.{path.stem}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            if path.name not in allowed and (names & blueprints) - {own}:
                found[path.name] = sorted(names & blueprints)
    assert found == {}


def test_no_api_module_imports_upward_from_the_package() -> None:
    # `from api import Services` in api/db.py made the package's __init__ (the factory, which
    # imports every blueprint) a dependency of the module every blueprint imports: what a request
    # reaches is defined in api/db.py, beside the session, and only the server's hooks (which
    # make the app) import the factory.
    allowed = {"__init__.py", "gunicorn_conf.py"}
    found = {}
    for path in sorted((ROOT / "api").glob("*.py")):
        if path.name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "api" and not node.level:
                # `from api import schemas` names a sibling module, not the package's own code.
                upward = [
                    a.name for a in node.names if not (ROOT / "api" / f"{a.name}.py").exists()
                ]
                if upward:
                    found[path.name] = upward
    assert found == {}


def test_loading_the_schemas_does_not_load_the_request_reader() -> None:
    # The OpenAPI schemas are read by tools and the docs hooks without a request in sight; they
    # took the request reader (api/submission.py, with the image and video decoding behind it)
    # along through the Idempotency-Key's constants.
    code = "import sys, api.schemas; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "api.schemas" in out
    assert "api.submission" not in out
