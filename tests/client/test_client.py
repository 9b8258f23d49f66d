"""The client without a server: the event-stream parser and where the API and key come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.config import resolve_config, write_client_config
from client.events import Event, parse_events


def test_the_parser_follows_the_event_stream_rules() -> None:
    stream = (
        b"\xef\xbb\xbf: a comment first\r\n"
        b"retry: 2500\r\n"
        b'id: running:1:0.5\r\nevent: running\r\ndata: {"a":\r\ndata:1}\r\n\r\n'
        b"data\n\n"  # a field without a colon: data is the empty string
        b"id: x\0y\ndata: the id with NUL is ignored\n\n"
        b"id\ndata: an empty id resets the last id\n\n"
        b"data: no blank line at the end is no event"
    )
    expected = [
        Event('{"a":\n1}', "running", "running:1:0.5", 2500),
        Event("", "message", "running:1:0.5"),
        Event("the id with NUL is ignored", "message", "running:1:0.5"),
        Event("an empty id resets the last id", "message", ""),
    ]
    for size in (1, 2, 3, 7, len(stream)):  # chunks cut anywhere, CR and LF of CRLF apart too
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        got = list(parse_events(chunks))
        # A field line `data` alone makes an event of empty data; one that holds no data at all
        # (a bare blank line) is no event.
        assert got == expected, size


def test_a_lone_cr_ends_a_line() -> None:
    assert list(parse_events([b"data: a\r", b"\r", b"data: b\r\r"])) == [
        Event("a"),
        Event("b"),
    ]


def test_config_comes_from_flags_then_environment_then_the_saved_file(
    no_saved_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_config() == resolve_config(None, None)
    assert resolve_config().url == "http://127.0.0.1:8000" and resolve_config().key is None
    write_client_config("http://file:1", "file-key", no_saved_config)
    assert (resolve_config().url, resolve_config().key) == ("http://file:1", "file-key")
    monkeypatch.setenv("ONEIRO_URL", "http://env:2/")
    monkeypatch.setenv("ONEIRO_API_KEY", "env-key")
    assert (resolve_config().url, resolve_config().key) == ("http://env:2", "env-key")
    flagged = resolve_config("http://flag:3", "flag-key")
    assert (flagged.url, flagged.key) == ("http://flag:3", "flag-key")
    monkeypatch.delenv("ONEIRO_API_KEY")
    assert resolve_config().key == "file-key"  # each value on its own
