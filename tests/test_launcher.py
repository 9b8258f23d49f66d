"""`make run`'s launcher: it starts a Redis of its own where none answers at a local REDIS_URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.launcher import NoRedis, ensure_redis
from shared.localredis import redis_answers
from shared.settings import Settings, load_settings
from tests.conftest import free_port


def settings_for(redis_url: str, tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", redis_url=redis_url)


def test_a_redis_is_started_where_none_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(5):
        url = f"redis://127.0.0.1:{free_port()}/0"
        assert not redis_answers(url)
        try:
            server = ensure_redis(settings_for(url, tmp_path))
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
    assert ensure_redis(settings_for(redis_url, tmp_path)) is None


def test_no_redis_on_another_machine_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    url = "redis://192.0.2.1:6379/0"  # TEST-NET-1: never answers
    with pytest.raises(NoRedis, match=r"no Redis answers at REDIS_URL=redis://192\.0\.2\.1"):
        ensure_redis(settings_for(url, tmp_path))
