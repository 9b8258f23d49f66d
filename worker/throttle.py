"""A throttle: lets something happen at most once per interval of `time.monotonic()`."""

from __future__ import annotations

import time


class Throttle:
    """At most once per `interval` seconds. Open at first, unless `closed_first`: then the
    first is due one interval after it is made."""

    def __init__(self, interval: float, closed_first: bool = False) -> None:
        self.interval = interval
        self.last = time.monotonic() if closed_first else float("-inf")

    def due(self, now: float | None = None) -> bool:
        """Whether an interval has passed since the last time (without taking it)."""
        return (time.monotonic() if now is None else now) - self.last >= self.interval

    def mark(self, now: float | None = None) -> None:
        """It happened now: the next is due an interval from now."""
        self.last = time.monotonic() if now is None else now

    def take(self) -> bool:
        """Whether it may happen now; if so, counted as happened now."""
        now = time.monotonic()
        if not self.due(now):
            return False
        self.mark(now)
        return True
