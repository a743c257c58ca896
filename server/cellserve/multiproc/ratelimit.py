"""A warning that is logged at most once per interval, with the count of what it stood for.

Malformed internal messages are dropped and logged; a peer that sends garbage in a loop must
not turn the log into the bottleneck."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, message: str, interval_s: float = 10.0) -> None:
        self._log = logger
        self._message = message
        self._interval_s = interval_s
        self._next_at = 0.0
        self._suppressed = 0

    def warning(self) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._log.warning("%s%s", self._message, more)
        self._suppressed = 0
        self._next_at = now + self._interval_s
