"""The engine core: ``add(call)``, ``step() -> StepOutput``, ``has_work()``.

``EngineCore`` owns the model runtimes (pool, runner, scheduler per model), the session table
and the counters. It is synchronous and has nothing asynchronous in it: no future, no lock, no
event loop. Requests come in as ``Call``s carrying integer tickets (``add``; refusals are
answers like any other); ``step()`` plans one iteration for every model with work
(``_schedule``), executes the plans on the runners, stages every answer, has the runners write
their states back, then applies the results to sessions, rewind logs and completions
(``_commit``). Everything meant for a caller (a value or an error for a ticket, a completion
chunk) goes to the core's ``Deliveries`` (``engine/core_io.py``), which ``step()`` returns as a ``StepOutput`` of plain dataclasses, with
the iteration's ``IterationStats``.

Threads: one. The core thread (``engine/loop.py``) is the only one that touches a core; the
frontend turns tickets into futures (``engine/engine.py``). Driven directly (tests), the core
needs no thread and no loop.

Error behaviour (``cellserve.errors``): unknown, closed, expired and other owners' sessions are
all ``NotFound("session not found")``; caps raise ``CapacityExceeded`` with a retry hint;
new sessions while draining raise ``Unavailable``. Failure is an output: whatever raises in a
step after scheduling (a runner phase, staging, a write-back) answers every op of that step
with the exception (the API reports INTERNAL) and the sessions are as they were before it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..config import Settings
from ..errors import (
    CapacityExceeded,
    CellserveError,
    InvalidInput,
    NotFound,
    OffsetConflict,
    PreconditionFailed,
    Unavailable,
)
from ..handoff.record import HandoffRecord, decode_prediction, encode_prediction
from ..memory.settings import MemorySettings
from ..memory.window import SessionMemory
from ..repository import ModelRepository
from . import snapshot as snap
from .admission import Admission, Limits
from .completions import Alternative, Completion
from .core_io import Call, ChunkOut, Deliveries, Delivery, Outcome, StepOutput
from .limits import MAX_PENDING_SUGGESTS, check_suggest, completion_checked
from .memory_mix import memory_settings
from .plan import ZERO, CheckpointRef, HostState, Plan, RowResult, RunResult
from .runtime import ModelRuntime, RunnerFactory, build_runtimes
from .scheduler import AppendRun, Batch, ControlWork
from .sequence_ids import SequenceIds
from .sessions import AppendOp, ControlOp, Op, Session, SessionState
from .types import (
    AppendOptions,
    CompletionChunk,
    CompletionRequest,
    EngineHealth,
    EngineStats,
    FinishReason,
    GateTrace,
    IterationStats,
    ModelInfo,
    ModelIteration,
    ModelTotals,
    Phase,
    Prediction,
    SessionEvent,
    SessionInfo,
    SuggestRequest,
)

log = logging.getLogger(__name__)

_NOT_FOUND = "session not found"
# Multi-step decoding (see the scheduler): when only completions run, an iteration takes up to
# MAX_DECODE_STEPS steps, as many as fit in DECODE_BURST_S at the latest measured step time, so
# a keystroke arriving meanwhile waits at most about that long. Measured with `cellserve bench`
# (2-core CPU, 2x512 LSTM): one chunk message and one scheduling round per character bounded
# completions at 0.35x (16 running) to 0.52x (64) of the model's own decoding speed.
MAX_DECODE_STEPS = 8
DECODE_BURST_S = 0.025
_DEFAULT_OPTIONS = AppendOptions()  # frozen: safe to share as a default


# what a Call may ask for: the core's public operations, nothing else
CALLS = frozenset(
    {
        "get_session",
        "get_session_queued",
        "stats",
        "health",
        "has_work",
        "open_session",
        "submit_append",
        "complete",
        "cancel_completion",
        "submit_rewind",
        "submit_reset",
        "submit_snapshot",
        "resume",
        "submit_suggest",
        "submit_close",
        "expire_idle",
        "start_draining",
        "export_sessions",
        "adopt",
        "set_limits",
        "open_stream",
        "close_stream",
        "release_streams",
        "bind_sequence",
        "find_sequence",
        "forget_sequence",
    }
)


class EngineCore:
    def __init__(
        self,
        settings: Settings,
        repository: ModelRepository,
        runner_factory: RunnerFactory | None = None,
    ) -> None:
        """``runner_factory(loaded, pool, checkpoint_pool)`` builds each model's runner (anything with
        ``execute(plan) -> RunResult``); the default is ``ModelRunner``."""
        self.settings = settings
        self.repository = repository
        self.device = repository.device
        # Unset key: a random per-process key; snapshots then resume on this process only.
        self._key = (
            settings.snapshot_key.get_secret_value().encode() if settings.snapshot_key else secrets.token_bytes(32)
        )
        self._memory_settings: MemorySettings = memory_settings(settings)
        self._runtimes = build_runtimes(settings, repository, runner_factory)
        self._sessions: dict[str, Session] = {}
        self._owner_sessions: dict[str, int] = {}  # live sessions per owner (tenant quotas)
        self.admission = Admission(settings)  # every quota and global stream cap (engine/admission.py)
        self.sequence_ids = SequenceIds(2 * settings.max_sessions)  # KServe sequences, for every frontend
        self._running_alternatives = 0
        self.draining = False
        self._iterations = 0
        self._chars: dict[str, int] = {p: 0 for p in Phase}
        self._events: dict[str, int] = {}
        self._model_totals: dict[str, ModelTotals] = {}  # EngineStats.models
        self.deliveries = Deliveries()  # what callers get with the next pass (core_io.py)
        # suggest ops submitted and not yet answered (MAX_PENDING_SUGGESTS): their tickets,
        # dropped when their Outcome is taken from the deliveries, whichever path answered them
        self._suggest_tickets: set[int] = set()
        self._live_completions: dict[int, Completion] = {}  # by ticket, until their last chunk
        # (last use when pushed, tie-break, session): the idle-TTL sweep's queue (expire_idle)
        self._expiry: list[tuple[float, int, Session]] = []
        self._expiry_seq = itertools.count()
        self._moved: set[str] = set()  # sessions handed to the session store on drain (handoff)

    # ---- queries -----------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return [rt.info for rt in self._runtimes.values()]

    def get_session(self, session_id: str, owner: str = "") -> SessionInfo:
        return self._get(session_id, owner).info()

    def get_session_queued(self, session_id: str, owner: str = "") -> SessionInfo:
        """The session with ``position`` = the offset the next append must carry."""
        s = self._get(session_id, owner)
        return s.info(s.queued_end)

    def stats(self) -> EngineStats:
        """Cumulative counters and gauges now; reading changes nothing (any number of readers).
        Per-iteration observations come out of ``step()`` (``StepOutput.stats``)."""
        memory_bytes = sum(s.memory_bytes for s in self._sessions.values())  # no walk of the tables
        return EngineStats(
            active_sessions=len(self._sessions),
            slots_capacity=sum(rt.pool.capacity for rt in self._runtimes.values()),
            slots_max=sum(rt.alloc.slots_max for rt in self._runtimes.values()),
            slots_used=sum(rt.alloc.used for rt in self._runtimes.values()),
            state_bytes=sum(rt.pool.nbytes + rt.ck_pool.nbytes for rt in self._runtimes.values()) + memory_bytes,
            memory_bytes=memory_bytes,
            running_completions=self._running_alternatives,
            iterations=self._iterations,
            chars_processed=dict(self._chars),
            session_events=dict(self._events),
            models=tuple(self._model_totals.values()),
        )

    def health(self, owner: str = "") -> EngineHealth:
        return EngineHealth(
            serving=not self.draining,
            active_sessions=len(self._sessions),
            slots_used=sum(rt.alloc.used for rt in self._runtimes.values()),
            slots_max=sum(rt.alloc.slots_max for rt in self._runtimes.values()),
            running_completions=self._running_alternatives,
            owner_sessions=self._owner_sessions.get(owner, 0),
        )

    def has_work(self) -> bool:
        """Work is queued, running or completing: ``step()`` has something to do."""
        return self._has_pending()

    def add(self, call: Call) -> None:
        """Runs one inbox request (core thread); every answer goes to the deliveries."""
        if call.method not in CALLS:
            self.deliveries.put(Outcome(call.ticket, None, InvalidInput("unknown engine call")))
            return
        try:
            fn = getattr(self, call.method)
            if call.ticketed:
                now = fn(*call.args, call.ticket)
                if isinstance(now, Outcome):  # answered at once (a retry of an applied piece)
                    self.deliveries.put(now)
            else:
                self.deliveries.put(Outcome(call.ticket, fn(*call.args)))
        except Exception as e:  # a refusal (or a bug): the caller gets it, the core goes on
            if not isinstance(e, CellserveError):
                log.exception("engine call %s failed", call.method)
            self.deliveries.put(Outcome(call.ticket, None, e))

    # ---- admission (engine/admission.py): limits and stream leases, in inbox order ------------
    def set_limits(self, owner: str, limits: Limits) -> None:
        self.admission.set_limits(owner, limits)

    def open_stream(self, owner: str, holder: str = "") -> int:
        return self.admission.open_stream(owner, holder)

    def release_streams(self, holder: str) -> None:
        """The stream leases of a frontend that restarted come back."""
        self.admission.release_holder(holder)

    def close_stream(self, lease: int) -> None:
        self.admission.close_stream(lease)

    # ---- KServe sequence ids (engine/sequence_ids.py) ---------------------------------------------
    def bind_sequence(self, owner: str, model: str, seq: str, session_id: str) -> str | None:
        """Binds the sequence to the session just opened for its START; returns the session it
        named before, still live (its owner restarted it: the caller closes that one)."""
        return self.sequence_ids.bind((owner, model, seq), session_id, self._alive_of(owner))

    def find_sequence(self, owner: str, model: str, seq: str) -> SessionInfo:
        """The live session of the sequence, as ``get_session_queued`` (NotFound: not live)."""
        sid = self.sequence_ids.find((owner, model, seq), self._alive_of(owner))
        if sid is None:
            raise NotFound(_NOT_FOUND)
        return self.get_session_queued(sid, owner)

    def forget_sequence(self, owner: str, model: str, seq: str, session_id: str) -> None:
        self.sequence_ids.forget((owner, model, seq), session_id)

    def _alive_of(self, owner: str) -> Callable[[str], bool]:
        def alive(sid: str) -> bool:
            s = self._sessions.get(sid)
            return s is not None and s.owner == owner

        return alive

    def start_draining(self) -> None:
        """New sessions are refused from now on (Unavailable)."""
        self.draining = True

    def idle_output(self) -> StepOutput:
        """What calls answered while no step was due."""
        return StepOutput(self._take_deliveries(), None, not self._has_pending())

    def session_ids(self) -> set[str]:
        return set(self._sessions)

    def take_deliveries(self) -> list[Delivery]:
        """What the calls since the last pass produced for callers (a close that failed
        queued ops, a cancelled completion), for a frontend that ran them on the core itself
        (after the core thread stopped): it applies them after such a call."""
        return self._take_deliveries()

    def _take_deliveries(self) -> list[Delivery]:
        out = self.deliveries.take()
        if self._suggest_tickets:
            for d in out:
                if isinstance(d, Outcome):
                    self._suggest_tickets.discard(d.ticket)
        return out

    # ---- sessions ----------------------------------------------------------------------------
    def open_session(self, model: str | None = None, owner: str = "", memory: bool = True) -> SessionInfo:
        """A new session; ``memory`` False: its distributions are the model's alone even when
        the model ships a mixer (no session memory is kept)."""
        rt = self._runtime(model)
        return self._new_session(rt, owner, 0, ZERO, SessionEvent.OPENED, self._fresh_memory(rt, memory)).info()

    def submit_append(
        self,
        session_id: str,
        offset: int,
        text: str,
        options: AppendOptions,
        owner: str,
        ticket: int,
        charged: bool = False,
    ) -> Outcome | None:
        """Queues ``text`` at ``offset`` (exactly once), answered to ``ticket``; or raises now.
        ``offset`` must equal the session's position counting the appends already accepted.
        A retry of the latest accepted piece (same offset, same text) queues nothing: while the
        piece waits, ``ticket`` is answered with it; once applied, the answer is returned now
        (its cached value, ``replayed=True``). When several appends of a session wait for the same iteration they
        run as one prefill; each gets its own Prediction, or with ``only_last`` the earlier
        ones get ``superseded=True`` and no top-k."""
        s = self._get(session_id, owner)
        if not text:
            raise InvalidInput("append text is empty")
        if len(text) > self.settings.max_append_chars:
            raise InvalidInput(f"append text has {len(text)} characters; the limit is {self.settings.max_append_chars}")
        if not 0 <= options.top_k <= self.settings.max_top_k:
            raise InvalidInput(f"top_k must be between 0 and {self.settings.max_top_k}")
        s.last_used_at = time.time()
        if offset != s.queued_end:
            lp = s.last_piece
            if lp is not None and lp[0] == offset and lp[1] == text:
                if isinstance(lp[2], Prediction):
                    return Outcome(ticket, replace(lp[2], replayed=True))
                lp[2].retries.append(ticket)
                return None
            raise OffsetConflict(expected=s.queued_end, got=offset)
        if not charged:  # last: a refused append changes nothing
            self.admission.take_chars(owner, len(text))
        self._cancel_session_completions(s)
        rt = self._runtimes[s.model]
        s.accept_append(AppendOp(offset, text, rt.loaded.vocab.encode(text), options, ticket, time.perf_counter()))
        self._submit(rt, s)
        return None

    def complete(self, session_id: str, request: CompletionRequest, owner: str, ticket: int) -> Completion:
        """Starts a completion forked from the session's state once the operations accepted
        before it are applied; its chunks are addressed to ``ticket``. The session is never
        changed; an Append, Reset, Rewind or Close of the session, or ``cancel_completion``,
        cancels it."""
        s = self._get(session_id, owner)
        request = completion_checked(request, self.settings)
        rt = self._runtimes[s.model]
        if self._running_alternatives + request.n > self.settings.max_running_completions:
            self._event(SessionEvent.REJECTED_COMPLETION)
            raise CapacityExceeded("too many completions are running", retry_after_s=0.5)
        slots: list[int] = []
        try:
            for _ in range(request.n):
                slots.append(rt.alloc.alloc())
            self.admission.start_completion(owner, request.n)
        except CapacityExceeded:
            for slot in slots:
                rt.alloc.free(slot)
            raise
        seed = request.seed if request.seed is not None else secrets.randbits(64)
        alts = [Alternative(i, slot, random.Random(f"{seed}/{i}")) for i, slot in enumerate(slots)]
        c = Completion(s, request, alts, ticket)
        self._live_completions[ticket] = c
        self._running_alternatives += request.n
        s.completions.add(c)
        s.queue.append(ControlOp("complete", None, time.perf_counter(), completion=c))
        s.last_used_at = time.time()
        self._submit(rt, s)
        return c

    def cancel_completion(self, ticket: int) -> None:
        """The consumer of completion ``ticket`` went away: it ends (its slots are freed)."""
        c = self._live_completions.get(ticket)
        if c is not None:
            self._cancel_completion(c)

    def submit_rewind(self, session_id: str, chars: int, owner: str, ticket: int) -> None:
        """Restores exactly the state ``chars`` characters back (1 <= chars <= position);
        beyond the rewind window: PreconditionFailed."""
        s = self._get(session_id, owner)
        if chars <= 0:
            raise InvalidInput("rewind chars must be positive")
        if not s.queue and not s.in_flight:  # answer bad requests without an iteration
            s.history.plan(s.position, chars)
        self._cancel_session_completions(s)
        self._control(s, ControlOp("rewind", ticket, time.perf_counter(), chars=chars))

    def submit_reset(self, session_id: str, owner: str, ticket: int) -> None:
        s = self._get(session_id, owner)
        self._cancel_session_completions(s)
        mem = self._fresh_memory(self._runtimes[s.model], s.memory is not None)
        self._control(s, ControlOp("write", ticket, time.perf_counter(), state=ZERO, position=0, memory=mem))

    def submit_snapshot(self, session_id: str, owner: str, ticket: int) -> None:
        """A signed blob of the state after the operations accepted before it."""
        s = self._get(session_id, owner)
        self._control(s, ControlOp("snapshot", ticket, time.perf_counter()))

    def resume(self, blob: bytes, replay: str, options: AppendOptions, owner: str, ticket: int) -> Outcome | None:
        """A new session (new id) at the snapshot's position with its state, bit-exact (its
        start state is written by the next iteration), then ``replay`` appended to it:
        ``ticket`` gets (the session, the replay's Prediction or None) once the replay is.
        The blob is checked here (authentication, header, tenant and expiry: no torch); its state bytes become tensors in
        the device worker (``HostState``). Bad or tampered blob: InvalidInput; a model or
        weights this server does not serve: PreconditionFailed."""
        self._check_open()
        if len(replay) > self.settings.max_append_chars:
            raise InvalidInput(f"replay has {len(replay)} characters; the limit is {self.settings.max_append_chars}")
        rt, data, state = self._open_blob(blob, owner)
        if replay:  # the replay is charged before the session exists: a refusal leaves nothing behind
            self._check_open()
            self.admission.check_session(owner, self._owner_sessions, len(self._sessions))
            self.admission.take_chars(owner, len(replay))
        memory = None
        if data.memory is not None and rt.mixer is not None:  # the memory as the snapshot left it
            memory = SessionMemory.restore(data.memory, self._memory_settings)
        s = self._new_session(rt, owner, data.position, state, SessionEvent.RESUMED, memory)
        if not replay:
            return Outcome(ticket, (s.info(), None))
        self.submit_append(s.session_id, s.position, replay, options, owner, ticket, charged=True)
        op = s.queue[-1]
        assert isinstance(op, AppendOp)
        op.with_session = True
        return None

    def _open_blob(self, blob: bytes, owner: str) -> tuple[ModelRuntime, snap.SnapshotData, HostState]:
        data = snap.decode(blob, self._key, tenant=owner, now=time.time())
        rt = self._runtimes.get(data.model)
        if rt is None or rt.loaded.weights_sha256 != data.weights_sha256:
            raise PreconditionFailed("the snapshot was taken with model weights this server does not serve")
        m = rt.loaded.model
        if data.shapes != tuple((m.layers, m.hidden) for _ in range(m.state_arity)):
            raise PreconditionFailed("the snapshot's state does not fit the model")
        return rt, data, HostState(tuple(data.tensors), m.layers, m.hidden)

    # ---- handoff between replicas (cellserve.handoff) ----------------------------------------
    def export_sessions(self, idle_s: float | None, move: bool = False) -> list[HandoffRecord]:
        """Every idle session as a handoff record (sealed snapshot, id, tenant, the last applied
        piece and its answer); ``idle_s`` set: only sessions unused for that long and used since
        their last export. Sessions with work queued or running are left out (their slot does
        not hold their state yet); after a drain there are none. ``move`` (the drain): the
        exported sessions leave this engine, and a later call for one of them is UNAVAILABLE
        (it continues on another replica) rather than NOT_FOUND."""
        now = time.time()
        by_model: dict[str, list[Session]] = {}
        for s in self._sessions.values():
            if s.state is not SessionState.IDLE or (s.position == 0 and s.last_applied is None):
                continue  # busy, or nothing typed yet (a fresh session costs nothing to reopen)
            if idle_s is not None and (now - s.last_used_at < idle_s or s.exported_at == s.last_used_at):
                continue
            by_model.setdefault(s.model, []).append(s)
        records: list[HandoffRecord] = []
        seqs = self.sequence_ids.of_sessions({s.session_id for ss in by_model.values() for s in ss})
        for name, sessions in by_model.items():
            rt = self._runtimes[name]
            for s, raw in zip(sessions, rt.runner.read_states([s.slot for s in sessions]), strict=True):
                expires = s.last_used_at + self.settings.session_idle_ttl_s  # as long as it would live here
                blob = self._snapshot_blob(rt, s, raw, now)
                last = s.last_applied
                records.append(
                    HandoffRecord(
                        s.session_id,
                        s.owner,
                        blob,
                        min(expires, now + self.settings.snapshot_ttl_s),
                        last[0] if last else -1,
                        last[1] if last else "",
                        encode_prediction(last[2]) if last and isinstance(last[2], Prediction) else b"",
                        tuple((model, seq) for _, model, seq in seqs.get(s.session_id, ())),
                    )
                )
                s.exported_at = s.last_used_at
                if move:
                    self._moved.add(s.session_id)
                    self._close(s, SessionEvent.HANDED_OUT)
                else:
                    self._event(SessionEvent.SYNCED)
        return records

    def adopt(self, owner: str, record: HandoffRecord) -> SessionInfo:
        """The record's session continues here under its own id: its snapshot is checked like a
        resume's (tenant, expiry, weights), and its last applied piece is answered again if
        retried (exactly once across the move)."""
        self._check_open()
        held = self._sessions.get(record.session_id)
        if held is not None:  # a concurrent recovery of the same id got here first
            if held.owner != owner:
                raise NotFound(_NOT_FOUND)
            return held.info()
        rt, data, state = self._open_blob(record.blob, owner)
        memory = None
        if data.memory is not None and rt.mixer is not None:  # the memory as the snapshot left it
            memory = SessionMemory.restore(data.memory, self._memory_settings)
        s = self._new_session(rt, owner, data.position, state, SessionEvent.HANDED_IN, memory, record.session_id)
        if record.last_offset >= 0 and record.last_answer:
            pred = decode_prediction(record.last_answer)
            if pred.position == data.position and record.last_offset + len(record.last_text) == data.position:
                s.last_applied = s.last_piece = (record.last_offset, record.last_text, pred)
        for model, seq in record.sequences:  # its KServe sequence ids continue here too
            self.sequence_ids.bind((owner, model, seq), s.session_id, self._alive_of(owner))
        return s.info()

    def submit_suggest(self, session_id: str, request: SuggestRequest, owner: str, ticket: int) -> None:
        """The n most probable completions (``list[Suggestion]`` to ``ticket``), by beam
        search on a copy of the session's state as it is after the operations accepted before
        it; the session never changes. Searches advance one character per ``step()``."""
        s = self._get(session_id, owner)
        check_suggest(request)
        if len(self._suggest_tickets) >= MAX_PENDING_SUGGESTS:
            raise CapacityExceeded("too many suggestions are waiting or running", retry_after_s=0.5)
        self._control(s, ControlOp("suggest", ticket, time.perf_counter(), suggest=request))
        self._suggest_tickets.add(ticket)  # after it was queued: a refused op holds no ticket

    def submit_close(self, session_id: str, owner: str, ticket: int) -> None:
        """Closes the session once the operations accepted before it are answered (at once
        when none are waiting)."""
        s = self._get(session_id, owner)
        if not s.queue and not s.in_flight:
            self._close(s, SessionEvent.CLOSED)
            self.deliveries.put(Outcome(ticket))
            return
        self._cancel_session_completions(s)
        self._control(s, ControlOp("close", ticket, time.perf_counter()))

    def expire_idle(self, cutoff: float) -> None:
        """Closes sessions unused since ``cutoff`` (unix seconds) whose work is all done:
        queued or running work is never expired.

        No scan of the table: a heap holds every session under the last-use time it had when
        pushed (at open, then whenever a sweep finds it used since or busy). A sweep pops only
        the entries older than ``cutoff``: each session comes up about once per TTL."""
        heap = self._expiry
        while heap and heap[0][0] < cutoff:
            _, _, s = heapq.heappop(heap)
            if s.closed:
                continue
            if s.last_used_at < cutoff and s.state is SessionState.IDLE:
                self._close(s, SessionEvent.EXPIRED)
            else:  # used since, or busy: look again once it may have gone idle for a TTL
                heapq.heappush(heap, (max(s.last_used_at, cutoff), next(self._expiry_seq), s))

    def fail_all(self, err: BaseException) -> None:
        """At stop, after the last step: everything still queued fails with ``err``."""
        for s in list(self._sessions.values()):
            for op in s.queue:
                self.deliveries.fail(op, err)
            s.queue.clear()
            for c in list(s.completions):
                self._cancel_completion(c)
        for rt in self._runtimes.values():
            rt.beams.fail_all(err)
            self._answer_beams(rt)

    def _control(self, s: Session, op: ControlOp) -> None:
        s.accept_control(op)
        s.last_used_at = time.time()
        self._submit(self._runtimes[s.model], s)

    # ---- internals: admission and bookkeeping ------------------------------------------------
    def _runtime(self, model: str | None) -> ModelRuntime:
        rt = self._runtimes.get(model or self.repository.default)
        if rt is None:
            raise NotFound("unknown model")
        return rt

    def _check_open(self) -> None:
        if self.draining:
            raise Unavailable("server is draining; open a session on another replica")

    def _new_session(
        self,
        rt: ModelRuntime,
        owner: str,
        position: int,
        state: object,
        event: SessionEvent,
        memory: SessionMemory | None = None,
        session_id: str = "",
    ) -> Session:
        self._check_open()
        self.admission.check_session(owner, self._owner_sessions, len(self._sessions))
        if len(self._sessions) >= self.settings.max_sessions:
            self._event(SessionEvent.REJECTED_SESSIONS)
            raise CapacityExceeded("session limit reached", retry_after_s=min(5.0, self.settings.session_idle_ttl_s))
        slot = rt.alloc.alloc()
        now = time.time()
        sid = session_id or secrets.token_hex(16)
        s = Session(sid, rt.name, owner, slot, now, now, rt.new_history(position, state), position, position, position)
        # the slot holds a previous owner's state: the first iteration writes this session's
        # start state (folded into the first append's row when one is waiting by then)
        s.queue.append(ControlOp("write", None, time.perf_counter(), state=state, position=position, memory=memory))
        s.memory = memory  # empty until the write lands (nothing reads it before: every row
        # of the session until then starts from that write, whose memory it forks)
        self._sessions[sid] = s
        heapq.heappush(self._expiry, (s.last_used_at, next(self._expiry_seq), s))
        self._owner_sessions[owner] = self._owner_sessions.get(owner, 0) + 1
        self._submit(rt, s)
        self._event(event)
        return s

    def _fresh_memory(self, rt: ModelRuntime, wanted: bool) -> SessionMemory | None:
        """An empty session memory when the model mixes one and the session wants it."""
        return SessionMemory(self._memory_settings) if wanted and rt.mixer is not None else None

    def _get(self, session_id: str, owner: str) -> Session:
        s = self._sessions.get(session_id)
        if s is None or s.owner != owner:
            if s is None and session_id in self._moved:
                raise Unavailable("this replica is shutting down and handed the session on; retry on another replica")
            raise NotFound(_NOT_FOUND)
        return s

    def _submit(self, rt: ModelRuntime, s: Session) -> None:
        rt.work[s] = None

    def _event(self, name: SessionEvent) -> None:
        self._events[name] = self._events.get(name, 0) + 1

    def _close(self, s: Session, reason: SessionEvent) -> None:
        if not s.mark_closed():
            return
        del self._sessions[s.session_id]
        if (left := self._owner_sessions.pop(s.owner, 1) - 1) > 0:
            self._owner_sessions[s.owner] = left
        gone = NotFound(_NOT_FOUND)
        rt = self._runtimes[s.model]
        for op in s.queue:
            self.deliveries.fail(op, gone)
            if isinstance(op, AppendOp):
                rt.free_scratch(op)  # an in-flight chunk's write-back lands before a new owner's write
        s.queue.clear()
        for c in list(s.completions):
            self._cancel_completion(c)
        rt.work.pop(s, None)
        s.history.release_all()
        rt.alloc.free(s.slot)  # an in-flight write-back to it lands before any new owner's first write
        self._event(reason)

    def _cancel_session_completions(self, s: Session) -> None:
        for c in list(s.completions):
            self._cancel_completion(c)

    def _cancel_completion(self, c: Completion) -> None:
        for alt in c.running():
            self._end_alternative(c, alt, FinishReason.CANCELLED)
        if not c.started:
            try:
                c.session.queue.remove(next(op for op in c.session.queue if getattr(op, "completion", None) is c))
            except StopIteration:
                pass

    def _end_alternative(self, c: Completion, alt: Alternative, reason: str, text: str = "") -> None:
        alt.finish_reason = reason
        self.deliveries.put(ChunkOut(c, CompletionChunk(alt.index, text, True, reason)))
        if not c.running():
            self.deliveries.put(ChunkOut(c, None))
        if not c.running():
            self._live_completions.pop(c.ticket, None)
        rt = self._runtimes[c.session.model]
        rt.alloc.free(alt.slot)
        self._running_alternatives -= 1
        self.admission.end_alternative(c.session.owner)
        if not c.running():
            rt.completions.pop(c, None)
            c.session.completions.discard(c)

    def _has_pending(self) -> bool:
        return (
            any(rt.work or rt.completions or rt.beams.running for rt in self._runtimes.values())
            or self._running_alternatives > 0
        )

    # ---- the step ---------------------------------------------------------------------------------
    def step(self) -> StepOutput:
        """One iteration: schedule -> execute -> stage -> commit (device worker thread).

        Failure is an output: whatever raises after scheduling (a runner phase, staging the
        answers, a runner's write-back), every op the iteration took is answered with that
        error and every session stays exactly as it was before the step. Nothing of a job is
        applied unless its runner wrote its states back and all its answers were staged."""
        jobs = self._schedule()
        started = time.perf_counter()
        waits = [tuple(started - t for t in _submitted_times(b)) for _, b in jobs]  # per job
        chars_before = dict(self._chars)
        results: list[RunResult] = []
        staged: list[_Staged] = []
        committed = 0  # jobs whose runner wrote its states back
        error: Exception | None = None
        if jobs:
            try:
                results = [rt.runner.execute(b.plan) for rt, b in jobs]
                staged = [self._stage(rt, b, res) for (rt, b), res in zip(jobs, results, strict=True)]
                for rt, _b in jobs:
                    rt.runner.commit()
                    committed += 1
            except Exception as e:  # nothing of the uncommitted jobs landed
                log.exception("engine iteration failed")
                error = e
        beam_rows = self._step_beams()
        stats = None
        if jobs:
            self._update_from_output(jobs, staged, committed, error)
        elif beam_rows:
            self._iterations += 1
        if jobs or beam_rows:
            try:
                stats = self._iteration_stats(jobs, results if error is None else [], waits, chars_before, beam_rows)
                for mi in stats.models:
                    self._model_totals[mi.model] = self._model_totals.get(mi.model, ModelTotals(mi.model)).plus(mi)
            except Exception:  # statistics are not worth an iteration's answers
                log.exception("computing an iteration's statistics failed")
        for rt in self._runtimes.values():
            self._answer_beams(rt)
        return StepOutput(self._take_deliveries(), stats, not self._has_pending())

    def after_failed_step(self) -> StepOutput:
        """What a ``step()`` that raised (a bug in the core's own bookkeeping) left for callers;
        its work stays queued for the next step."""
        return StepOutput(self._take_deliveries(), None, not self._has_pending())

    # ---- ranked suggestions (engine/beam.py) ----------------------------------------------------
    def _step_beams(self) -> int:
        """One character of every running search, after the planned rows (lock free: only this
        thread adds or removes searches); returns the beam rows run."""
        rows = 0
        for rt in self._runtimes.values():
            if rt.beams.running:
                try:
                    rows += rt.beams.step()
                except Exception as e:  # only the searches fail; sessions are untouched
                    log.exception("a suggestion step failed")
                    rt.beams.fail_all(e)
        return rows

    def _answer_beams(self, rt: ModelRuntime) -> None:
        for q in rt.beams.take_finished():
            if q.error is not None:
                self.deliveries.put(Outcome(q.future, None, q.error))  # the search's ticket
            else:
                self.deliveries.put(Outcome(q.future, q.result()))

    def _update_from_output(
        self, jobs: list[tuple[ModelRuntime, Batch]], staged: list[_Staged], committed: int, error: Exception | None
    ) -> None:
        for k, (rt, b) in enumerate(jobs):
            if k < committed and error is None:
                try:
                    self._commit(rt, b, staged[k])
                except Exception as e:  # a bookkeeping bug: still answer everything it took
                    log.exception("applying an iteration's results failed")
                    self._fail_batch(rt, b, e, staged[k])
            else:
                self._fail_batch(rt, b, error or RuntimeError("the iteration was not run"))
        for _, b in jobs:
            for s in _sessions_of(b):
                s.end_iteration()
        self._iterations += 1

    def _schedule(self) -> list[tuple[ModelRuntime, Batch]]:
        """Plans this iteration for every model with work; answers what needs no device work
        (rejected offsets, closes reached in a session's queue) right away."""
        budget = self.settings.max_batch_tokens
        jobs: list[tuple[ModelRuntime, Batch]] = []
        for rt in self._runtimes.values():
            if not (rt.work or rt.completions):
                continue
            try:
                b = rt.scheduler.schedule(list(rt.work), list(rt.completions), budget, 0, _decode_steps(rt))
            except Exception as e:  # a scheduler bug: answer what it took, keep serving
                log.exception("scheduling an iteration failed")
                b = rt.scheduler.last_batch
                self._fail_batch(rt, b, e)
                for s, op, _err in b.failures:
                    self.deliveries.fail(op, e)
                    self._after_failure(s, op)
                for s, op in b.closes:
                    self.deliveries.fail(op, e)
                    self._after_failure(s, op)
                for s in [s for s in rt.work if not s.queue]:
                    del rt.work[s]
                continue
            b.plan.capacity = rt.alloc.wanted_capacity()  # after the scheduler took scratch slots
            if rt.mixer is not None:
                self._attach_memory(b)
            b.plan.checkpoint_capacity = rt.ck_alloc.wanted_capacity()
            for s in _sessions_of(b):
                s.begin_iteration()
            self._deliver_failures(b)
            for s, op in b.closes:
                self._close(s, SessionEvent.CLOSED)
                self.deliveries.resolve(op, None)
            for s in [s for s in rt.work if not s.queue]:
                del rt.work[s]
            if not b.plan.is_empty():
                jobs.append((rt, b))
            else:
                for s in _sessions_of(b):
                    s.end_iteration()
        return jobs

    def _iteration_stats(
        self,
        jobs: list[tuple[ModelRuntime, Batch]],
        results: list[RunResult],
        waits: list[tuple[float, ...]],
        chars_before: dict[str, int],
        beam_rows: int = 0,
    ) -> IterationStats:
        per_model = tuple(
            ModelIteration(rt.name, len(b.plan.rows), w, sum(secs for _p, _n, secs in res.phases))
            for (rt, b), w, res in zip(jobs, waits, results, strict=False)  # no results: the step failed
        )
        return IterationStats(
            rows=sum(len(b.plan.rows) for _, b in jobs) + beam_rows,
            queue_wait_s=tuple(t for w in waits for t in w),
            step_time_s=tuple((Phase(p), secs) for res in results for p, _n, secs in res.phases),
            chars=tuple(
                (Phase(p), n - chars_before.get(p, 0)) for p, n in self._chars.items() if n > chars_before.get(p, 0)
            ),
            models=per_model,
        )

    # ---- delivery --------------------------------------------------------------------------------
    def _deliver_failures(self, b: Batch) -> None:
        for s, op, err in b.failures:
            self.deliveries.fail(op, err)
            self._after_failure(s, op)

    def _after_failure(self, s: Session, op: Op) -> None:
        """The session did not move: later offsets are checked against its real position."""
        if isinstance(op, AppendOp) and s.last_piece is not None and s.last_piece[2] is op:
            s.last_piece = s.last_applied
        s.requeue_end()

    def _fail_batch(self, rt: ModelRuntime, b: Batch, err: Exception, staged: _Staged | None = None) -> None:
        """Answers every op of ``b`` not applied yet with ``err``; the sessions keep their state
        and position (the runner never wrote this job's states back). ``staged``: what a
        commit that broke off applied already (skipped)."""
        applied = staged.applied if staged is not None else set()
        for s in _sessions_of(b):
            s.end_iteration()  # nothing of this iteration landed
        for run in b.appends:
            if id(run) in applied:
                continue
            for op in run.ops:
                self.deliveries.fail(op, err)
                rt.free_scratch(op)
            if run.partial and run.ops[0] in run.session.queue:  # a chunk: the piece is still queued
                run.session.queue.remove(run.ops[0])
            if run.leading_write is not None:
                self._fail_write(rt, run.session, run.leading_write, err)
            ck = _checkpoint_of(b, run)
            if ck is not None and not run.session.history.holds(ck):  # recorded: the log owns it
                rt.release_checkpoint(ck)
            self._after_failure(run.session, run.ops[-1])
        for cw in b.controls:
            if id(cw) in applied:
                continue
            if cw.op.kind == "write":
                self._fail_write(rt, cw.session, cw.op, err)
            self.deliveries.fail(cw.op, err)
            if cw.op.kind == "complete" and cw.op.completion is not None:
                cw.op.completion.started = True
                self._cancel_completion(cw.op.completion)
            self._after_failure(cw.session, cw.op)
        for sw in b.steps:
            if not sw.alt.finish_reason:
                self._end_alternative(sw.completion, sw.alt, FinishReason.CANCELLED)

    def _fail_write(self, rt: ModelRuntime, s: Session, op: ControlOp, err: Exception) -> None:
        if op.applied:  # never undo or repeat a write that landed
            return
        if op.ticket is None and not s.closed:  # a new session's start state: its slot still needs it
            s.queue.appendleft(op)
            rt.work[s] = None
        else:  # a reset: the session keeps its old state and position
            self.deliveries.fail(op, err)

    # ---- the session memory's rows --------------------------------------------------------------
    def _attach_memory(self, b: Batch) -> None:
        """Gives every row that serves a distribution its session's memory as of the row's
        start (a fork: the runner never changes a memory; pushes happen at commit). A run that
        starts with a write starts from the memory the write installs; a run finishing (or a
        chunk continuing) a piece sees the piece's characters applied so far."""
        rows = b.plan.rows
        for run in b.appends:
            head = run.ops[0]
            base = run.leading_write.memory if run.leading_write is not None else run.session.memory
            if base is None or not all(op.options.memory for op in run.ops):
                continue  # per request: an op that turns the memory off serves the model alone
            fork = base.fork()
            fork.push(head.tokens[: run.first_done])
            rows[run.row].memory = fork
        for sw in b.steps:
            alt, c = sw.alt, sw.completion
            if alt.memory is None and alt.last_token is None and c.request.memory and c.session.memory is not None:
                alt.memory = c.session.memory.fork()  # the first character: the session's memory
            rows[sw.row].memory = alt.memory

    # ---- stage, then commit ---------------------------------------------------------------------
    def _stage(self, rt: ModelRuntime, b: Batch, res: RunResult) -> _Staged:
        """Everything the job answers, computed from its results without changing anything
        (device worker, no lock: it reads only what the worker itself writes). What can raise
        on bad results (a token id, a snapshot's encoding) raises here, before any commit."""
        st = _Staged(time.time())
        for phase, _chars, secs in res.phases:
            if phase == Phase.COMPLETION and b.steps:
                st.decode_step_s = secs / max(1, 1 + len(b.plan.rows[b.steps[0].row].more))
        for k, run in enumerate(b.appends):
            row = res.rows[run.row]
            if not run.partial:
                st.predictions[k] = self._predictions(rt, run, row)
            else:  # a chunk: what it answers waits on the op for the piece's Prediction
                o = run.ops[0].options
                st.chunks[k] = (row.logprobs if o.want_logprobs else [], row.gates if o.want_gates else [])
        for k, cw in enumerate(b.controls):
            if cw.op.kind == "snapshot":
                assert cw.read is not None
                st.blobs[k] = self._snapshot_blob(rt, cw.session, res.reads[cw.read], st.now)
            elif cw.op.kind == "suggest":
                assert cw.read is not None
                st.reads[k] = res.reads[cw.read]
        vocab = rt.loaded.vocab
        for sw in b.steps:
            row = res.rows[sw.row]
            if row.sampled is None:
                raise ValueError("a completion step returned no token")
            toks = [row.sampled, *row.sampled_more]
            st.drawn.append([(t, vocab.char(t)) for t in toks])
        return st

    def _predictions(self, rt: ModelRuntime, run: AppendRun, row: RowResult) -> list[Prediction]:
        """One Prediction per piece of a run applied whole (the first one possibly finishing a
        chunked piece)."""
        vocab = rt.loaded.vocab
        pos, tok_at = run.start, 0
        last = len(run.ops) - 1
        preds = []
        for k, op in enumerate(run.ops):
            n = len(op.text) - (run.first_done if k == 0 else 0)
            pos += len(op.text)
            o = op.options
            logprobs = [*op.logprobs, *row.logprobs[tok_at : tok_at + n]] if o.want_logprobs else []
            gates = [*op.gates, *row.gates[tok_at : tok_at + n]] if o.want_gates else []
            preds.append(
                Prediction(
                    position=pos,
                    top_k=tuple((vocab.char(i), p) for i, p in row.top_k[k][: o.top_k]),
                    logprobs=tuple(logprobs),
                    gates=tuple(GateTrace(rt.gate_names, tuple(tuple(layer) for layer in g)) for g in gates),
                    superseded=o.only_last and k < last,
                )
            )
            tok_at += n
        return preds

    def _snapshot_blob(self, rt: ModelRuntime, s: Session, raw: list[bytes], now: float) -> bytes:
        m = rt.loaded.model
        data = snap.SnapshotData(
            rt.name,
            rt.loaded.weights_sha256,
            m.cell,
            s.position,
            now,
            tuple((m.layers, m.hidden) for _ in range(m.state_arity)),
            tuple(raw),
            tenant=s.owner,
            expires_at=now + self.settings.snapshot_ttl_s,
            memory=s.memory.snapshot() if s.memory is not None else None,  # sealed with the state
        )
        return snap.encode(data, self._key)

    def _commit(self, rt: ModelRuntime, b: Batch, st: _Staged) -> None:
        """Applies a job whose states the runner wrote back: plain bookkeeping (positions,
        rewind logs, answers), each run or control marked applied as it lands."""
        if st.decode_step_s is not None:
            rt.decode_step_s = st.decode_step_s
        for k, run in enumerate(b.appends):
            if run.partial:
                self._commit_chunk(b, run, st.chunks[k], st.now)
            else:
                self._commit_run(rt, b, run, st.predictions[k], st.now)
            st.applied.add(id(run))
        for k, cw in enumerate(b.controls):
            self._commit_control(rt, b, cw, st, k)
            st.applied.add(id(cw))
        for sw, drawn in zip(b.steps, st.drawn, strict=True):
            self._commit_step(b.plan, sw.completion, sw.alt, sw.row, drawn)

    def _commit_control(self, rt: ModelRuntime, b: Batch, cw: ControlWork, st: _Staged, k: int) -> None:
        s, cop = cw.session, cw.op
        if cw.row is not None:
            self._chars[Phase.PREFILL] += len(b.plan.rows[cw.row].tokens)
        if s.closed and cop.kind in ("write", "rewind"):
            self.deliveries.fail(cop, NotFound(_NOT_FOUND))
        elif cop.kind == "write":
            self._apply_write(s, cop)
        elif cop.kind == "rewind":
            _rewind_memory(s, s.position - cw.target)
            s.apply(cw.target)
            s.history.truncate(cw.target)
            s.last_applied = None
            self.deliveries.resolve(cop, s.info())
        elif cop.kind == "snapshot":
            self.deliveries.resolve(cop, st.blobs[k])
        elif cop.kind == "suggest" and cop.suggest is not None and cop.ticket is not None:
            try:
                rt.beams.add(cop.suggest, cop.ticket, st.reads[k], s.memory.fork() if s.memory else None)
                cop.answered = True  # the search answers it (through the deliveries) when it ends
            except Exception as e:  # only this search fails; the session is untouched
                log.exception("starting a suggestion failed")
                self.deliveries.fail(cop, e)
        elif cop.kind == "complete" and cop.completion is not None:
            c = cop.completion
            c.started = True
            if c.running():
                rt.completions[c] = None
        s.last_used_at = st.now

    def _commit_chunk(
        self, b: Batch, run: AppendRun, answers: tuple[list[float], list[list[list[float]]]], now: float
    ) -> None:
        """A chunk of a long piece landed in its scratch slot: note the progress; the piece
        stays at the head of the session's queue (its Prediction comes with its last chunk)."""
        op = run.ops[0]
        n = len(b.plan.rows[run.row].tokens)
        self._chars[Phase.PREFILL] += n
        if op.answered:  # closed meanwhile: the close freed its scratch slot
            return
        op.done += n
        op.logprobs.extend(answers[0])
        op.gates.extend(answers[1])
        run.session.last_used_at = now

    def _commit_run(self, rt: ModelRuntime, b: Batch, run: AppendRun, preds: list[Prediction], now: float) -> None:
        s = run.session
        for op, pred in zip(run.ops, preds, strict=True):
            rt.free_scratch(op)
            if not op.with_session or s.closed:
                self.deliveries.resolve(op, pred)
        tok_at = sum(len(op.text) for op in run.ops) - run.first_done
        self._chars[Phase.STEP if tok_at == 1 and not run.first_done else Phase.PREFILL] += tok_at
        if s.closed:
            rt.release_checkpoint(_checkpoint_of(b, run))
            return
        self._apply_run(b, run, preds, now)
        for op, pred in zip(run.ops, preds, strict=True):
            if op.with_session:  # a resume's replay: the session as the replay left it
                self.deliveries.resolve(op, (s.info(), pred))

    def _apply_run(self, b: Batch, run: AppendRun, preds: list[Prediction], now: float) -> None:
        s = run.session
        if run.leading_write is not None:
            self._apply_write(s, run.leading_write)
        pos = preds[-1].position
        s.apply(pos)
        if s.memory is not None:  # the whole of every piece lands now (chunks pushed nothing)
            s.memory.push([t for op in run.ops for t in op.tokens])
            s.memory_changed()
        s.history.record("".join(op.text for op in run.ops), pos, _checkpoint_of(b, run))
        last = run.ops[-1]
        s.last_applied = (last.offset, last.text, preds[-1])
        if s.last_piece is not None and s.last_piece[2] is last:  # a retry now gets the value
            s.last_piece = s.last_applied
        s.last_used_at = now

    def _apply_write(self, s: Session, op: ControlOp) -> None:
        op.applied = True
        s.apply(op.position)
        s.memory = op.memory
        s.memory_changed()
        s.history.release_all()
        s.history = self._runtimes[s.model].new_history(op.position, op.state)
        s.last_applied = None
        self.deliveries.resolve(op, s.info())

    def _commit_step(self, plan: Plan, c: Completion, alt: Alternative, row: int, drawn: list[tuple[int, str]]) -> None:
        if alt.finish_reason:  # cancelled while the iteration ran
            return
        if plan.rows[row].tokens:
            alt.forked = True  # the scratch slot now holds the state after last_token
            if alt.memory is not None:  # generated text advances the alternative's fork only
                alt.memory.push(plan.rows[row].tokens)
            self._chars["completion"] += len(drawn)
        c.session.last_used_at = time.time()
        for tok, ch in drawn:  # several with multi-step decoding; still one chunk per character
            alt.text += ch
            alt.last_token = tok
            if any(alt.text.endswith(stop) for stop in c.request.stop):
                self._end_alternative(c, alt, FinishReason.STOP, ch)
                return
            if len(alt.text) >= c.request.max_chars:
                self._end_alternative(c, alt, FinishReason.LENGTH, ch)
                return
            self.deliveries.put(ChunkOut(c, CompletionChunk(alt.index, ch, False)))


@dataclass
class _Staged:
    """A job's answers, computed before anything is applied (``EngineCore._stage``)."""

    now: float
    predictions: dict[int, list[Prediction]] = field(default_factory=dict)  # append run index -> per piece
    blobs: dict[int, bytes] = field(default_factory=dict)  # control index -> snapshot blob
    reads: dict[int, list[bytes]] = field(default_factory=dict)  # control index -> a suggest's state
    chunks: dict[int, tuple[list[float], list[list[list[float]]]]] = field(default_factory=dict)  # logprobs, gates
    drawn: list[list[tuple[int, str]]] = field(default_factory=list)  # per completion step: (token, character)
    decode_step_s: float | None = None
    applied: set[int] = field(default_factory=set)  # ids of runs and controls committed


def _decode_steps(rt: ModelRuntime) -> int:
    """Steps the next completion-only iteration may take (see MAX_DECODE_STEPS)."""
    if rt.work or not rt.completions:
        return 1
    if any(a.memory is not None for c in rt.completions for a in c.running()):
        return 1  # a mixed step needs the memory's prediction after each drawn character
    if rt.decode_step_s <= 0:
        return 2
    return max(1, min(MAX_DECODE_STEPS, int(DECODE_BURST_S / rt.decode_step_s)))


def _rewind_memory(s: Session, chars: int) -> None:
    """The memory goes back with the state (exactly: ``pop`` undoes ``push``). A memory that
    holds less than that (it never read the text, e.g. after a resume whose blob carried
    none) starts empty at the target."""
    mem = s.memory
    if mem is None:
        return
    if chars <= mem.rewindable():
        mem.pop(chars)
    else:
        s.memory = SessionMemory(mem.settings)
    s.memory_changed()


def _checkpoint_of(b: Batch, run: AppendRun) -> CheckpointRef | None:
    slot = b.plan.rows[run.row].checkpoint
    return CheckpointRef(slot) if slot is not None else None


def _sessions_of(b: Batch) -> set[Session]:
    return {run.session for run in b.appends} | {cw.session for cw in b.controls}


def _submitted_times(b: Batch) -> list[float]:
    """Submission times of the operations this batch starts (a chunk counts once, its first)."""
    times = [op.submitted_at for run in b.appends for op in run.ops if not (run.first_done and op is run.ops[0])]
    return times + [cw.op.submitted_at for cw in b.controls]
