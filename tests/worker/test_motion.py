"""Animation and video jobs through the API and the worker's own code (in this process): the
result's frames, rate, size and audio, byte ranges, resume after SIGKILL, refusals."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.images import recipe_of
from shared.models import Job, JobStatus, utcnow
from shared.settings import Settings
from shared.storage import Storage, frame_key
from tests.utils import CHELSEA, ROOT, clip_bytes, image_bytes, stored_files
from worker.jobs import run_job
from worker.maintenance import reap_stale_jobs
from worker.runtime import Runtime

SMALL = {"steps": 2, "octaves": 1, "seed": 3, "tile_size": 96}
ZOOM = {**SMALL, "animation": {"frames": 4, "fps": 8, "zoom": 1.05, "rotate": 3}}


def post(client: FlaskClient, params: dict[str, Any] | None = None, **files: bytes) -> Any:
    data: dict[str, Any] = {
        name: (io.BytesIO(body), f"upload.{name}") for name, body in files.items()
    }
    if params is not None:
        data["params"] = json.dumps(params)
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def runtime(settings: Settings, sessions: sessionmaker[Session], storage: Storage) -> Runtime:
    return Runtime(settings=settings, sessions=sessions, storage=storage, name="test-worker")


def video_of(data: bytes) -> dict[str, Any]:
    """What a video holds: frames (decoded), rate, size, codec, pixel format, audio codecs."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        facts = {
            "fps": stream.average_rate,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "audio": [a.codec_context.name for a in container.streams.audio],
        }
        facts["frames"] = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return facts


def test_a_video_job_keeps_frame_count_rate_size_and_audio(
    client: FlaskClient, settings: Settings, sessions: sessionmaker[Session], storage: Storage
) -> None:
    clip = clip_bytes((96, 64), frames=6, fps=12)
    answer = post(client, {**SMALL, "blend": 0.7}, video=clip)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    job = answer.get_json()
    assert job["kind"] == "video" and job["frames"] == 6
    assert job["input"] == {"width": 96, "height": 64}
    assert job["progress"]["frames"] == 6 and job["progress"]["frame"] == 0

    assert (
        run_job(uuid.UUID(job["id"]), runtime(settings, sessions, storage)) == JobStatus.SUCCEEDED
    )

    done = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["frame"] == 6 and done["progress"]["fraction"] == 1.0
    result = client.get(done["result_url"])
    assert result.status_code == 200 and result.mimetype == "video/mp4"
    assert result.headers["Accept-Ranges"] == "bytes"
    facts = video_of(result.data)
    assert len(facts["frames"]) == 6 and facts["fps"] == 12 and facts["size"] == (96, 64)
    assert facts["codec"] == "h264" and facts["pix_fmt"] == "yuv420p"
    assert facts["audio"] == ["aac"]
    source = video_of(clip)["frames"]
    assert any(
        np.abs(a.astype(int) - b.astype(int)).mean() > 3
        for a, b in zip(facts["frames"], source, strict=True)
    )
    # The frames were stored as they were finished, and dropped once the video was.
    assert not any("frames/" in p.as_posix() for p in stored_files(settings))
    with client.get(f"/v1/jobs/{job['id']}/preview") as preview:  # closed: a streamed file
        assert preview.status_code == 200 and preview.mimetype == "image/jpeg"


def test_a_zoom_animation_is_an_mp4_of_its_frames_at_its_rate_served_in_ranges(
    client: FlaskClient, settings: Settings, sessions: sessionmaker[Session], storage: Storage
) -> None:
    answer = post(client, ZOOM, image=image_bytes((90, 66)))
    assert answer.status_code == 202, answer.get_data(as_text=True)
    job = answer.get_json()
    assert job["kind"] == "animation" and job["frames"] == 4
    assert (
        run_job(uuid.UUID(job["id"]), runtime(settings, sessions, storage)) == JobStatus.SUCCEEDED
    )

    whole = client.get(f"/v1/jobs/{job['id']}/result")
    facts = video_of(whole.data)
    assert len(facts["frames"]) == 4 and facts["fps"] == 8
    # The MP4 carries its recipe, as a still does (its `comment` tag).
    recipe = client.get(f"/v1/jobs/{job['id']}").get_json()["recipe"]
    assert recipe and recipe_of(whole.data) == recipe
    assert facts["size"] == (90, 66) and facts["audio"] == []
    size = len(whole.data)
    # Closed as a WSGI server closes a body: a range stops reading before the file's end.
    with client.get(f"/v1/jobs/{job['id']}/result", headers={"Range": "bytes=100-199"}) as part:
        assert part.status_code == 206 and part.data == whole.data[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{size}"
    with client.get(f"/v1/jobs/{job['id']}/result", headers={"Range": "bytes=-10"}) as tail:
        assert tail.status_code == 206 and tail.data == whole.data[-10:]
    past = client.get(f"/v1/jobs/{job['id']}/result", headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{size}"


def test_frame_jobs_default_to_few_steps_a_frame_and_stills_do_not(client: FlaskClient) -> None:
    zoom = post(client, {"animation": {"frames": 3}}, image=image_bytes()).get_json()
    still = post(client, {}, image=image_bytes()).get_json()
    assert (zoom["params"]["steps"], zoom["params"]["octaves"]) == (10, 3)
    assert (still["params"]["steps"], still["params"]["octaves"]) == (20, 5)
    assert still["kind"] == "image" and still["frames"] is None
    video = post(client, {"steps": 4}, video=clip_bytes()).get_json()
    assert (video["params"]["steps"], video["params"]["octaves"]) == (4, 3)


class Crash(BaseException):
    """Stands for kill -9 in this process: nothing in the worker catches it or cleans up."""


class DiesAtFrame3:
    """The storage of a worker that dies as it stores frame 3 (and is fine otherwise)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def put(self, key: str, data: bytes) -> None:
        if key.endswith("frames/000002.png"):
            raise Crash
        self.storage.put(key, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)


def put_back(session: Session, settings: Settings, job_id: uuid.UUID) -> None:
    """The reaper's verdict on a job whose worker died: queued again."""
    session.execute(
        update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(hours=1))
    )
    session.commit()
    assert reap_stale_jobs(session, settings) == ([job_id], [])


@pytest.mark.parametrize("kind", ["video", "animation"])
def test_a_job_killed_mid_video_resumes_after_its_last_frame_to_the_same_frames(
    client: FlaskClient,
    settings: Settings,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upload = {"video": clip_bytes(frames=5)} if kind == "video" else {"image": image_bytes()}
    params = SMALL if kind == "video" else {**SMALL, "animation": {"frames": 5, "zoom": 1.04}}
    worker = runtime(settings, sessions, storage)
    reference = post(client, params, **upload).get_json()["id"]
    assert run_job(uuid.UUID(reference), worker) == JobStatus.SUCCEEDED
    expected = video_of(client.get(f"/v1/jobs/{reference}/result").data)["frames"]

    job_id = uuid.UUID(post(client, params, **upload).get_json()["id"])
    doomed = Runtime(settings, sessions, DiesAtFrame3(storage), "doomed")  # type: ignore[arg-type]
    with pytest.raises(Crash):
        run_job(job_id, doomed)
    assert [storage.exists(frame_key(job_id, 1, n)) for n in range(3)] == [True, True, False]
    put_back(session, settings, job_id)
    frames_seen: list[int] = []
    monkeypatch.setattr(
        "worker.watchers.ProgressReporter.__call__", lambda self, p: frames_seen.append(p.frame)
    )
    assert run_job(job_id, worker) == JobStatus.SUCCEEDED

    assert frames_seen and min(frames_seen) == 3  # frames 1 and 2 were not dreamed again
    done = client.get(f"/v1/jobs/{job_id}").get_json()
    assert done["attempt"] == 2
    resumed = video_of(client.get(done["result_url"]).data)["frames"]
    assert len(resumed) == len(expected) == 5
    differ = {
        n: int(np.abs(a.astype(int) - b.astype(int)).max())
        for n, (a, b) in enumerate(zip(resumed, expected, strict=True))
        if not np.array_equal(a, b)
    }
    assert differ == {}  # frame: largest difference


# The worker's code in a process of its own, killed with SIGKILL as it stores frame argv[2]
# (counted from 0).
KILLED_AT_FRAME = """
import os, signal, sys, uuid
from shared.db import create_db_engine, create_session_factory
from shared.settings import load_settings
from shared.storage import FileStorage, open_storage
from worker.jobs import run_job
from worker.runtime import Runtime

put = FileStorage.put
def put_or_die(self, key, data):
    if key.endswith(f"frames/{int(sys.argv[2]):06d}.png"):
        # Said first, so a test tells this kill from any other (the kernel's OOM killer).
        print(f"killed storing {key}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    put(self, key, data)
FileStorage.put = put_or_die
settings = load_settings(weights="random", weights_download=False, progress_interval=0.0)
sessions = create_session_factory(create_db_engine(settings.database_url))
storage = open_storage(settings.storage_url)
run_job(uuid.UUID(sys.argv[1]), Runtime(settings, sessions, storage, "doomed"))
"""


def stored_frames(storage: Storage, job_id: uuid.UUID) -> set[tuple[int, int]]:
    """(frame, attempt) of every frame of the job's first 3 attempts in storage."""
    return {
        (n, attempt)
        for attempt in (1, 2, 3)
        for n in range(8)
        if storage.exists(frame_key(job_id, attempt, n))
    }


# Three processes each load TensorFlow and the model: 2 minutes each on a loaded 2-core machine
# (load average 17), past the default 300 s.
@pytest.mark.timeout(1200)
def test_a_video_job_killed_twice_with_sigkill_ends_with_an_uninterrupted_runs_pixels(
    client: FlaskClient,
    settings: Settings,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clip = clip_bytes(frames=5)
    reference = post(client, SMALL, video=clip).get_json()["id"]
    assert run_job(uuid.UUID(reference), runtime) == JobStatus.SUCCEEDED
    expected = client.get(f"/v1/jobs/{reference}/result").data

    job_id = uuid.UUID(post(client, SMALL, video=clip).get_json()["id"])
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "ONEIRO_DATA_DIR": str(settings.data_dir),
        "ONEIRO_STORAGE_URL": settings.storage_url,
    }
    # Attempt 1 dies storing frame 3, attempt 2 (resuming there) storing frame 5: each stored
    # (frame, attempt) the frames from where the one before it stopped to its death.
    first = {(0, 1), (1, 1)}
    for attempt, dies_at, stored in ((1, 2, first), (2, 4, first | {(2, 2), (3, 2)})):
        died = subprocess.run(
            [sys.executable, "-c", KILLED_AT_FRAME, str(job_id), str(dies_at)],
            cwd=ROOT,
            env=env,
            check=False,
            capture_output=True,
            text=True,
        )
        assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
        assert f"killed storing {frame_key(job_id, attempt, dies_at)}" in died.stderr
        assert stored_frames(storage, job_id) == stored, died.stderr[-3000:]
        put_back(session, settings, job_id)
    frames_seen: list[int] = []
    monkeypatch.setattr(
        "worker.watchers.ProgressReporter.__call__", lambda self, p: frames_seen.append(p.frame)
    )
    assert run_job(job_id, runtime) == JobStatus.SUCCEEDED

    assert set(frames_seen) == {5}  # only the frame no attempt had stored was dreamed again
    done = client.get(f"/v1/jobs/{job_id}").get_json()
    assert done["attempt"] == 3
    result = client.get(done["result_url"]).data
    resumed, uninterrupted = video_of(result)["frames"], video_of(expected)["frames"]
    assert len(resumed) == len(uninterrupted) == 5 and video_of(result)["audio"] == ["aac"]
    assert all(np.array_equal(a, b) for a, b in zip(resumed, uninterrupted, strict=True))


def truncated_mp4() -> bytes:
    """A clip cut in half, its index (at the front) promising frames the file lacks."""
    from shared.video import encode_mp4

    frames = [np.full((64, 96, 3), 16 * n, np.uint8) for n in range(8)]
    whole = encode_mp4(frames, 8)
    return whole[: len(whole) * 2 // 3]


def audio_only() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        sound = out.add_stream("aac", rate=48000)
        chunk = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        chunk.sample_rate = 48000
        out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("upload", "params", "status", "words"),
    [
        (lambda: b"not a video at all", {}, 422, "not a readable video"),
        (lambda: clip_bytes()[:300], {}, 422, "video"),
        (truncated_mp4, {}, 422, "truncated"),
        (audio_only, {}, 422, "no video stream"),
        (lambda: image_bytes(), {}, 422, "video"),
        (lambda: b"", {}, 422, "empty"),
        (lambda: clip_bytes(), {"animation": {"frames": 3}}, 422, "takes no animation"),
        (lambda: clip_bytes(frames=12), {}, 413, "ONEIRO_MAX_FRAMES"),
        (lambda: clip_bytes(size=(128, 96)), {}, 413, "ONEIRO_MAX_PIXELS"),
        (lambda: clip_bytes(frames=8, fps=2), {}, 413, "ONEIRO_MAX_VIDEO_SECONDS"),
    ],
)
def test_bad_or_huge_videos_are_refused_naming_why_and_store_nothing(
    settings: Settings,
    session: Session,
    upload: Any,
    params: dict[str, Any],
    status: int,
    words: str,
) -> None:
    from api import create_app
    from tests.utils import authed_client

    limited = settings.model_copy(
        update={"max_frames": 10, "max_pixels": 10_000, "max_video_seconds": 3}
    )
    app = create_app(limited)
    try:
        answer = post(authed_client(app), params, video=upload())
    finally:
        app.extensions["oneiro"].engine.dispose()
        app.extensions["oneiro"].celery.close()
    assert answer.status_code == status, answer.get_data(as_text=True)
    body = answer.get_json(force=True)
    assert answer.content_type == "application/problem+json"
    assert words in body["detail"]
    if status == 413:
        assert body["limit"] in (10, 10_000, 3)
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert stored_files(settings) == []


def test_an_animation_past_the_frame_or_work_limit_is_422(
    settings: Settings, session: Session
) -> None:
    from api import create_app
    from tests.utils import authed_client

    app = create_app(settings.model_copy(update={"max_frames": 10, "max_work": 500_000}))
    try:
        client = authed_client(app)
        many = post(client, {**SMALL, "animation": {"frames": 11}}, image=image_bytes())
        heavy = post(client, {**SMALL, "animation": {"frames": 10}}, image=image_bytes((200, 150)))
        light = post(client, {**SMALL, "animation": {"frames": 1}}, image=image_bytes((200, 150)))
    finally:
        app.extensions["oneiro"].engine.dispose()
        app.extensions["oneiro"].celery.close()
    assert many.status_code == 422 and "ONEIRO_MAX_FRAMES" in many.get_json()["detail"]
    assert heavy.status_code == 422 and "x 10 frames" in heavy.get_json()["detail"]
    assert light.status_code == 202
    assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_oneiro_render_dreams_a_video_and_an_animation_locally(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from client.cli import main

    clip = tmp_path / "clip.webm"
    clip.write_bytes(clip_bytes((64, 48), frames=4, fps=8, container="webm", codec="libvpx-vp9"))
    common = ["--weights", "random", "--precision", "float32", "--steps", "1", "--octaves", "1"]
    common += ["--tile-size", "64", "--seed", "5"]
    for source, out, extra in (
        (clip, tmp_path / "dream.mp4", []),
        (CHELSEA, tmp_path / "zoom.mp4", ["--max-dim", "64", "--animation", '{"frames": 3}']),
    ):
        done = CliRunner().invoke(main, ["render", str(source), "-o", str(out), *common, *extra])
        assert done.exit_code == 0, done.output
        assert "frame " in done.stderr  # the progress bar counts frames
    dreamed = video_of((tmp_path / "dream.mp4").read_bytes())
    zoom = video_of((tmp_path / "zoom.mp4").read_bytes())
    assert len(dreamed["frames"]) == 4 and dreamed["fps"] == 8 and dreamed["size"] == (64, 48)
    assert dreamed["audio"] == ["opus"]  # the WebM's track, copied as it is
    assert len(zoom["frames"]) == 3 and zoom["fps"] == 24 and zoom["audio"] == []
    # Each carries its recipe, as a still oneiro render writes does.
    assert (recipe_of((tmp_path / "zoom.mp4").read_bytes()) or {})["params"]["seed"] == 5
    assert (recipe_of((tmp_path / "dream.mp4").read_bytes()) or {})["params"]["steps"] == 1


@pytest.mark.parametrize(
    ("params", "parts", "field"),
    [
        ({"animation": {"frames": 2}, "output_format": "jpeg"}, {}, "params.output_format"),
        ({"animation": {"frames": 2}, "quality": 50}, {}, "params.quality"),
        ({"animation": {"frames": 2}}, {"guide": "image"}, "guide"),
        ({}, {"mask": "image", "video": "clip"}, "mask"),
        ({}, {"image": "image", "video": "clip"}, "video"),
    ],
)
def test_what_a_frame_job_would_ignore_is_refused_and_nothing_stored(
    client: FlaskClient,
    settings: Settings,
    session: Session,
    params: dict[str, Any],
    parts: dict[str, str],
    field: str,
) -> None:
    made = {"image": image_bytes(), "clip": clip_bytes(frames=2)}
    files = {"image": made["image"], **{name: made[kind] for name, kind in parts.items()}}
    if "video" in parts and "image" not in parts:
        del files["image"]
    answer = post(client, params, **files)
    assert answer.status_code == 422, answer.get_data(as_text=True)
    assert field in [error["field"] for error in answer.get_json()["errors"]]
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert stored_files(settings) == []


class CancelsAfterFrame1:
    """Storage through which the job is canceled (by its API) as its first frame is stored."""

    def __init__(self, storage: Storage, cancel: Any) -> None:
        self.storage, self.cancel = storage, cancel

    def put(self, key: str, data: bytes) -> None:
        self.storage.put(key, data)
        if key.endswith("frames/000000.png"):
            self.cancel()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)


def test_a_canceled_video_job_stops_in_its_next_frame_and_keeps_no_frames(
    client: FlaskClient, settings: Settings, sessions: sessionmaker[Session], storage: Storage
) -> None:
    job_id = post(client, SMALL, video=clip_bytes(frames=5)).get_json()["id"]
    canceled = CancelsAfterFrame1(
        storage, lambda: client.post(f"/v1/jobs/{job_id}/cancel").get_json()
    )
    worker = Runtime(settings, sessions, canceled, "test-worker")  # type: ignore[arg-type]

    assert run_job(uuid.UUID(job_id), worker) is None  # the render stopped: its job was lost
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "canceled" and job["result_url"] is None
    assert not storage.exists(frame_key(uuid.UUID(job_id), 1, 1))  # frame 2 never finished
    assert not any("frames/" in p.as_posix() for p in stored_files(settings))


def test_the_same_video_with_the_same_idempotency_key_is_one_job(client: FlaskClient) -> None:
    clip = clip_bytes(frames=3)
    answers = [
        client.post(
            "/v1/jobs",
            data={"video": (io.BytesIO(clip), "clip.mp4"), "params": json.dumps(SMALL)},
            content_type="multipart/form-data",
            headers={"Idempotency-Key": "clip-1"},
        )
        for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [202, 200]
    assert answers[0].get_json()["id"] == answers[1].get_json()["id"]
    assert answers[1].get_json()["kind"] == "video"


def animation_of(data: bytes) -> dict[str, Any]:
    """What an animated image holds: format, frame count, size, loop count, each frame's ms."""
    with Image.open(io.BytesIO(data)) as image:
        durations = []
        for n in range(image.n_frames):
            image.seek(n)
            image.load()  # a WebP frame's duration is read with its pixels
            durations.append(image.info["duration"])
        return {
            "format": image.format,
            "frames": image.n_frames,
            "size": image.size,
            "loop": image.info.get("loop"),
            "durations": durations,
        }


@pytest.mark.parametrize(
    ("name", "fps", "media_type", "ms"),
    [("gif", 10, "image/gif", 100), ("webp", 25, "image/webp", 40)],
)
def test_a_short_animation_asked_as_gif_or_webp_loops_at_its_rate(
    client: FlaskClient,
    settings: Settings,
    sessions: sessionmaker[Session],
    storage: Storage,
    name: str,
    fps: int,
    media_type: str,
    ms: int,
) -> None:
    from client.commands import _extension

    animation = {"frames": 3, "fps": fps, "zoom": 1.05, "rotate": 3}
    answer = post(
        client,
        {**SMALL, "animation": animation, "output_format": name},
        image=image_bytes((90, 66)),
    )
    assert answer.status_code == 202, answer.get_data(as_text=True)
    job = answer.get_json()
    assert (
        run_job(uuid.UUID(job["id"]), runtime(settings, sessions, storage)) == JobStatus.SUCCEEDED
    )

    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.mimetype == media_type
    assert result.headers["Content-Disposition"] == f'inline; filename="{job["id"]}.{name}"'
    facts = animation_of(result.data)
    assert facts == {
        "format": name.upper(),
        "frames": 3,
        "size": (90, 66),
        "loop": 0,  # forever
        "durations": [ms] * 3,
    }
    # `oneiro submit --wait` and `oneiro result` save it under the same extension.
    shown = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert _extension(shown) == name
    # It carries its recipe in its own metadata, as a still does (GIF: a comment; WebP: XMP).
    assert recipe_of(result.data) == shown["recipe"] and shown["recipe"]["params"]["seed"]


def test_a_gif_at_24_fps_keeps_its_rate_in_hundredths() -> None:
    from shared.formats import ANIMATED_FORMATS
    from shared.images import frame_durations

    gif = frame_durations(24, 24, ANIMATED_FORMATS["gif"])
    assert set(gif) == {40, 50} and sum(gif) == 1000
    assert sum(frame_durations(24, 24, ANIMATED_FORMATS["webp"])) == 1000


@pytest.mark.parametrize(
    ("params", "video", "field", "words"),
    [
        (
            {"animation": {"frames": 5}, "output_format": "gif"},
            False,
            "params.animation.frames",
            "ONEIRO_MAX_GIF_FRAMES",
        ),
        (
            {"animation": {"frames": 3}, "output_format": "webp"},
            False,
            "params.max_dim",
            "ONEIRO_MAX_GIF_PIXELS",
        ),
        (
            {"animation": {"frames": 3, "fps": 60}, "output_format": "gif"},
            False,
            "params.animation.fps",
            "50 fps",
        ),
        (
            {"animation": {"frames": 3}, "output_format": "png16"},
            False,
            "params.output_format",
            "gif or webp",
        ),
        (
            {"animation": {"frames": 3}, "output_format": "gif", "quality": 50},
            False,
            "params.quality",
            "no quality",
        ),
        ({"output_format": "gif"}, True, "params.output_format", "makes an MP4"),
        ({"output_format": "webp"}, True, "params.output_format", "makes an MP4"),
        ({"output_format": "gif"}, False, "params.output_format", "animations"),
    ],
)
def test_animated_formats_past_their_limits_or_for_a_video_are_422_storing_nothing(
    settings: Settings,
    session: Session,
    params: dict[str, Any],
    video: bool,
    field: str,
    words: str,
) -> None:
    from api import create_app
    from tests.utils import authed_client

    limited = settings.model_copy(update={"max_gif_frames": 4, "max_gif_pixels": 90 * 66})
    app = create_app(limited)
    try:
        files = {"video": clip_bytes(frames=2)} if video else {"image": image_bytes((96, 64))}
        answer = post(authed_client(app), {**SMALL, **params}, **files)
        fits = post(
            authed_client(app),
            {**SMALL, "animation": {"frames": 4}, "output_format": "webp", "max_dim": 90},
            image=image_bytes((96, 64)),
        )
    finally:
        app.extensions["oneiro"].engine.dispose()
        app.extensions["oneiro"].celery.close()
    assert answer.status_code == 422, answer.get_data(as_text=True)
    errors = {error["field"]: error["message"] for error in answer.get_json()["errors"]}
    assert words in errors[field], errors
    assert fits.status_code == 202, fits.get_data(as_text=True)  # at the limits, accepted
    assert session.scalar(select(func.count()).select_from(Job)) == 1
    assert [p.name for p in stored_files(settings)] == ["input.png"]
