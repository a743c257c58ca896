"""The exceptions of cellserve-client, and how gRPC failures become them.

Hierarchy (every exception the SDK raises on purpose is a ``CellserveError``)::

    CellserveError                 base class; ``code`` is the gRPC status name when there is one
    ├── InvalidInput               INVALID_ARGUMENT, OUT_OF_RANGE: the request is malformed
    ├── NotFound                   NOT_FOUND (raised as one of its two subclasses)
    │   ├── SessionNotFound        the session is unknown, expired, or another owner's
    │   └── ModelNotFound          the server has no model of that name
    ├── OffsetConflict             ABORTED: the append offset was not the session position;
    │                              ``expected_offset`` says which offset the server wants
    ├── PreconditionFailed         FAILED_PRECONDITION: e.g. a snapshot of other weights or an
    │                              expired one, a rewind beyond the server's window
    ├── CapacityExceeded           RESOURCE_EXHAUSTED: a server cap or the tenant's quota;
    │                              ``retry_after`` (seconds) is the server's hint
    ├── Unavailable                UNAVAILABLE: the server is draining or cannot be reached
    │   └── FailoverFailed         a session could not be moved to any server within its retry
    │                              budget (``__cause__`` is the last failure)
    ├── Timeout                    DEADLINE_EXCEEDED: the call took longer than its timeout
    ├── Unauthenticated            UNAUTHENTICATED: no credentials, or ones the server refuses
    ├── PermissionDenied           PERMISSION_DENIED: authenticated, but the object is another
    │                              tenant's (e.g. resuming its snapshot)
    ├── Unimplemented              UNIMPLEMENTED: the server does not offer the call (older)
    ├── CancelledError             CANCELLED: the call was cancelled
    ├── ClosedError                the session or client was closed by this process (no status)
    └── InternalError              INTERNAL (the server's own), UNKNOWN, DATA_LOSS, or a code this
                                   SDK does not know: a server-side bug

Each status maps to exactly one class (``STATUS_CLASSES``; client/README.md has the table and
a test provokes each row from a real server). One transport case differs: an INTERNAL that
gRPC core raises for a torn-down connection (not the server's fixed message) is a broken
connection, ``Unavailable``.

Both the status of a failed call (``from_rpc_error``) and an in-band error of the session
stream (``from_code``) go through the same table, so a caller sees the same exception type
whichever transport a session uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

RETRY_AFTER_MD = "retry-after-ms"
EXPECTED_OFFSET_MD = "expected-offset"


class CellserveError(Exception):
    """Base class of every error the SDK raises on purpose."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidInput(CellserveError):
    """The server rejected the request as malformed (INVALID_ARGUMENT)."""


class NotFound(CellserveError):
    """Something the request names does not exist (NOT_FOUND)."""


class SessionNotFound(NotFound):
    """The session is unknown to the server: expired, closed, or owned by another credential."""


class ModelNotFound(NotFound):
    """The server has no model of that name."""


class OffsetConflict(CellserveError):
    """An append did not carry the session position (ABORTED)."""

    def __init__(self, message: str, *, code: str | None = None, expected_offset: int | None = None) -> None:
        super().__init__(message, code=code)
        self.expected_offset = expected_offset


class PreconditionFailed(CellserveError):
    """The session is not in a state the request needs (FAILED_PRECONDITION)."""


class CapacityExceeded(CellserveError):
    """A server limit was hit (RESOURCE_EXHAUSTED); wait ``retry_after`` seconds and retry."""

    def __init__(self, message: str, *, code: str | None = None, retry_after: float = 0.0) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(CellserveError):
    """The server is shutting down or cannot be reached (UNAVAILABLE, a broken connection);
    ``retry_after`` (seconds, 0: none given) is the server's hint when it sent one."""

    def __init__(self, message: str, *, code: str | None = None, retry_after: float = 0.0) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class FailoverFailed(Unavailable):
    """A session could not be resumed on any target within its failover budget."""


class Timeout(CellserveError):
    """The call did not finish within its timeout (DEADLINE_EXCEEDED)."""


class Unauthenticated(CellserveError):
    """The credentials were missing or refused (UNAUTHENTICATED)."""


class PermissionDenied(CellserveError):
    """The credentials are good but the object belongs to another tenant (PERMISSION_DENIED),
    e.g. a snapshot blob another tenant took."""


class Unimplemented(CellserveError):
    """The server does not offer this call (UNIMPLEMENTED): it runs an older version."""


class CancelledError(CellserveError):
    """The call was cancelled (CANCELLED)."""


class ClosedError(CellserveError):
    """The session or the client was closed by this process."""


class InternalError(CellserveError):
    """The server failed on its own (INTERNAL, UNKNOWN, or a code this SDK does not know)."""


# The one table from status to exception; client/README.md shows it and a test provokes each
# row. Codes absent here (INTERNAL, UNKNOWN, DATA_LOSS, ALREADY_EXISTS...) are InternalError.
STATUS_CLASSES: dict[grpc.StatusCode, type[CellserveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
    grpc.StatusCode.NOT_FOUND: SessionNotFound,
    grpc.StatusCode.ABORTED: OffsetConflict,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionFailed,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CapacityExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.CANCELLED: CancelledError,
}
_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def from_code(
    code: grpc.StatusCode | int,
    message: str,
    *,
    expected_offset: int | None = None,
    retry_after_ms: int = 0,
    not_found: type[NotFound] = SessionNotFound,
) -> CellserveError:
    """The exception for a status code (an enum member, or its number as the stream sends it).

    ``not_found`` picks the NOT_FOUND subclass: the status alone cannot say whether the missing
    thing was a session or a model, the call that failed can.
    """
    if isinstance(code, int):
        code = _CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    name = code.name
    cls = STATUS_CLASSES.get(code, InternalError)
    if cls is SessionNotFound:
        cls = not_found
    if cls is OffsetConflict:
        return OffsetConflict(message, code=name, expected_offset=expected_offset)
    if cls is CapacityExceeded:
        return CapacityExceeded(message, code=name, retry_after=retry_after_ms / 1000.0)
    if cls is Unavailable:
        return Unavailable(message, code=name, retry_after=retry_after_ms / 1000.0)
    return cls(message, code=name)


def _metadata_int(metadata: Iterable[tuple[str, Any]] | None, key: str) -> int | None:
    for k, v in metadata or ():
        if k == key:
            try:
                return int(v.decode() if isinstance(v, bytes) else v)
            except ValueError:
                return None
    return None


# The one message cellserve's own INTERNAL answers carry (cellserve.api.status.INTERNAL_MESSAGE;
# a test keeps the two equal). An INTERNAL with any other message did not come from the server's
# handler but from the transport, e.g. gRPC core seeing a connection torn down mid-stream.
SERVER_INTERNAL_MESSAGE = "internal error; the server logged the details"


# What gRPC core reports when the two ends disagree about TLS, and what it means. Neither end
# can tell the other in words (no call exists yet), so the client reads the handshake error.
_TLS_HINTS: tuple[tuple[str, str], ...] = (
    (
        "WRONG_VERSION_NUMBER",
        "this client speaks TLS but the server answered in plaintext: connect without tls= (or "
        "start the server with --tls-cert/--tls-key)",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "the server's certificate is not signed by a CA this client trusts: pass that CA as tls='ca.pem'",
    ),
    (
        "Socket closed",
        "the server closed the connection while it was being set up: a TLS server does that to a "
        "plaintext client (pass tls='ca.pem'), an mTLS server to a client without a certificate "
        "(pass client_cert= and client_key=); or the server went away",
    ),
)


def connection_hint(details: str) -> str | None:
    """The likely cause of a failed connection, read from gRPC core's words (TLS mismatches)."""
    if "failed to connect" not in details:
        return None
    return next((hint for marker, hint in _TLS_HINTS if marker in details), None)


def from_rpc_error(err: grpc.RpcError, *, not_found: type[NotFound] = SessionNotFound) -> CellserveError:
    """The exception for a failed call; reads the retry hint and the expected offset from the
    trailing metadata, where the server puts them.

    INTERNAL raised by the transport rather than by the server (a killed server can surface as
    "Internal error from Core") is a broken connection: ``Unavailable``, which fails over.
    Offsets make the retry safe."""
    code: grpc.StatusCode = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else None
    if code == grpc.StatusCode.INTERNAL and details != SERVER_INTERNAL_MESSAGE:
        return Unavailable(f"connection failed: {details or 'internal transport error'}", code=code.name)
    hint = connection_hint(details or "") if code == grpc.StatusCode.UNAVAILABLE else None
    if hint is not None:
        details = f"{hint} ({details})"
    trailing = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else None
    return from_code(
        code,
        details or code.name.lower(),
        expected_offset=_metadata_int(trailing, EXPECTED_OFFSET_MD),
        retry_after_ms=_metadata_int(trailing, RETRY_AFTER_MD) or 0,
        not_found=not_found,
    )
