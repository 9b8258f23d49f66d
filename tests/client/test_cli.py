"""`oneiro render`: the engine from the command line, no services."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from client.cli import main
from client.commands import describe_progress, describe_standing
from client.config import write_client_config
from client.render import GPU_DEVICE_NODES
from shared.params import QUEUE_FIELDS, RenderParams
from tests.utils import CHELSEA, ROOT


def test_render_writes_the_dream(tmp_path: Path) -> None:
    out = tmp_path / "dream.png"
    result = CliRunner().invoke(
        main,
        [
            "render",
            str(CHELSEA),
            "-o",
            str(out),
            "--weights",
            "random",
            "--steps",
            "2",
            "--octaves",
            "2",
            "--max-dim",
            "100",
            "--layers",
            "mixed3:2,mixed4",
            "--seed",
            "4",
            "--channels",
            "mixed3=1,2",
            "--tile-size",
            "64",
        ],
    )

    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (100, 67)
    assert "100%" in result.stderr
    assert "octave 2/2 step 2/2" in result.stderr
    # The engine's ETA, none before a rate is measured; tqdm's own estimate is not shown.
    assert "ETA 0:00" in result.stderr and "<" not in result.stderr


def test_help_documents_every_parameter() -> None:
    result = CliRunner().invoke(main, ["render", "--help"])
    assert result.exit_code == 0
    for field in set(RenderParams.model_fields) - set(QUEUE_FIELDS):  # no queue here
        assert f"--{field.replace('_', '-')}" in result.output, field


def test_bad_parameters_name_the_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "render",
            str(CHELSEA),
            "-o",
            str(tmp_path / "x.png"),
            "--steps",
            "0",
            "--layers",
            "mixed99",
        ],
    )
    assert result.exit_code == 2
    assert "--steps" in result.output and "--layers" in result.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(
    any(Path(node).exists() for node in GPU_DEVICE_NODES), reason="this machine has a GPU"
)
def test_render_on_a_cpu_prints_no_cuda_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    rendered = subprocess.run(
        [sys.executable, "-m", "client.cli", "render", str(CHELSEA), "-o", str(tmp_path / "d.png")]
        + ["--weights", "random", "--steps", "1", "--octaves", "1", "--max-dim", "64"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "cuInit" not in rendered.stderr and "CUDA error" not in rendered.stderr


def test_config_prints_the_saved_key_and_url(no_saved_config: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["config", "key"])
    assert missing.exit_code == 1 and "no API key" in missing.stderr
    write_client_config("http://127.0.0.1:8123", "oneiro_saved", no_saved_config)
    assert runner.invoke(main, ["config", "key"]).stdout == "oneiro_saved\n"
    assert runner.invoke(main, ["config", "url"]).stdout == "http://127.0.0.1:8123\n"
    # The key line of the README and docs/guide/getting-started.md honours
    # $ONEIRO_CLIENT_CONFIG, as every command does.
    elsewhere = tmp_path / "elsewhere.json"
    write_client_config("http://10.0.0.2:8000", "oneiro_elsewhere", elsewhere)
    moved = runner.invoke(main, ["config", "key"], env={"ONEIRO_CLIENT_CONFIG": str(elsewhere)})
    assert moved.stdout == "oneiro_elsewhere\n"
    assert runner.invoke(main, ["config", "key"], env={"ONEIRO_API_KEY": "k"}).stdout == "k\n"


def test_a_queued_jobs_standing_reads_as_the_api_gives_it() -> None:
    # The API's `queue` of a queued job, as `oneiro status` and `submit --wait` print it.
    assert describe_standing({"position": 3, "estimated_start_seconds": 95.4}) == (
        "position 3; starts in about 1:35"
    )
    assert describe_standing({"position": 1, "estimated_start_seconds": 7384}) == (
        "position 1; starts in about 2h03m"
    )
    assert describe_standing({"position": 2, "estimated_start_seconds": None}) == (
        "position 2; start time not known yet"
    )
    queued = {"status": "queued", "queue": {"position": 4, "estimated_start_seconds": 30}}
    assert describe_progress(queued) == "queued, position 4; starts in about 0:30"
