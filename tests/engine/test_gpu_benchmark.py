"""benchmarks/gpu.sh in its smoke mode (tiny sizes, this CPU), so that it cannot rot unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils import ROOT


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_gpu_benchmark_runs_and_reports(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu.sh"), "--smoke"],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["backend"] == "jax" and report["smoke"]
    assert {row["precision"] for row in report["rows"]} == {"bfloat16", "float16", "float32"}
    for row in report["rows"]:
        assert row["mp_steps_per_s"] > 0 and row["baseline_mp_steps_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["mp_steps_per_s"] / row["baseline_mp_steps_per_s"])
    assert report["render"]["seconds"] > 0
    assert "MP-steps/s" in result.stdout and "render" in result.stdout
