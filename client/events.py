"""Server-Sent Events, read as they arrive: the job event stream `oneiro submit --wait` follows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry_ms: int | None = None


class EventParser:
    """Incremental Server-Sent Events parser (the WHATWG event-stream rules): feed it bytes as
    they arrive, in chunks cut anywhere, and take the complete events out."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._retry: int | None = None
        self.last_id: str | None = None
        self._id_changed = False
        self._first = True

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """The events that `chunk` completes."""
        self._buffer += chunk
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return
            end, after = cut
            raw, self._buffer = self._buffer[:end], self._buffer[after:]
            line = raw.decode("utf-8", errors="replace")
            if self._first:
                line = line.removeprefix("\ufeff")
                self._first = False
            event = self._line(line)
            if event is not None:
                yield event

    def finish(self) -> Iterator[Event]:
        """At the end of the stream: a CR held back as the possible start of a CRLF ends a line
        after all; an event without its blank line is dropped, as the rules say."""
        if self._buffer.endswith(b"\r"):
            yield from self.feed(b"\n")
        self._buffer = b""

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment: keep-alives
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
            self._id_changed = True
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, event, retry = self._data, self._event, self._retry
        self._data, self._event, self._retry = [], "", None
        changed, self._id_changed = self._id_changed, False
        if not data:
            return Event("", event or "message", self.last_id, retry) if retry or changed else None
        return Event("\n".join(data), event or "message", self.last_id, retry)


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the first line of `buffer` ends and the next begins (CRLF, LF or CR), or None.

    A CR at the very end is not an end yet: the LF of a CRLF may be in the next chunk.
    """
    for index, byte in enumerate(buffer):
        if byte == 0x0A:
            return index, index + 1
        if byte == 0x0D:
            if index + 1 == len(buffer):
                return None
            return index, index + 2 if buffer[index + 1] == 0x0A else index + 1
    return None


def parse_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """The events of a whole stream given as chunks of bytes."""
    parser = EventParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.finish()
