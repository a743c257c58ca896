"""The internal wire between frontends and the engine core: msgspec structs over msgpack.

One ZMQ message frontend -> core is a ``ToCore``: every operation the frontend's event loop
gathered since its last send, in call order, plus the metric events of its API layer. One
message core -> frontend is a ``ToFrontend``: every answer and completion chunk for that
frontend that the core produced in one pass of its loop. Decoding checks every field's type
against these definitions, so a malformed message fails as a whole and is dropped before any
of it runs.

Session operations carry the same arguments as the ``EngineClient`` methods they stand for;
results travel as msgpack of the engine's plain dataclasses (``Ok.value``, decoded by the
frontend with the result type it expects for that call). Errors travel as ``Err``: a code
naming the ``cellserve.errors`` class, the client-facing message and the retry hint.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..engine.types import AppendOptions, CompletionRequest, ModelIteration, SuggestRequest
from ..errors import (
    CapacityExceeded,
    CellserveError,
    InvalidInput,
    NotFound,
    OffsetConflict,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)

# ---- frontend -> core --------------------------------------------------------------------


class _Op(msgspec.Struct, tag=True, array_like=True):
    id: int  # the frontend's call number: answers name it


class Models(_Op):
    owner: str


class GetSession(_Op):
    owner: str
    session_id: str


class Health(_Op):
    owner: str


class Stats(_Op):
    owner: str


class Open(_Op):
    owner: str
    model: str | None
    memory: bool = True  # False: the session keeps no session memory


class Append(_Op):
    owner: str
    session_id: str
    offset: int
    text: str
    options: AppendOptions


class Rewind(_Op):
    owner: str
    session_id: str
    chars: int


class Reset(_Op):
    owner: str
    session_id: str


class Snapshot(_Op):
    owner: str
    session_id: str


class Resume(_Op):
    owner: str
    blob: bytes
    replay: str
    options: AppendOptions


class Complete(_Op):
    owner: str
    session_id: str
    request: CompletionRequest


class Suggest(_Op):
    owner: str
    session_id: str
    request: SuggestRequest


class CloseCompletion(_Op):
    """Withdraws the completion started by the call numbered ``id`` (its stream was closed)."""


class Close(_Op):
    owner: str
    session_id: str


class WatchStats(_Op):
    """From now on the core sends this frontend each engine iteration's per-model statistics
    (``Iteration``), for the frontend's stats listeners (KServe's ModelStatistics)."""


class InspectGates(_Op):
    request: bytes  # a serialized cellserve.v1 InspectGatesRequest; the answer is its response


Op = (
    Models
    | GetSession
    | Health
    | Stats
    | Open
    | Append
    | Rewind
    | Reset
    | Snapshot
    | Resume
    | Complete
    | Suggest
    | CloseCompletion
    | Close
    | InspectGates
    | WatchStats
)


class ToCore(msgspec.Struct, array_like=True):
    ops: list[Op]
    requests: list[tuple[str, str, int]] = []  # (method, code, count): finished requests
    keystrokes: list[tuple[str, str, float]] = []  # (model, kind, seconds): response latencies


# ---- core -> frontend --------------------------------------------------------------------


class _Reply(msgspec.Struct, tag=True, array_like=True):
    id: int


class Ok(_Reply):
    value: msgspec.Raw  # msgpack of the call's result type


class Err(_Reply):
    code: str  # ERROR_CODES key
    message: str
    retry_after_s: float = 0.0
    expected: int = 0  # OffsetConflict only
    got: int = 0


class Chunk(_Reply):
    alternative: int
    text: str
    done: bool
    finish_reason: str


class End(_Reply):
    """The completion of call ``id`` has sent all its chunks."""


class Iteration(_Reply):
    """One engine iteration's per-model share, to a frontend that sent ``WatchStats`` (id 0)."""

    models: list[ModelIteration]


Reply = Ok | Err | Chunk | End | Iteration


class ToFrontend(msgspec.Struct, array_like=True):
    replies: list[Reply]


# ---- errors ------------------------------------------------------------------------------

INTERNAL = "internal"
ERROR_CODES: dict[str, type[CellserveError]] = {
    "invalid_input": InvalidInput,
    "not_found": NotFound,
    "offset_conflict": OffsetConflict,
    "precondition_failed": PreconditionFailed,
    "permission_denied": PermissionDenied,
    "capacity_exceeded": CapacityExceeded,
    "unavailable": Unavailable,
}
_CODE_OF = {cls: code for code, cls in ERROR_CODES.items()}


class CoreFailure(Exception):
    """An operation failed in the core for a reason that is not a domain error (a bug); the
    core logged the details and the client sees INTERNAL."""


def error_reply(call_id: int, exc: BaseException) -> Err:
    """The ``Err`` for ``exc``; anything but a domain error crosses as ``internal`` with no
    detail (the core logs it)."""
    for cls in type(exc).__mro__:
        code = _CODE_OF.get(cls)
        if code is None:
            continue
        if isinstance(exc, OffsetConflict):
            return Err(call_id, code, str(exc), expected=exc.expected, got=exc.got)
        if isinstance(exc, CapacityExceeded):
            return Err(call_id, code, str(exc), retry_after_s=exc.retry_after_s)
        return Err(call_id, code, str(exc))
    return Err(call_id, INTERNAL, "internal error")


def error_of(err: Err) -> Exception:
    """The exception ``err`` stands for: the same ``cellserve.errors`` class as in the core."""
    cls = ERROR_CODES.get(err.code)
    if cls is OffsetConflict:
        return OffsetConflict(err.expected, err.got)
    if cls is CapacityExceeded:
        return CapacityExceeded(err.message, retry_after_s=err.retry_after_s)
    if cls is None:
        return CoreFailure("the engine core failed this operation")
    return cls(err.message)


to_core_decoder = msgspec.msgpack.Decoder(ToCore)


def call_ids_of(data: Any) -> list[int]:
    """The call ids a ``ToCore`` that failed to decode as a whole still shows (each op is an
    array ``[tag, id, ...]``): its callers can be answered. None when it is not even msgpack."""
    try:
        raw = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return []
    ops = raw[0] if isinstance(raw, list) and raw and isinstance(raw[0], list) else []
    return [op[1] for op in ops if isinstance(op, list) and len(op) > 1 and type(op[1]) is int and op[1] > 0]


to_frontend_decoder = msgspec.msgpack.Decoder(ToFrontend)
encoder = msgspec.msgpack.Encoder()


def encode(value: Any) -> bytes:
    return encoder.encode(value)
