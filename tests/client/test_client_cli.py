"""`oneiro submit/status/list/cancel/retry/result` against a real API under gunicorn and a real
Celery worker; the event stream's reconnect and polling fallback."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from PIL import Image
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from client.api import ApiError, Client
from client.cli import main
from client.config import write_client_config
from client.events import Event
from shared.models import Upload
from tests.utils import (
    CHELSEA,
    ROOT,
    Proxy,
    Stack,
    clip_bytes,
    running_stack,
    wait_for,
    write_padded_clip,
)

pytestmark = pytest.mark.e2e

SMALL = ["--param", "max_dim=128", "--param", "octaves=5", "--param", "steps=8"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("client"), redis_url) as running:
        yield running
        sys.stdout.write(running.worker_log.read_text()[-2000:])


def oneiro(stack: Stack, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run `oneiro ARGS` in-process, pointed at the stack through the environment."""
    env = {"ONEIRO_URL": stack.url, "ONEIRO_API_KEY": stack.key, **(env or {})}
    return CliRunner().invoke(main, list(args), env=env)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


# -- where the CLI finds the API ---------------------------------------------------------------


def test_config_precedence_against_the_api(
    stack: Stack, no_saved_config: Path, dead_port: int
) -> None:
    nowhere = f"http://127.0.0.1:{dead_port}"
    write_client_config(stack.url, stack.key, no_saved_config)
    runner = CliRunner()

    from_file = runner.invoke(main, ["list", "--limit", "1"])
    env_beats_file = runner.invoke(main, ["list"], env={"ONEIRO_API_KEY": "oneiro_wrong"})
    flag_beats_env = runner.invoke(
        main, ["list", "--key", stack.key], env={"ONEIRO_API_KEY": "oneiro_wrong"}
    )
    env_url = runner.invoke(main, ["list"], env={"ONEIRO_URL": nowhere})
    flag_url = runner.invoke(main, ["list", "--url", stack.url], env={"ONEIRO_URL": nowhere})

    assert from_file.exit_code == 0, from_file.output
    assert env_beats_file.exit_code == 1 and "Unauthorized" in env_beats_file.stderr
    assert flag_beats_env.exit_code == 0, flag_beats_env.output
    assert env_url.exit_code == 1 and f"cannot connect to the Oneiro API at {nowhere}" in (
        env_url.stderr
    )
    assert flag_url.exit_code == 0, flag_url.output


def test_url_and_key_may_come_before_the_command(stack: Stack, no_saved_config: Path) -> None:
    runner = CliRunner()
    unknown = "00000000-0000-0000-0000-000000000000"
    before = runner.invoke(main, ["--url", stack.url, "--key", stack.key, "status", unknown])
    wrong_before = runner.invoke(main, ["--url", stack.url, "--key", "nope", "status", unknown])
    after_wins = runner.invoke(
        main, ["--url", stack.url, "--key", "nope", "status", unknown, "--key", stack.key]
    )

    assert before.exit_code == 1 and "Job not found" in before.stderr, before.output
    assert wrong_before.exit_code == 1 and "Unauthorized" in wrong_before.stderr
    assert after_wins.exit_code == 1 and "Job not found" in after_wins.stderr


def test_no_key_anywhere_says_where_to_get_one() -> None:
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 1
    assert "no API key: pass --key, set ONEIRO_API_KEY, or run `make run`" in result.stderr


# -- errors ------------------------------------------------------------------------------------


def test_a_wrong_key_is_the_401_in_one_line(stack: Stack) -> None:
    result = oneiro(stack, "status", "00000000-0000-0000-0000-000000000000", "--key", "nope")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: Unauthorized: send 'Authorization: Bearer <key>' with a live API key "
        "(make one with `oneiro keys create --tenant NAME`)\n"
    )


def test_a_bad_param_is_one_readable_line(stack: Stack) -> None:
    result = oneiro(stack, "submit", str(CHELSEA), "--param", "steps=0", "--wait")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("Error: Invalid request: params.steps: ")
    assert "greater than or equal to 1" in result.stderr
    assert result.stdout == ""  # no job was made


def test_a_malformed_param_is_a_usage_error(stack: Stack) -> None:
    result = oneiro(stack, "submit", str(CHELSEA), "--param", "steps")
    assert result.exit_code == 2 and "'steps' is not KEY=VALUE" in result.stderr
    result = oneiro(stack, "submit", str(CHELSEA), "--params-json", "[1]")
    assert result.exit_code == 2 and "must be a JSON object" in result.stderr


def test_an_unreachable_api_is_one_line(dead_port: int) -> None:
    nowhere = f"http://127.0.0.1:{dead_port}"
    result = CliRunner().invoke(main, ["status", "x", "--url", nowhere, "--key", "k"])
    assert result.exit_code == 1
    assert result.stderr == f"Error: cannot connect to the Oneiro API at {nowhere}\n"


# -- the commands --------------------------------------------------------------------------------


def test_submit_wait_shows_progress_and_writes_the_png(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "dream.png"
    result = oneiro(
        stack,
        "submit",
        str(CHELSEA),
        *SMALL,
        "--params-json",
        '{"seed": 3, "steps": 100}',  # --param steps=8 wins
        "--wait",
        "-o",
        str(out),
    )

    assert result.exit_code == 0, result.output
    job_id, written = result.stdout.splitlines()
    assert written == str(out) and png_size(out) == (128, 85)
    percents = [int(p) for p in re.findall(r"(\d+)%\|", result.stderr)]
    assert percents == sorted(percents) and percents[-1] == 100, result.stderr
    assert len({p for p in percents if 0 < p < 100}) >= 3, f"too few steps: {percents}"
    # A step below 8: the bar shows the step under way, not the number of steps.
    assert re.search(r"octave \d/5 step [1-7]/8 ETA \d+:\d\d", result.stderr), result.stderr
    job = stack.job(job_id)
    assert job["status"] == "succeeded" and job["params"]["seed"] == 3
    assert job["params"]["steps"] == 8


def test_param_values_are_json_where_they_parse_and_text_otherwise(stack: Stack) -> None:
    result = oneiro(
        stack,
        "submit",
        str(CHELSEA),
        "--params-json",
        '{"steps": 9, "tv_weight": 0.5}',
        *("--param", "max_dim=64", "--param", "steps=2", "--param", "octaves=1"),
        *("--param", "grad_norm=laplacian", "--param", 'layers=["mixed4"]'),
        *("--param", "preserve_colors=true"),
    )

    assert result.exit_code == 0, result.output
    params = stack.job(result.stdout.strip())["params"]
    assert params["grad_norm"] == "laplacian"  # not JSON: sent as text
    assert list(params["layers"]) == ["mixed4"] and params["preserve_colors"] is True  # JSON
    assert params["steps"] == 2 and params["tv_weight"] == 0.5  # --param over --params-json


def test_status_list_cancel_retry_and_result(stack: Stack, tmp_path: Path) -> None:
    submitted = oneiro(stack, "submit", str(CHELSEA), *SMALL, "--param", "steps=4")
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()

    canceled = oneiro(stack, "cancel", job_id)
    assert canceled.exit_code == 0 and canceled.stdout == f"{job_id} canceled\n"
    stack.wait_until_ended(job_id)
    status = oneiro(stack, "status", job_id)
    listed = oneiro(stack, "list", "--status", "canceled", "--limit", "5")
    again = oneiro(stack, "cancel", job_id)
    too_early = oneiro(stack, "result", job_id, "-o", str(tmp_path / "early.png"))
    retried = oneiro(stack, "retry", job_id)

    canceled_at = re.search(r"status +canceled \(attempt (\d)\)", status.stdout)
    assert status.exit_code == 0 and canceled_at
    assert listed.exit_code == 0 and re.search(rf"^{job_id}  canceled", listed.stdout, re.M)
    assert again.exit_code == 1 and again.stderr == (
        f"Error: Job cannot be canceled: job {job_id} is canceled; only queued or running jobs "
        "can be canceled\n"
    )
    assert too_early.exit_code == 1 and "Result not ready: " in too_early.stderr
    assert not (tmp_path / "early.png").exists()
    assert retried.exit_code == 0 and retried.stdout == f"{job_id} queued\n"

    assert stack.wait_until_ended(job_id)["status"] == "succeeded"
    as_json = oneiro(stack, "status", job_id, "--json")
    newest = oneiro(stack, "list", "--limit", "1")
    fetched = oneiro(stack, "result", job_id, "-o", str(tmp_path / "r.png"))
    unknown = oneiro(stack, "status", "00000000-0000-0000-0000-000000000000")

    assert json.loads(as_json.stdout)["status"] == "succeeded"
    # Canceled while queued (attempt 0) or running (1), whichever came first: one claim more.
    assert json.loads(as_json.stdout)["attempt"] == int(canceled_at.group(1)) + 1
    assert newest.stdout.count("\n") == 1 and newest.stdout.startswith(f"{job_id}  succeeded  100%")
    assert fetched.exit_code == 0 and png_size(tmp_path / "r.png") == (128, 85)
    assert unknown.exit_code == 1
    assert unknown.stderr == (
        "Error: Job not found: there is no job 00000000-0000-0000-0000-000000000000\n"
    )


def test_result_is_not_written_under_another_formats_extension(
    stack: Stack, tmp_path: Path
) -> None:
    submitted = oneiro(stack, "submit", str(CHELSEA), *SMALL, "--param", "output_format=tiff16")
    job_id = submitted.stdout.strip()
    assert stack.wait_until_ended(job_id)["status"] == "succeeded"

    as_png = oneiro(stack, "result", job_id, "-o", str(tmp_path / "dream16.png"))
    as_tif = oneiro(stack, "result", job_id, "-o", str(tmp_path / "dream16.tiff"))

    assert as_png.exit_code == 2 and not (tmp_path / "dream16.png").exists()
    assert "a TIFF" in as_png.stderr and "dream16.tif" in as_png.stderr, as_png.stderr
    assert as_tif.exit_code == 0, as_tif.output
    with Image.open(tmp_path / "dream16.tiff") as image:
        assert image.format == "TIFF"


def test_a_job_canceled_elsewhere_ends_the_wait_non_zero(stack: Stack, tmp_path: Path) -> None:
    # The stack is shared by this module's tests: the seed marks this test's own job, so the
    # canceller never cancels another test's.
    seed = secrets.randbelow(2**31)

    def ours_running(http: Any) -> list[dict[str, Any]]:
        jobs = http.get(f"{stack.url}/v1/jobs?status=running", timeout=5).json()["jobs"]
        return [job for job in jobs if job["params"]["seed"] == seed]

    def cancel_when_running() -> None:
        with stack.http() as http:
            (running,) = wait_for(lambda: ours_running(http), 120, "our job running", every=0.1)
            http.post(f"{stack.url}/v1/jobs/{running['id']}/cancel", timeout=5)

    canceller = threading.Thread(target=cancel_when_running, daemon=True)
    canceller.start()
    result = oneiro(
        stack,
        "submit",
        str(CHELSEA),
        *SMALL[:4],
        "--param",
        "steps=1000",
        "--param",
        f"seed={seed}",
        "-o",
        str(tmp_path / "x.png"),
    )
    canceller.join(10)

    job_id = result.stdout.strip()
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == f"Error: job {job_id} was canceled"
    assert not (tmp_path / "x.png").exists()


# -- the stream: reconnect with Last-Event-ID, else polling --------------------------------------


def _submit(stack: Stack, **params: Any) -> str:
    client = Client(stack.url, stack.key)
    try:
        return str(client.submit(CHELSEA, {"max_dim": 128, "octaves": 5, **params})["id"])
    finally:
        client.close()


def test_a_broken_stream_is_resumed_with_last_event_id(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = stack.url.removeprefix("http://").split(":")
    proxy = Proxy((host, int(port)))
    client = Client(f"http://127.0.0.1:{proxy.port}", stack.key)
    asked: list[str | None] = []
    original = Client.events

    def recording(self: Client, job_id: str, last_event_id: str | None = None) -> Any:
        asked.append(last_event_id)
        return original(self, job_id, last_event_id)

    monkeypatch.setattr(Client, "events", recording)
    # Long enough that the render is still going after two reconnects on a loaded machine.
    job_id = _submit(stack, steps=30)
    seen: list[dict[str, Any]] = []
    try:
        for job in client.follow(job_id, reconnect_delay=0.2):
            seen.append(job)
            # Cut on the second and third events: a reconnect delivers only the latest state,
            # so waiting for a fourth could outlast a quick render.
            if len(seen) in (2, 3) and job["status"] == "running":
                # The link drops mid-stream; the server is reachable again for the reconnect.
                proxy.cut()
                proxy.restore()
    finally:
        client.close()
        proxy.close()

    assert seen[-1]["status"] == "succeeded"
    assert len(asked) >= 3 and asked[0] is None
    assert all(last is not None for last in asked[1:]), asked
    states = [(j["status"], j["attempt"], j["progress"]["fraction"]) for j in seen]
    assert len(states) == len(set(states)), f"a reconnect repeated a state: {states}"


def test_the_job_is_polled_when_the_stream_keeps_failing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Client, job_id: str, last_event_id: str | None = None) -> Iterator[Event]:
        raise ApiError("Bad Gateway: no stream today", 502)
        yield  # a generator, as the real one is

    monkeypatch.setattr(Client, "events", broken)
    client = Client(stack.url, stack.key)
    job_id = _submit(stack, steps=4)
    try:
        seen = list(client.follow(job_id, poll_interval=0.1, reconnect_delay=0.05))
    finally:
        client.close()
    assert seen[-1]["status"] == "succeeded"


# -- Ctrl-C --------------------------------------------------------------------------------------


def _interrupt_at_the_question(
    stack: Stack, tmp_path: Path, answer: Callable[[subprocess.Popen[bytes]], None]
) -> tuple[str, int, str]:
    """Submit a long render with --wait, press Ctrl-C once it runs, `answer` the cancel
    question; the job id, the exit code and what was written to stderr."""
    env = {
        **os.environ,
        "ONEIRO_URL": stack.url,
        "ONEIRO_API_KEY": stack.key,
        "PYTHONUNBUFFERED": "1",
    }
    err = bytearray()
    with subprocess.Popen(
        [sys.executable, "-m", "client.cli", "submit", str(CHELSEA), *SMALL[:4]]
        + ["--param", "steps=1000", "--wait", "-o", str(tmp_path / "never.png")],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Ctrl-C as at a terminal, even where the suite itself runs in the background (`make test
        # &` in a script ignores SIGINT, the child inherits that, and Python then never raises
        # KeyboardInterrupt).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as process:
        assert process.stdout and process.stdin and process.stderr
        reader = threading.Thread(target=_drain, args=(process.stderr, err), daemon=True)
        reader.start()
        try:
            job_id = process.stdout.readline().decode().strip()
            wait_for(lambda: b"octave" in err, 120, "the render to start", every=0.1)
            process.send_signal(signal.SIGINT)
            wait_for(lambda: b"Cancel job" in err, 20, "the question", every=0.1)
            answer(process)
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
            reader.join(5)
    return job_id, code, err.decode(errors="replace")


def _yes(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin
    process.stdin.write(b"y\n")
    process.stdin.close()


def test_ctrl_c_while_waiting_offers_to_cancel_the_job(stack: Stack, tmp_path: Path) -> None:
    job_id, code, text = _interrupt_at_the_question(stack, tmp_path, _yes)

    assert code == 130, text
    assert f"Cancel job {job_id}? [y/N]" in text
    assert f"job {job_id} is canceled" in text
    assert stack.wait_until_ended(job_id, timeout=60)["status"] == "canceled"
    assert not (tmp_path / "never.png").exists()


def _drain(stream: Any, into: bytearray) -> None:
    while chunk := os.read(stream.fileno(), 4096):
        into.extend(chunk)


def test_list_pages_with_cursor_and_says_there_is_more(stack: Stack) -> None:
    for _ in range(3):
        assert oneiro(stack, "submit", str(CHELSEA), *SMALL, "--param", "steps=1").exit_code == 0
    with stack.http() as http:
        total = len(
            http.get(f"{stack.url}/v1/jobs", params={"limit": 100}, timeout=10).json()["jobs"]
        )
    seen: list[str] = []
    args = ["list", "--limit", "2"]
    for _ in range(100):
        page = oneiro(stack, *args)
        assert page.exit_code == 0, page.output
        seen += [line.split()[0] for line in page.stdout.splitlines()]
        more = re.search(r"^more jobs: oneiro list --limit 2 --cursor (\S+)$", page.stderr, re.M)
        if more is None:
            break
        args = ["list", "--limit", "2", "--cursor", more[1]]
    assert len(seen) == len(set(seen)) == total >= 3


def test_a_second_ctrl_c_at_the_question_leaves_the_job_running(
    stack: Stack, tmp_path: Path
) -> None:
    job_id, code, text = _interrupt_at_the_question(
        stack, tmp_path, lambda process: process.send_signal(signal.SIGINT)
    )
    try:
        assert code == 130, text
        assert f"job {job_id} goes on; `oneiro status {job_id}` shows it" in text
        assert "Aborted!" not in text
        assert stack.job(job_id)["status"] in ("queued", "running")
    finally:
        with stack.http() as http:
            http.post(f"{stack.url}/v1/jobs/{job_id}/cancel", timeout=10)


def test_estimate_says_what_a_submit_would_cost_before_sending(stack: Stack) -> None:
    told = oneiro(stack, "estimate", str(CHELSEA), *SMALL, "--json")
    assert told.exit_code == 0, told.stderr
    estimate = json.loads(told.stdout)
    assert estimate["memory"]["peak_bytes"] > 0
    plain = oneiro(stack, "estimate", str(CHELSEA), *SMALL)
    assert plain.exit_code == 0, plain.stderr
    work = estimate["estimate"]["megapixel_steps"]
    assert f"work:   {work} megapixel-steps" in plain.stdout
    assert "memory: " in plain.stdout and "GiB at most" in plain.stdout
    sent = oneiro(stack, "submit", str(CHELSEA), *SMALL)
    job = Client(stack.url, stack.key).job(sent.stdout.strip())
    assert job["estimate"]["megapixel_steps"] == work
    refused = oneiro(stack, "estimate", str(CHELSEA), "--param", "steps=0")
    assert refused.exit_code == 1 and refused.stderr.startswith("Error: Invalid request")


def test_status_of_a_queued_job_says_where_it_stands(stack: Stack) -> None:
    # The one worker busy with a long job: the next waits, queued, first in line.
    long_job = oneiro(stack, "submit", str(CHELSEA), *SMALL, "--param", "steps=1000")
    waiting = oneiro(stack, "submit", str(CHELSEA), *SMALL)
    long_id, waiting_id = long_job.stdout.strip(), waiting.stdout.strip()
    try:
        wait_for(lambda: stack.job(long_id)["status"] == "running", 60, "the long job to start")
        shown = oneiro(stack, "status", waiting_id)
        standing = stack.job(waiting_id)["queue"]
    finally:
        with stack.http() as http:
            for job_id in (waiting_id, long_id):
                http.post(f"{stack.url}/v1/jobs/{job_id}/cancel", timeout=10)

    assert shown.exit_code == 0, shown.output
    assert standing is not None and standing["position"] == 1
    assert re.search(
        r"^queue +position 1; (starts in about \d+:\d\d|start time not known yet)$",
        shown.stdout,
        re.M,
    ), shown.stdout


# -- large inputs as resumable uploads ---------------------------------------------------------


def test_a_large_video_goes_as_an_upload_that_a_second_run_resumes(
    stack: Stack, tmp_path: Path
) -> None:
    clip = tmp_path / "big.mp4"
    write_padded_clip(clip, 40 * 1024 * 1024, size=(96, 64), frames=3, audio=False)
    host, port = stack.url.removeprefix("http://").split(":")
    proxy = Proxy((host, int(port)), server_timeout=None)
    via = {"ONEIRO_URL": f"http://127.0.0.1:{proxy.port}"}
    video = ["--param", "steps=1", "--param", "octaves=1", "--param", "tile_size=96"]
    try:
        proxy.cut_after(20 * 1024 * 1024)  # in the third 8 MiB chunk
        first = oneiro(stack, "submit", str(clip), *video, env=via)
        assert first.exit_code == 1
        assert re.search(r"upload stopped at \d+ of 41943040 bytes: run the same", first.stderr)
        proxy.restore()
        second = oneiro(stack, "submit", str(clip), *video, env=via)
    finally:
        proxy.close()
    assert second.exit_code == 0, second.output
    assert "uploading big.mp4" in second.stderr and "40.0M/40.0M" in second.stderr
    job = stack.job(second.stdout.strip())
    assert job["kind"] == "video" and job["progress"]["frames"] == 3
    with Session(create_engine(stack.database_url)) as session:
        # Resumed, not sent again: one upload, the job's input.
        uploads = list(session.scalars(select(Upload)))
        assert [upload.job_id for upload in uploads] == [uuid.UUID(job["id"])]
        started = re.search(r"uploading big.mp4:\s+(\d+)%", second.stderr)
        assert started and int(started.group(1)) >= 40, second.stderr
    assert (
        json.loads((Path(os.environ["ONEIRO_CLIENT_CONFIG"]).parent / "uploads.json").read_text())
        == {}
    )


def test_an_upload_goes_on_when_a_late_patch_moved_its_offset(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The PATCH of a dropped connection may still be storing when a resumed run asks the
    # offset: the resumed run's first PATCH then meets a 409, asks again and goes on.
    from client.uploads import send_upload

    data = os.urandom(20 * 1024 * 1024)
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    client = Client(stack.url, stack.key)
    original = Client.request
    late: list[int] = []

    def request(self: Client, method: str, target: str, **kwargs: Any) -> Any:
        if method == "PATCH" and not late:
            offset = int(kwargs["headers"]["Upload-Offset"])
            late.append(offset)  # the old connection's bytes land first
            original(self, method, target, **{**kwargs, "data": data[offset : offset + 1000]})
        return original(self, method, target, **kwargs)

    monkeypatch.setattr(Client, "request", request)
    upload = send_upload(client, path)
    client.close()
    assert late == [0]
    stored = Path(stack.settings.storage_url) / "uploads" / upload / "data"
    assert stored.read_bytes() == data


def test_estimate_of_a_clip_says_what_the_video_job_says(stack: Stack, tmp_path: Path) -> None:
    # Issue 23.5: `oneiro estimate clip.mp4` must say what the job will say once submitted.
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(clip_bytes((64, 48), frames=4, audio=False))
    small = ["--param", "steps=2", "--param", "octaves=1"]

    told = oneiro(stack, "estimate", str(clip), *small, "--json")
    assert told.exit_code == 0, told.stderr
    sent = oneiro(stack, "submit", str(clip), *small)
    assert sent.exit_code == 0, sent.stderr
    job = Client(stack.url, stack.key).job(sent.stdout.strip())

    estimate = json.loads(told.stdout)
    assert job["kind"] == "video" and job["frames"] == 4
    assert job["estimate"]["megapixel_steps"] == estimate["estimate"]["megapixel_steps"]
    assert estimate["warnings"] == []
