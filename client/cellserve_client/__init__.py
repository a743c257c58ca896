"""cellserve-client: typed sync and asyncio client for cellserve.

    with Client("localhost:50051") as client, client.open() as session:
        prediction = session.append("hello wor")
        prediction.top            # (("l", 0.91), ("d", 0.03), ...)
        for chunk in session.complete(max_chars=20):
            print(chunk.text, end="")

``AsyncClient``/``AsyncSession`` have the same shape with ``await``. Sessions survive the loss
of their server: they snapshot themselves, and on UNAVAILABLE, a broken connection or a
NOT_FOUND for a lost session they resume elsewhere (``FailoverPolicy``) without the caller
noticing; errors another server cannot fix (a quota, a refused credential, bad input) are
raised at once, never retried. ``failover=None`` turns failover and retries off. Every call of
a session carries the ``x-session-id`` routing header.

Exceptions (all ``CellserveError``; mapped from gRPC status codes and from in-band stream
errors alike)::

    CellserveError
    ├── InvalidInput               INVALID_ARGUMENT, OUT_OF_RANGE
    ├── NotFound                   NOT_FOUND
    │   ├── SessionNotFound        unknown, expired or another owner's session
    │   └── ModelNotFound          unknown model
    ├── OffsetConflict             ABORTED (.expected_offset)
    ├── PreconditionFailed         FAILED_PRECONDITION (other weights, rewind beyond the window)
    ├── CapacityExceeded           RESOURCE_EXHAUSTED (.retry_after, seconds)
    ├── Unavailable                UNAVAILABLE, a broken connection (.retry_after)
    │   └── FailoverFailed         no target could take the session over
    ├── Timeout                    DEADLINE_EXCEEDED, or no answer within the client's timeout
    ├── Unauthenticated            UNAUTHENTICATED (no credentials, or refused ones)
    ├── PermissionDenied           PERMISSION_DENIED (another tenant's object, e.g. snapshot)
    ├── Unimplemented              UNIMPLEMENTED (the server is older than this SDK)
    ├── CancelledError             CANCELLED
    ├── ClosedError                the session or client was closed by this process
    └── InternalError              INTERNAL, UNKNOWN, DATA_LOSS, anything else
"""

from __future__ import annotations

from ._client import AsyncClient
from ._errors import (
    CancelledError,
    CapacityExceeded,
    CellserveError,
    ClosedError,
    FailoverFailed,
    InternalError,
    InvalidInput,
    ModelNotFound,
    NotFound,
    OffsetConflict,
    PermissionDenied,
    PreconditionFailed,
    SessionNotFound,
    Timeout,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from ._session import AsyncCompletionStream, AsyncSession
from ._sync import Client, CompletionStream, Session
from ._types import (
    Cell,
    CharacterGates,
    Completion,
    CompletionChunk,
    FailoverPolicy,
    FinishReason,
    Gate,
    GateInspection,
    GateSummary,
    ModelInfo,
    Prediction,
    SessionInfo,
    Suggestion,
    TrackedUnit,
    UnitGate,
)

__all__ = [
    "AsyncClient",
    "AsyncCompletionStream",
    "AsyncSession",
    "CancelledError",
    "CapacityExceeded",
    "Cell",
    "CellserveError",
    "CharacterGates",
    "Client",
    "ClosedError",
    "Completion",
    "CompletionChunk",
    "CompletionStream",
    "FailoverFailed",
    "FailoverPolicy",
    "FinishReason",
    "Gate",
    "GateInspection",
    "GateSummary",
    "InternalError",
    "InvalidInput",
    "ModelInfo",
    "ModelNotFound",
    "NotFound",
    "OffsetConflict",
    "PermissionDenied",
    "PreconditionFailed",
    "Prediction",
    "Session",
    "SessionInfo",
    "SessionNotFound",
    "Suggestion",
    "Timeout",
    "TrackedUnit",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnitGate",
    "__version__",
]

__version__ = "0.1.0"
