"""Requests that never become valid messages, and requests refused before they reach a handler.

gRPC deserializes a request before the handler sees it; a deserializer that raises makes gRPC
end the call with UNKNOWN and the exception's class name (unary), or break the request
iterator of a stream (INTERNAL for the whole stream). ``guard`` wraps a deserializer so that
bytes that do not parse (truncated or corrupt protobuf, a text field that is not valid UTF-8)
become a ``RejectedRequest`` instead: the unary wrapper in ``status`` answers it with
INVALID_ARGUMENT, and the Session stream answers it in-band and goes on reading.

Each one is counted (``MalformedCounter`` -> ``cellserve_malformed_requests_total``) and
logged at most once per ``malformed_log_interval_s``, without a traceback: a fuzzer must not
be able to fill the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import CellserveError, InvalidInput

log = logging.getLogger("cellserve.api")

MALFORMED_MESSAGE = (
    "the request could not be decoded: it is not a valid protobuf message of this method, "
    "or a text field holds bytes that are not valid UTF-8"
)


class RejectedRequest:
    """Stands in for a request that will be answered with ``error``. Duck-types what the
    Session stream reads of a request (``request_id``, ``WhichOneof``)."""

    __slots__ = ("error", "op", "request_id")

    def __init__(self, error: CellserveError, request_id: int = 0, op: str | None = None) -> None:
        self.error = error
        self.request_id = request_id
        self.op = op

    def WhichOneof(self, group: str) -> str | None:  # noqa: N802 (the protobuf method's name)
        return self.op


class MalformedCounter:
    """Counts undecodable requests per method; logs at most once per interval."""

    def __init__(
        self,
        interval_s: float,
        count: Callable[[str], None] = lambda method: None,
        clock: Callable[[], float] = time.monotonic,
        logs: bool = True,
    ) -> None:
        """``logs``: False where another process logs these requests (a frontend's core)."""
        self._interval = interval_s
        self._logs = logs
        self._count = count
        self._clock = clock
        self._last_log: float | None = None
        self._since_log = 0

    def seen(self, method: str, n: int = 1) -> None:
        for _ in range(n):
            self._count(method)
        self._since_log += n
        if not self._logs:
            return
        now = self._clock()
        if self._last_log is None or now - self._last_log >= self._interval:
            log.warning(
                "undecodable request to %s (%d since the last such line; answered INVALID_ARGUMENT)",
                method,
                self._since_log,
            )
            self._last_log = now
            self._since_log = 0


def guard(
    deserializer: Callable[[bytes], Any] | None, method: str, counter: MalformedCounter
) -> Callable[[bytes], Any]:
    """``deserializer`` that returns a ``RejectedRequest`` instead of raising."""
    if deserializer is None:
        return lambda raw: raw

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # noqa: BLE001 (any parse failure: the bytes are the client's fault)
            counter.seen(method)
            return RejectedRequest(InvalidInput(MALFORMED_MESSAGE))

    return deserialize
