"""`oneiro render`: the engine from the command line, no services."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from shared.params import RenderParams
from tests.utils import CHELSEA
from worker.cli import main


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


def test_help_documents_every_parameter() -> None:
    result = CliRunner().invoke(main, ["render", "--help"])
    assert result.exit_code == 0
    for field in RenderParams.model_fields:
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
