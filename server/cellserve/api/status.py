"""The one place where errors become gRPC statuses.

``status_of(exc)`` maps any exception to a ``Status``; both the call wrapper (``api.calls``:
unary and server-streaming calls, and stream-level failures) and the streams' in-band errors
use it. Domain errors (``cellserve.errors``) carry messages written for clients. Anything else
is a bug: the client gets INTERNAL with a generic message and the server logs one line with
the exception, so no path, library message or internal name ever reaches a client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from ..errors import CLIENT_ERRORS, CapacityExceeded, OffsetConflict

log = logging.getLogger("cellserve.api")

RETRY_AFTER_MD = "retry-after-ms"
EXPECTED_OFFSET_MD = "expected-offset"
INTERNAL_MESSAGE = "internal error; the server logged the details"


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    message: str
    expected_offset: int | None = None
    retry_after_ms: int = 0

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        md: list[tuple[str, str]] = []
        if self.retry_after_ms:
            md.append((RETRY_AFTER_MD, str(self.retry_after_ms)))
        if self.expected_offset is not None:
            md.append((EXPECTED_OFFSET_MD, str(self.expected_offset)))
        return tuple(md)


def status_of(exc: BaseException, where: str = "") -> Status:
    """The status a client sees for ``exc``; logs unexpected exceptions (once, here)."""
    if isinstance(exc, CLIENT_ERRORS):  # each carries its code (cellserve.errors)
        code = grpc.StatusCode[type(exc).code]
        if isinstance(exc, CapacityExceeded):
            ms = max(1, round(exc.retry_after_s * 1000))
            return Status(code, f"{exc} (retry after {ms} ms)", retry_after_ms=ms)
        if isinstance(exc, OffsetConflict):
            return Status(code, str(exc), expected_offset=exc.expected)
        return Status(code, str(exc))
    log.error("unexpected error in %s", where or "a call", exc_info=exc)
    return Status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
