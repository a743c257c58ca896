"""The ``EngineClient`` protocol: everything the API layer may ask of an engine.

The gRPC servicers (and later a KServe front, or a frontend process talking to an engine core
in another process over a socket) depend on this protocol only, never on the engine's classes.
So nothing that crosses it is process-local: arguments and results are the plain, frozen
dataclasses of ``cellserve.engine.types`` (picklable, msgpack-able), strings, ints and bytes;
no futures, tasks, tensors or session objects go in or out.

Submission and ordering. Every session operation is a plain (non-``async``) method that
*submits* the operation when it is called and returns an awaitable of its result. Operations
on one session are applied in the order the calls were made, whatever their kind (append,
rewind, reset, snapshot, complete, close), however long each takes; the caller may submit many
before awaiting any (pipelining). Awaiting, or not awaiting, never reorders anything: the
awaitable only delivers the outcome. Cancelling the awaiting task does not withdraw an
operation that was submitted (an append is applied exactly once even if nobody reads its
answer); only a completion is withdrawn, by closing its chunk stream.

Errors are the ``cellserve.errors`` exceptions, raised by the awaitable (an implementation
may raise an argument error already at call time; callers handle both the same way):
unknown, closed, expired and other owners' sessions are all ``NotFound``; caps raise
``CapacityExceeded`` with a retry hint; new sessions while draining raise ``Unavailable``.

Tenancy. Every operation carries ``owner``: the caller's tenant key (from authentication;
"" when the server runs without it). A session belongs to the owner that opened or resumed
it, and is ``NotFound`` for anyone else. Fairness between tenants (and later per-tenant
quotas) is keyed on it, so it must name the tenant, not the connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

from ..handoff.record import HandoffRecord
from .admission import Limits
from .types import (
    AppendOptions,
    CompletionChunk,
    CompletionRequest,
    EngineHealth,
    EngineStats,
    IterationStats,
    ModelInfo,
    Prediction,
    SessionInfo,
    Suggestion,
    SuggestRequest,
)

DEFAULT_OPTIONS = AppendOptions()  # frozen: one shared default

StatsListener = Callable[[IterationStats], None]
"""Called once per engine iteration with what it did (on the caller's event loop). It must be
quick and must not raise; it is how statistics reach the metrics module (pushed, never drained
by a reader)."""


@runtime_checkable
class CompletionStream(Protocol):
    """The chunks of one running completion, in generation order (several characters of one
    alternative may come as one chunk). Every alternative ends with a chunk whose ``done`` is
    set; then iteration stops. ``aclose()`` cancels what still runs and frees its resources."""

    def __aiter__(self) -> AsyncIterator[CompletionChunk]: ...

    def __anext__(self) -> Awaitable[CompletionChunk]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class EngineClient(Protocol):
    # ---- lifecycle (operator-level: no owner) ---------------------------------------------
    async def start(self) -> None:
        """Starts (or connects to) the engine; idempotent."""
        ...

    async def drain(self) -> None:
        """From now on new sessions raise ``Unavailable``; returns once every submitted
        operation and running completion is answered."""
        ...

    async def stop(self) -> None:
        """Stops after the iteration in flight; what is still queued fails with ``Unavailable``."""
        ...

    # ---- queries ----------------------------------------------------------------------------
    def models(self, owner: str) -> Awaitable[list[ModelInfo]]:
        """The models this engine serves (the default one has ``is_default``)."""
        ...

    def get_session(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        """The session as of the operations submitted so far: ``position`` is the offset the
        next append must carry (appends accepted but not yet applied are counted)."""
        ...

    def health(self, owner: str) -> Awaitable[EngineHealth]:
        """Whether the engine takes new sessions, and its gauges now."""
        ...

    def stats(self, owner: str) -> Awaitable[EngineStats]:
        """Cumulative counters and gauges since start (per-model sums included). Reading never
        changes them (any number of readers). Per-iteration observations are the engine
        process's own (``Engine.add_stats_listener``): they never cross to a frontend."""
        ...

    # ---- admission (one place for every quota: engine/admission.py) -----------------------
    def set_limits(self, owner: str, limits: Limits) -> None:
        """``owner``'s quotas, in force for the operations submitted after this call (sessions,
        characters per second, completions, streams). An owner never given limits has only
        the global caps."""
        ...

    def open_stream(self, owner: str) -> Awaitable[int]:
        """A stream lease: the tenant's stream quota and ``max_concurrent_streams`` over every
        frontend; ``CapacityExceeded`` when either is full. Give it back with ``close_stream``."""
        ...

    def close_stream(self, owner: str, lease: int) -> None:
        """Gives a stream lease back (an unknown one is ignored)."""
        ...

    # ---- KServe sequence ids (one table for every frontend: engine/sequence_ids.py) ----------
    def bind_sequence(self, owner: str, model: str, seq: str, session_id: str) -> Awaitable[str | None]:
        """Names ``session_id`` by the sequence id ``seq`` of ``model``; the answer is the live
        session the id named before (its owner restarted the sequence: close it), or None."""
        ...

    def find_sequence(self, owner: str, model: str, seq: str) -> Awaitable[SessionInfo]:
        """The sequence's live session as ``get_session`` answers it; NotFound: not live."""
        ...

    def forget_sequence(self, owner: str, model: str, seq: str, session_id: str) -> None:
        """The sequence ended: its id names nothing from now on (unless bound again since)."""
        ...

    # ---- session operations (submitted at call time, applied in call order) ----------------
    def open_session(
        self, owner: str, model: str | None = None, memory: bool = True, sequence: str = ""
    ) -> Awaitable[SessionInfo]:
        """A new session at position 0 of ``model`` (None: the default model). ``sequence``: the
        KServe sequence id (as ``bind_sequence`` takes it) this session is opened for, so an
        engine of several core processes opens it on the core that holds that id's entry
        (``engine/shards.py``); one core ignores it."""
        ...

    def append(
        self, owner: str, session_id: str, offset: int, text: str, options: AppendOptions = DEFAULT_OPTIONS
    ) -> Awaitable[Prediction]:
        """Applies ``text`` at ``offset`` exactly once and answers the next-character
        distribution after it. ``offset`` must equal the position counting every append
        submitted before (``OffsetConflict`` carries the expected one); a retry of the latest
        accepted piece (same offset and text) answers again with ``replayed`` and applies
        nothing. The prediction comes once the whole piece is applied."""
        ...

    def rewind(self, owner: str, session_id: str, chars: int) -> Awaitable[SessionInfo]:
        """Restores exactly the state ``chars`` characters back (1 <= chars <= position);
        beyond the rewind window: ``PreconditionFailed``."""
        ...

    def reset(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        """Back to the zero state at position 0."""
        ...

    def snapshot(self, owner: str, session_id: str) -> Awaitable[bytes]:
        """A signed blob of the state after the operations submitted before it."""
        ...

    def resume(
        self, owner: str, blob: bytes, replay: str = "", options: AppendOptions = DEFAULT_OPTIONS
    ) -> Awaitable[tuple[SessionInfo, Prediction | None]]:
        """A new session (new id, owned by ``owner``) with the snapshot's state, bit-exact; then
        ``replay`` is appended and its prediction returned (None without replay). A malformed
        or tampered blob: ``InvalidInput``; other weights: ``PreconditionFailed``."""
        ...

    def complete(self, owner: str, session_id: str, request: CompletionRequest) -> CompletionStream:
        """Starts a completion on a fork of the session's state as it is after the operations
        submitted before it; the session itself never changes. A later append, rewind, reset
        or close of the session, or ``aclose()`` of the stream, cancels it. Errors (bad
        request, caps, unknown session) surface from the stream's first ``__anext__``."""
        ...

    def suggest(self, owner: str, session_id: str, request: SuggestRequest) -> Awaitable[list[Suggestion]]:
        """The ``request.n`` most probable completions of the current word or line (most
        probable first, possibly fewer), by beam search on a fork of the session's state as it
        is after the operations submitted before it; the session itself never changes. Bad
        request: ``InvalidInput``."""
        ...

    def close_session(self, owner: str, session_id: str) -> Awaitable[None]:
        """Ends the session after the operations submitted before it; its id is then unknown."""
        ...

    # ---- handoff between replicas (cellserve.handoff; operator-level: no owner check) -------
    def export_sessions(self, idle_s: float | None, move: bool = False) -> Awaitable[list[HandoffRecord]]:
        """Every idle session as a sealed handoff record (``idle_s`` set: only those unused for
        that long and used since their last export). ``move``: they leave this engine (later
        calls for them: UNAVAILABLE); else they stay."""
        ...

    def adopt(self, owner: str, record: HandoffRecord) -> Awaitable[SessionInfo]:
        """The record's session continues here under its own id, owned by ``owner`` (checked
        like a resume: tenant, expiry, weights); a retry of its last piece is answered again."""
        ...
