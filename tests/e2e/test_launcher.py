"""`make run` (dev.launcher): Ctrl-C stops every child and frees the port, a crashed child is
restarted, a port in use is said before anything starts."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dev.launcher import NoRedis, ensure_redis, maintenance_command, webhooks_command
from shared.queue import redis_answers
from shared.settings import Settings, load_settings
from tests.utils import ROOT, free_port, http_answers, process_env, wait_for


def _launcher_env(settings: Settings, port: int) -> dict[str, str]:
    return process_env(settings, ONEIRO_API_BIND=f"127.0.0.1:{port}", ONEIRO_LOG_FORMAT="text")


def _start(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    # A session of its own, as a terminal's foreground job: Ctrl-C reaches its whole group.
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dev.launcher"],
            cwd=ROOT,
            env=_launcher_env(settings, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _children(log: Path) -> dict[str, list[int]]:
    """The pids of each child the launcher said it started, in order."""
    started: dict[str, list[int]] = {}
    for name, pid in re.findall(r"oneiro: (.+?) started \(pid (\d+)\)", log.read_text()):
        started.setdefault(name, []).append(int(pid))
    return started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone in all but name: it holds no port.
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return status != "Z"


def _in_group(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def launcher_settings(settings: Settings) -> Iterator[Settings]:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the launcher is the same on either database; SQLite is enough")
    yield settings


def _kill_everything(launcher: subprocess.Popen[bytes], log: Path) -> None:
    """After a test, pass or fail: the launcher and every child it started (each leads a
    session of its own, so killing the launcher's group does not reach them)."""
    if launcher.poll() is None:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    for pid in [pid for pids in _children(log).values() for pid in pids]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _start_and_interrupt(settings: Settings, port: int, log: Path) -> list[int]:
    """Start the launcher, wait for the API, press Ctrl-C; the pids of the children."""
    launcher = _start(settings, port, log)
    try:
        wait_for(lambda: http_answers(f"http://127.0.0.1:{port}/healthz"), 90, "the API")
        # The API, the render worker, the maintenance worker (with beat) and the webhooks worker.
        wait_for(lambda: len(_children(log)) == 4, 30, "the four children to start")
        children = [pid for pids in _children(log).values() for pid in pids]
        # Ctrl-C at a terminal: SIGINT to the foreground process group.
        pressed = time.monotonic()
        os.killpg(launcher.pid, signal.SIGINT)
        assert launcher.wait(timeout=20) == 0, log.read_text()
        # Each child stopped on its one SIGTERM; none had to be killed (the hung gunicorn
        # worker of old took 22-30 s and SIGKILL).
        assert time.monotonic() - pressed < 10
        output = log.read_text()
        assert "did not stop" not in output
        # Nor did any child crash on its way out (the API's processes once raised gevent's
        # BlockingSwitchOutError in their SIGTERM handler and exited with code 255).
        assert "Traceback" not in output and "exited with code" not in output, output
    finally:
        _kill_everything(launcher, log)
    return children


@pytest.mark.slow
def test_ctrl_c_stops_every_child_and_frees_the_port_five_times(
    launcher_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    for round_ in range(5):
        children = _start_and_interrupt(launcher_settings, port, tmp_path / f"run-{round_}.log")
        # Every child, and every process a child started, is gone, within the wait above.
        assert [pid for pid in children if _alive(pid)] == []
        assert [pid for child in children for pid in _in_group(child)] == []
        assert _port_free(port), f"round {round_}: port {port} still held"


def test_a_killed_worker_is_restarted_and_the_api_stays_up(
    launcher_settings: Settings, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "launcher.log"
    launcher = _start(launcher_settings, port, log)
    try:
        wait_for(lambda: http_answers(f"http://127.0.0.1:{port}/healthz"), 90, "the API")
        wait_for(lambda: "worker" in _children(log), 30, "the worker to start")
        [worker] = _children(log)["worker"]
        # As the kernel's out-of-memory killer would.
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: len(_children(log)["worker"]) == 2, 30, "the worker to be restarted")
        assert re.search(
            r"oneiro: worker exited with code -9; restarting it in \d+s", log.read_text()
        )
        assert launcher.poll() is None
        assert http_answers(f"http://127.0.0.1:{port}/healthz")
        assert len(_children(log)["API"]) == 1
        os.killpg(launcher.pid, signal.SIGINT)
        assert launcher.wait(timeout=20) == 0
    finally:
        _kill_everything(launcher, log)


def test_a_child_that_keeps_crashing_at_start_stops_everything(
    launcher_settings: Settings, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "launcher.log"
    # Every worker exits at once, every time, as one with a broken install would.
    env = _launcher_env(launcher_settings, port)
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, dev.launcher as l; "
                "l.worker_command = lambda *_, **__: "
                "[sys.executable, '-c', 'raise SystemExit(3)']; "
                "sys.exit(l.main())",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert launcher.wait(timeout=90) == 1
    finally:
        _kill_everything(launcher, log)
    text = log.read_text()
    assert re.search(r"oneiro: .*worker exited with code 3 3 times right after starting", text)
    assert _port_free(port)


def test_a_second_launcher_on_a_port_in_use_says_what_to_do(
    launcher_settings: Settings, no_saved_config: Path
) -> None:
    port = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "dev.launcher"],
            cwd=ROOT,
            env=_launcher_env(launcher_settings, port),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert second.returncode == 2
    assert f"127.0.0.1:{port} is in use" in second.stderr
    assert "ONEIRO_API_BIND=" in second.stderr
    # Nothing was started: no child, and no key was made.
    assert "started" not in second.stdout
    assert not no_saved_config.exists()
    assert time.monotonic() - started < 30


def test_the_maintenance_worker_is_one_process_whatever_the_cores(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Maintenance runs are short and locked (a second at once skips); deliveries, which wait
    # on other servers, have their own threaded worker. Neither takes a process per core.
    settings = load_settings(data_dir=tmp_path)
    for cores in (2, 64):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        command = maintenance_command(settings, tmp_path / "schedule")
        assert command[command.index("--concurrency") + 1] == "1"
        hooks = webhooks_command(settings)
        assert hooks[hooks.index("--pool") + 1] == "threads"


def _redis_settings(redis_url: str, tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", redis_url=redis_url)


def test_a_redis_is_started_where_none_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(5):
        url = f"redis://127.0.0.1:{free_port()}/0"
        assert not redis_answers(url)
        try:
            server = ensure_redis(_redis_settings(url, tmp_path))
        except RuntimeError:  # another process took the port in between: another one
            continue
        break
    else:
        pytest.fail("no free port stayed free long enough")
    try:
        assert server is not None and server.poll() is None
        assert redis_answers(url)
        assert f"no Redis at {url}; starting one" in capsys.readouterr().out
        assert (tmp_path / "data" / "redis").is_dir()
    finally:
        assert server is not None
        server.terminate()
        server.wait(timeout=10)
    assert not redis_answers(url)


def test_a_redis_that_answers_is_used_as_it_is(redis_url: str, tmp_path: Path) -> None:
    assert ensure_redis(_redis_settings(redis_url, tmp_path)) is None


def test_no_redis_on_another_machine_is_an_error_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing is sent to the other machine: tests reach only this one. It does not answer.
    monkeypatch.setattr("dev.launcher.redis_answers", lambda _url: False)
    url = "redis://redis.example.com:6379/0"
    with pytest.raises(NoRedis, match=r"no Redis answers at REDIS_URL=redis://redis\.example"):
        ensure_redis(_redis_settings(url, tmp_path))
