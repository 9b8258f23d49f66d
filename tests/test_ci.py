"""The suite's own rule for CI: PostgreSQL tests fail, not skip, where PostgreSQL is away."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.utils import ROOT

# One PostgreSQL-parametrized test, run in a pytest of its own.
ONE_TEST = "tests/api/test_idempotency.py::test_keys_expire_after_a_day[postgresql]"


def run_one_postgres_test(ci: str | None, port: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ONEIRO_TEST_POSTGRES_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/x",
    }
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", ONE_TEST, "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("ci", ["true"])
def test_on_ci_an_unreachable_postgresql_fails_the_run(ci: str, dead_port: int) -> None:
    result = run_one_postgres_test(ci, dead_port)

    assert result.returncode != 0, result.stdout
    assert "1 error" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert "CI is set, so this fails instead of skipping" in result.stdout


@pytest.mark.parametrize("ci", [None])
def test_elsewhere_an_unreachable_postgresql_skips_saying_why(
    ci: str | None, dead_port: int
) -> None:
    result = run_one_postgres_test(ci, dead_port)

    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout and "PostgreSQL is not reachable" in result.stdout
