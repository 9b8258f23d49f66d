"""The boundaries of the design (DESIGN.md invariant 6), checked on what Python really imports."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {name.split(".")[0] for name in out.split()}


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


def test_the_cli_and_its_http_client_import_no_tensorflow() -> None:
    # `oneiro submit` and friends must start at once on a machine without the worker extra.
    modules = imported_after("import worker.cli, shared.client")
    assert not modules & {"tensorflow", "keras", "flask", "api", "celery"}


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
