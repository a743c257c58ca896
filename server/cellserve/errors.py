"""Domain errors of cellserve.

Hierarchy (each class carries its gRPC status code name, ``code``, and what a client may do
about it, ``retry``: the one table that ``api/status.py`` (gRPC statuses) and
``multiproc/messages.py`` (the internal wire) read)::

    CellserveError                  base; never raised itself
    ├── ModelFileError              a model folder is missing, corrupt or inconsistent
    │                               (names the file and the field; operator-facing only)
    ├── InvalidInput                INVALID_ARGUMENT: the request itself is malformed
    ├── NotFound                    NOT_FOUND: unknown, expired or foreign session; unknown model
    ├── OffsetConflict              ABORTED: Append.offset != session position (carries expected)
    ├── PreconditionFailed          FAILED_PRECONDITION: e.g. snapshot of other weights or
    │                               expired, rewind beyond the checkpoint window
    ├── PermissionDenied            PERMISSION_DENIED: another tenant's snapshot blob
    ├── CapacityExceeded            RESOURCE_EXHAUSTED: a configured cap (carries a retry hint)
    └── Unavailable                 UNAVAILABLE: the server is draining

Messages are written for the client: they never contain file-system paths, exception text
from libraries, or internal names. ``ModelFileError`` is the exception: it is raised at
start-up or by CLI tools to the operator, and names the offending file and field.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Retry(StrEnum):
    """What a client may do about an error."""

    NEVER = "never"  # fix the request (or resume the session from a snapshot)
    AT_EXPECTED_OFFSET = "at_expected_offset"  # resend from the offset the error carries
    AFTER_HINT = "after_hint"  # the same call, after the retry hint
    AGAIN = "again"  # the same call, on this or another replica


class CellserveError(Exception):
    """Base class of every error cellserve raises on purpose."""

    code: ClassVar[str] = "INTERNAL"  # the gRPC status code name a client sees
    retry: ClassVar[Retry] = Retry.NEVER


class ModelFileError(CellserveError):
    """A model folder cannot be used; the message names the file and the field."""

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        super().__init__(f"{file}: {field}: {problem}")


class InvalidInput(CellserveError):
    """The request is malformed (INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class NotFound(CellserveError):
    """Unknown, expired or foreign session, or unknown model (NOT_FOUND)."""

    code = "NOT_FOUND"


class OffsetConflict(CellserveError):
    """Append at an offset other than the session's position (ABORTED)."""

    code = "ABORTED"
    retry = Retry.AT_EXPECTED_OFFSET

    def __init__(self, expected: int, got: int) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"append offset {got} does not match the session position; expected offset {expected}")


class PreconditionFailed(CellserveError):
    """The request is valid but the system is not in a state to run it (FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"


class PermissionDenied(CellserveError):
    """The caller is authenticated but the object is another tenant's (PERMISSION_DENIED)."""

    code = "PERMISSION_DENIED"


class CapacityExceeded(CellserveError):
    """A configured limit was reached (RESOURCE_EXHAUSTED); ``retry_after_s`` is a hint."""

    code = "RESOURCE_EXHAUSTED"
    retry = Retry.AFTER_HINT

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class Unauthenticated(CellserveError):
    """The caller's credentials are missing, unknown or were revoked (UNAUTHENTICATED)."""

    code = "UNAUTHENTICATED"


class Unavailable(CellserveError):
    """The server is draining or not ready (UNAVAILABLE)."""

    code = "UNAVAILABLE"
    retry = Retry.AGAIN


# The errors a client may see, by their code (ModelFileError is operator-facing only).
CLIENT_ERRORS: tuple[type[CellserveError], ...] = (
    InvalidInput,
    NotFound,
    OffsetConflict,
    PreconditionFailed,
    PermissionDenied,
    CapacityExceeded,
    Unavailable,
    Unauthenticated,
)
BY_CODE: dict[str, type[CellserveError]] = {cls.code: cls for cls in CLIENT_ERRORS}
