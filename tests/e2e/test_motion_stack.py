"""A video and a zoom animation through `oneiro submit --wait`, the API under gunicorn and a real
Celery worker: the MP4 comes back with the clip's frame count, rate, size and audio."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from click.testing import CliRunner, Result

from client.cli import main
from tests.utils import CHELSEA, Stack, clip_bytes, running_stack

pytestmark = pytest.mark.e2e

SMALL = ["--param", "steps=2", "--param", "octaves=1", "--param", "tile_size=96"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("motion"), redis_url) as running:
        yield running
        sys.stdout.write(running.worker_log.read_text()[-2000:])


def oneiro(stack: Stack, *args: str) -> Result:
    env = {"ONEIRO_URL": stack.url, "ONEIRO_API_KEY": stack.key}
    return CliRunner().invoke(main, list(args), env=env)


def video_facts(data: bytes) -> tuple[int, object, tuple[int, int], list[str]]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        size = (stream.codec_context.width, stream.codec_context.height)
        audio = [a.codec_context.name for a in container.streams.audio]
        return frames, stream.average_rate, size, audio


def test_a_clip_comes_back_dreamed_with_its_frames_rate_size_and_audio(
    stack: Stack, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(clip_bytes((96, 64), frames=6, fps=12))
    out = tmp_path / "dream.mp4"
    result = oneiro(stack, "submit", str(clip), *SMALL, "--wait", "-o", str(out))

    assert result.exit_code == 0, result.output
    job_id, written = result.stdout.splitlines()
    assert written == str(out)
    assert video_facts(out.read_bytes()) == (6, 12, (96, 64), ["aac"])
    assert re.search(r"frame [1-6]/6 octave 1/1 step [12]/2", result.stderr), result.stderr
    job = stack.job(job_id)
    assert job["kind"] == "video" and job["progress"]["frame"] == 6


def test_a_zoom_animation_of_a_photo_comes_back_as_an_mp4(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the result is written by default
    animation = json.dumps({"frames": 5, "fps": 10, "zoom": 1.05})
    result = oneiro(
        stack,
        "submit",
        str(CHELSEA),
        *SMALL,
        "--param",
        "max_dim=120",
        "--param",
        f"animation={animation}",
        "--wait",
    )

    assert result.exit_code == 0, result.output
    job_id, written = result.stdout.splitlines()
    assert written == f"{job_id}.mp4"
    assert video_facts((tmp_path / written).read_bytes()) == (5, 10, (120, 80), [])
    assert stack.job(job_id)["kind"] == "animation"
