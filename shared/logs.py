"""Logging for every Oneiro process: one JSON object per line on stderr, each record carrying
the job it is about (`job_id`, `attempt`, `worker`) where that is known."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from shared.settings import Settings

# Every record has these keys, null when unknown, so a log query never has to ask whether a
# field exists.
JOB_FIELDS = ("job_id", "attempt", "worker")

# The job the current code runs for. A context variable, not a thread-local, so that it is
# set per request in the API's threads and per job in the worker, without passing it down.
_context: ContextVar[dict[str, Any] | None] = ContextVar("oneiro_log_context", default=None)


class JobContextFilter(logging.Filter):
    """Adds the job fields of the current context to every record that passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get() or {}
        for name in JOB_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, context.get(name))
        return True


def bind(**fields: Any) -> Token[dict[str, Any] | None]:
    """Add `fields` to the log context until `unbind` is called with the returned token."""
    return _context.set({**(_context.get() or {}), **fields})


def unbind(token: Token[dict[str, Any] | None]) -> None:
    """Restore the log context as it was before the `bind` that returned `token`."""
    _context.reset(token)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Records logged inside the block carry `fields` (job_id, attempt, worker)."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Send every record to `stream` (stderr) in the settings' format and level.

    Replaces the handler an earlier call installed, so calling it again (an app built twice, a
    worker's signal) never doubles the lines; handlers others added are left alone.
    """
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobContextFilter())
    log_format = settings.log_format
    if log_format == "auto":
        log_format = "text" if _is_terminal(stream) else "json"
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                ["levelname", "name", "message", *JOB_FIELDS],
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp=True,
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [job=%(job_id)s attempt=%(attempt)s "
                "worker=%(worker)s] %(message)s"
            )
        )
    handler._oneiro = True  # type: ignore[attr-defined]  # our mark on a stdlib handler
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_oneiro", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a stream without a file, or one already closed
        return False
