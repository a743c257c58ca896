"""The internal wire between frontends and the engine core: msgspec structs over msgpack.

One ZMQ message frontend -> core is a ``ToCore``: every operation the frontend's event loop
gathered since its last send, in call order, plus the metric events of its API layer. One
message core -> frontend is a ``ToFrontend``: every answer and completion chunk for that
frontend that the core produced in one pass of its loop. Decoding checks every field's type
against these definitions, so a malformed message fails as a whole and is dropped before any
of it runs.

Session operations carry the same arguments as the ``EngineClient`` methods they stand for;
results travel as msgpack of the engine's plain dataclasses, encoded once with the whole
message (the core writes ``OkOut``, whose value is the result itself); the frontend reads the
same bytes as ``Ok``, whose value stays a raw msgpack view until it is decoded, once, with the
result type that call expects. Errors travel as ``Err``: a code
naming the ``cellserve.errors`` class, the client-facing message and the retry hint.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..engine.admission import Limits
from ..engine.types import AppendOptions, CompletionRequest, EngineStats, SuggestRequest
from ..errors import BY_CODE, CLIENT_ERRORS, CapacityExceeded, OffsetConflict
from ..gate_report import GateQuery
from ..handoff.record import HandoffRecord

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


class Export(_Op):
    """Handoff: the core's idle sessions as sealed records (``EngineCore.export_sessions``)."""

    idle_s: float | None
    move: bool


class Adopt(_Op):
    """Handoff: a record taken from the session store continues here under its own id."""

    owner: str
    record: HandoffRecord


class SetLimits(_Op):
    """A tenant's quotas from the tokens file, for the core's admission (no answer)."""

    owner: str
    limits: Limits


class OpenStream(_Op):
    """A stream lease (the answer: its number), or a refusal at the quota or the global cap."""

    owner: str


class CloseStream(_Op):
    """Gives the stream lease ``lease`` back (no answer)."""

    owner: str
    lease: int


class BindSequence(_Op):
    owner: str
    model: str
    seq: str
    session_id: str


class FindSequence(_Op):
    owner: str
    model: str
    seq: str


class ForgetSequence(_Op):
    """No answer."""

    owner: str
    model: str
    seq: str
    session_id: str


class Tokens(_Op):
    """The tokens file as the core last read it with success (``TokensFile`` JSON); ``force``:
    re-read it now (SIGHUP)."""

    force: bool


class InspectGates(_Op):
    query: GateQuery  # checked by the frontend; the answer is a GateReport


class CoreReport(_Op):
    """From another core process of the server to core 0, which serves the one ``/metrics``
    endpoint (``--cores K``, every ``METRICS_POLL_S``; no answer): that core's ``EngineStats``
    and the cumulative counts of its per-iteration histograms, ``(family, labels, totals)``
    with ``totals`` as ``metric_families`` keeps them (buckets, then the sum)."""

    core: int
    stats: EngineStats
    families: list[tuple[str, list[str], list[float]]]


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
    | Export
    | Adopt
    | SetLimits
    | OpenStream
    | CloseStream
    | BindSequence
    | FindSequence
    | ForgetSequence
    | Tokens
    | CoreReport
)


class ToCore(msgspec.Struct, array_like=True):
    ops: list[Op]
    requests: list[tuple[str, str, int]] = []  # (method, code, count): finished requests
    keystrokes: list[tuple[str, str, float]] = []  # (model, kind, seconds): response latencies
    malformed: list[tuple[str, int]] = []  # (method, count): undecodable requests (the core logs them)


# ---- core -> frontend --------------------------------------------------------------------


class _Reply(msgspec.Struct, tag=True, array_like=True):
    id: int


class Ok(_Reply, tag="Ok"):
    """As the frontend reads it: ``value`` is a view of the result's msgpack."""

    value: msgspec.Raw


class OkOut(_Reply, tag="Ok"):
    """As the core writes it: the result itself, encoded once with the message."""

    value: Any


class Err(_Reply):
    code: str  # the error class's gRPC code name (cellserve.errors), or INTERNAL
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


Reply = Ok | Err | Chunk | End
ReplyOut = OkOut | Err | Chunk | End


class ToFrontend(msgspec.Struct, array_like=True):
    replies: list[Reply]


class ToFrontendOut(msgspec.Struct, array_like=True):
    """``ToFrontend`` as the core writes it (the same bytes)."""

    replies: list[ReplyOut]


# ---- errors ------------------------------------------------------------------------------

INTERNAL = "INTERNAL"


class CoreFailure(Exception):
    """An operation failed in the core for a reason that is not a domain error (a bug); the
    core logged the details and the client sees INTERNAL."""


def error_reply(call_id: int, exc: BaseException) -> Err:
    """The ``Err`` for ``exc``; anything but a client-facing domain error crosses as INTERNAL
    with no detail (the core logs it)."""
    if not isinstance(exc, CLIENT_ERRORS):
        return Err(call_id, INTERNAL, "internal error")
    code = type(exc).code
    if isinstance(exc, OffsetConflict):
        return Err(call_id, code, str(exc), expected=exc.expected, got=exc.got)
    if isinstance(exc, CapacityExceeded):
        return Err(call_id, code, str(exc), retry_after_s=exc.retry_after_s)
    return Err(call_id, code, str(exc))


def error_of(err: Err) -> Exception:
    """The exception ``err`` stands for: the same ``cellserve.errors`` class as in the core."""
    cls = BY_CODE.get(err.code)
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
