"""Frame rates and times, encoded for real (PyAV): NTSC and slow rates, rates no format holds,
a variable frame rate's times and a phone clip's rotation kept through a video job."""

from __future__ import annotations

import io
import json
import uuid
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.formats import ANIMATED_FORMATS, frame_rate
from shared.images import encode_animation
from shared.models import Job, JobStatus
from shared.settings import Settings
from shared.storage import Storage
from shared.video import decode_frames, encode_mp4
from tests.utils import image_bytes, stored_files
from tests.utils.hostile import rotated_clip, vfr_clip
from worker.jobs import run_job
from worker.runtime import Runtime

TINY = {"steps": 1, "octaves": 1, "seed": 3, "tile_size": 96}


def post(client: FlaskClient, params: dict[str, Any], **files: bytes) -> Any:
    data: dict[str, Any] = {name: (io.BytesIO(body), name) for name, body in files.items()}
    data["params"] = json.dumps(params)
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def run(client: FlaskClient, settings: Settings, sessions: Any, storage: Storage, job: Any) -> Any:
    runtime = Runtime(settings=settings, sessions=sessions, storage=storage, name="test-worker")
    assert run_job(uuid.UUID(job["id"]), runtime) == JobStatus.SUCCEEDED
    done = client.get(f"/v1/jobs/{job['id']}").get_json()
    return client.get(done["result_url"]).data


def times_of(data: bytes) -> tuple[Fraction, list[float], tuple[int, int]]:
    """A video's stream rate, each frame's start in seconds, and its frame size."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return (
            stream.average_rate,
            [float(f.pts * f.time_base) for f in frames],
            (frames[0].width, frames[0].height),
        )


@pytest.mark.parametrize(
    ("fps", "rate"),
    [
        (29.97, Fraction(30000, 1001)),
        (23.976, Fraction(24000, 1001)),
        (119.88, Fraction(120000, 1001)),
        (0.3, Fraction(3, 10)),
        (12.5, Fraction(25, 2)),
    ],
)
def test_ntsc_and_slow_rates_are_written_as_the_rational_they_stand_for(
    fps: float, rate: Fraction
) -> None:
    frames = [np.full((32, 48, 3), 40 * n, np.uint8) for n in range(3)]
    assert frame_rate(fps) == rate
    written, starts, _ = times_of(encode_mp4(frames, frame_rate(fps)))
    assert written == rate
    assert starts == pytest.approx([n / float(rate) for n in range(3)], abs=1e-3)


def test_a_gif_at_a_third_of_a_frame_a_second_keeps_its_rate() -> None:
    frames = [np.full((16, 16, 3), 80 * n, np.uint8) for n in range(3)]
    data = encode_animation(frames, 3, ANIMATED_FORMATS["gif"], 0.3)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as gif:
        durations = []
        for n in range(3):
            gif.seek(n)
            durations.append(gif.info["duration"])
    assert sum(durations) == 10_000 and max(durations) - min(durations) <= 10


def test_an_animation_at_29_97_fps_renders_to_an_ntsc_mp4(
    client: FlaskClient, settings: Settings, sessions: sessionmaker[Session], storage: Storage
) -> None:
    answer = post(
        client, {**TINY, "animation": {"frames": 2, "fps": 29.97}}, image=image_bytes((48, 32))
    )
    assert answer.status_code == 202, answer.get_data(as_text=True)
    rate, starts, _ = times_of(run(client, settings, sessions, storage, answer.get_json()))
    assert rate == Fraction(30000, 1001)
    assert starts == pytest.approx([0.0, 1001 / 30000], abs=1e-4)


@pytest.mark.parametrize(
    ("output_format", "fps"), [("gif", 0.001), ("webp", 0.00005), ("png", 0.0001)]
)
def test_a_rate_no_format_holds_is_422_naming_the_field_storing_nothing(
    client: FlaskClient, session: Session, settings: Settings, output_format: str, fps: float
) -> None:
    params: dict[str, Any] = {**TINY, "animation": {"frames": 2, "fps": fps}}
    if output_format != "png":  # png: the default, an MP4
        params["output_format"] = output_format
    answer = post(client, params, image=image_bytes((48, 32)))
    assert answer.status_code == 422, answer.get_data(as_text=True)
    body = answer.get_json()
    assert [e["field"] for e in body["errors"]] == ["params.animation.fps"]
    assert "fps" in body["detail"]
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert stored_files(settings) == []


def test_a_variable_frame_rate_video_keeps_each_frames_time(
    client: FlaskClient, settings: Settings, sessions: sessionmaker[Session], storage: Storage
) -> None:
    """The issue's clip: 9 s long, came back 2.7 s (every frame at the average rate's step)."""
    starts = [0.0, 0.1, 0.2, 3.0, 6.0, 9.0]
    answer = post(client, TINY, video=vfr_clip(starts))
    assert answer.status_code == 202, answer.get_data(as_text=True)
    _, written, _ = times_of(run(client, settings, sessions, storage, answer.get_json()))
    assert written == pytest.approx(starts, abs=0.01)


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_a_rotated_clips_frames_come_upright(rotation: int) -> None:
    """A phone's portrait clip is stored landscape with a display matrix: its frames are turned
    as a player turns them (FFmpeg's autorotate), so the dream is of the picture as seen."""
    stored = next(decode_frames(rotated_clip(0)))  # 96 x 64, the square at the top left
    turned = next(decode_frames(rotated_clip(rotation)))
    expected = np.rot90(stored, rotation // 90)  # counter-clockwise, as the matrix says
    assert turned.shape == expected.shape
    assert np.abs(turned.astype(int) - expected.astype(int)).mean() < 2


def test_a_portrait_phone_clip_comes_back_portrait(
    client: FlaskClient, settings: Settings, sessions: sessionmaker[Session], storage: Storage
) -> None:
    answer = post(client, TINY, video=rotated_clip(-90))
    assert answer.status_code == 202, answer.get_data(as_text=True)
    assert answer.get_json()["input"] == {"width": 64, "height": 96}
    _, _, size = times_of(run(client, settings, sessions, storage, answer.get_json()))
    assert size == (64, 96)
