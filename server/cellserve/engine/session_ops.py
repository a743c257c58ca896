"""The session operations of the engine core (``EngineCore`` is made of this and the step
loop in ``engine/core.py``): each checks its request and either refuses it at once (it raises;
nothing changed) or queues an op on the session for the next step, answered to its ticket
when applied.

One place per kind of submission: an append goes through ``submit_append``; every other
ordered op (rewind, reset, snapshot, suggest, a close behind queued work) through
``_control``. A session's ops are applied strictly in the order accepted (``engine/sessions.py``).
"""

from __future__ import annotations

import time
from dataclasses import replace

from ..config import Settings
from ..errors import CapacityExceeded, InvalidInput, NotFound, OffsetConflict
from ..memory.settings import MemorySettings
from ..memory.window import SessionMemory
from ..repository import ModelRepository
from .admission import Admission
from .completion_book import CompletionBook
from .completions import Completion
from .core_io import Deliveries, Outcome
from .limits import MAX_PENDING_SUGGESTS, check_suggest, completion_checked
from .plan import ZERO
from .runtime import ModelRuntime
from .session_blobs import SessionBlobs
from .session_table import SessionTable
from .sessions import AppendOp, ControlOp, Session
from .types import AppendOptions, CompletionRequest, Phase, Prediction, SessionEvent, SessionInfo, SuggestRequest


class SessionOps:
    """Mixed into ``EngineCore`` (no indirection per keystroke); the core sets these up."""

    settings: Settings
    repository: ModelRepository
    admission: Admission
    deliveries: Deliveries
    completions: CompletionBook
    sessions: SessionTable
    _runtimes: dict[str, ModelRuntime]
    _blobs: SessionBlobs
    _memory_settings: MemorySettings
    _chars: dict[str, int]  # characters per Phase (EngineStats.chars_processed)

    def open_session(self, model: str | None = None, owner: str = "", memory: bool = True) -> SessionInfo:
        """A new session; ``memory`` False: its distributions are the model's alone even when
        the model ships a mixer (no session memory is kept)."""
        rt = self._runtime(model)
        return self.sessions.open(rt, owner, 0, ZERO, SessionEvent.OPENED, self._fresh_memory(rt, memory)).info()

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
        s = self.sessions.get(session_id, owner)
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
        self.completions.cancel_of(s)
        rt = self._runtimes[s.model]
        guess = rt.speculator.take(s, offset, text, options)
        if guess is not None:  # stepped while the engine was idle: no model step now
            self._chars[Phase.STEP] += 1
            return Outcome(ticket, rt.speculator.adopt(s, guess, offset, text, time.time()))
        s.accept_append(AppendOp(offset, text, rt.loaded.vocab.encode(text), options, ticket, time.perf_counter()))
        rt.speculator.discard(s)  # whatever the op, the session's guesses no longer hold
        rt.work[s] = None
        return None

    def complete(self, session_id: str, request: CompletionRequest, owner: str, ticket: int) -> Completion:
        """Starts a completion forked from the session's state once the operations accepted
        before it are applied; its chunks are addressed to ``ticket``. The session is never
        changed; an Append, Reset, Rewind or Close of the session, or ``cancel_completion``,
        cancels it."""
        s = self.sessions.get(session_id, owner)
        request = completion_checked(request, self.settings)
        rt = self._runtimes[s.model]
        if self.completions.running_alternatives + request.n > self.settings.max_running_completions:
            self.sessions.count(SessionEvent.REJECTED_COMPLETION)
            raise CapacityExceeded("too many completions are running", retry_after_s=0.5)
        c = self.completions.start(rt, s, request, owner, ticket)
        s.queue.append(ControlOp("complete", None, time.perf_counter(), completion=c))
        s.last_used_at = time.time()
        rt.speculator.discard(s)
        rt.work[s] = None
        return c

    def cancel_completion(self, ticket: int) -> None:
        """The consumer of completion ``ticket`` went away: it ends (its slots are freed)."""
        self.completions.cancel_ticket(ticket)

    def submit_rewind(self, session_id: str, chars: int, owner: str, ticket: int) -> None:
        """Restores exactly the state ``chars`` characters back (1 <= chars <= position);
        beyond the rewind window: PreconditionFailed."""
        s = self.sessions.get(session_id, owner)
        if chars <= 0:
            raise InvalidInput("rewind chars must be positive")
        if not s.queue and not s.in_flight:  # answer bad requests without an iteration
            s.history.plan(s.position, chars)
        self.completions.cancel_of(s)
        self._control(s, ControlOp("rewind", ticket, time.perf_counter(), chars=chars))

    def submit_reset(self, session_id: str, owner: str, ticket: int) -> None:
        s = self.sessions.get(session_id, owner)
        self.completions.cancel_of(s)
        mem = self._fresh_memory(self._runtimes[s.model], s.memory is not None)
        self._control(s, ControlOp("write", ticket, time.perf_counter(), state=ZERO, position=0, memory=mem))

    def submit_snapshot(self, session_id: str, owner: str, ticket: int) -> None:
        """A signed blob of the state after the operations accepted before it."""
        s = self.sessions.get(session_id, owner)
        self._control(s, ControlOp("snapshot", ticket, time.perf_counter()))

    def resume(self, blob: bytes, replay: str, options: AppendOptions, owner: str, ticket: int) -> Outcome | None:
        """A new session (new id) at the snapshot's position with its state, bit-exact (its
        start state is written by the next iteration), then ``replay`` appended to it:
        ``ticket`` gets (the session, the replay's Prediction or None) once the replay is.
        The blob is checked here (``SessionBlobs.open``); its state bytes become tensors in the
        runner (``HostState``)."""
        self.sessions.check_open()
        if len(replay) > self.settings.max_append_chars:
            raise InvalidInput(f"replay has {len(replay)} characters; the limit is {self.settings.max_append_chars}")
        rt, data, state = self._blobs.open(blob, owner)
        if replay:  # the replay is charged before the session exists: a refusal leaves nothing behind
            self.sessions.check_open()
            self.sessions.check_quota(owner)
            self.admission.take_chars(owner, len(replay))
        memory = self._blobs.memory_of(rt, data)
        s = self.sessions.open(rt, owner, data.position, state, SessionEvent.RESUMED, memory)
        if not replay:
            return Outcome(ticket, (s.info(), None))
        self.submit_append(s.session_id, s.position, replay, options, owner, ticket, charged=True)
        op = s.queue[-1]
        assert isinstance(op, AppendOp)
        op.with_session = True
        return None

    def submit_suggest(self, session_id: str, request: SuggestRequest, owner: str, ticket: int) -> None:
        """The n most probable completions (``list[Suggestion]`` to ``ticket``), by beam
        search on a copy of the session's state as it is after the operations accepted before
        it; the session never changes. Searches advance one character per ``step()``."""
        s = self.sessions.get(session_id, owner)
        check_suggest(request)
        if len(self.completions.suggest_tickets) >= MAX_PENDING_SUGGESTS:
            raise CapacityExceeded("too many suggestions are waiting or running", retry_after_s=0.5)
        self._control(s, ControlOp("suggest", ticket, time.perf_counter(), suggest=request))
        self.completions.suggest_tickets.add(ticket)  # after it was queued: a refused op holds no ticket

    def submit_close(self, session_id: str, owner: str, ticket: int) -> None:
        """Closes the session once the operations accepted before it are answered (at once
        when none are waiting)."""
        s = self.sessions.get(session_id, owner)
        if not s.queue and not s.in_flight:
            self.sessions.close(s, SessionEvent.CLOSED)
            self.deliveries.put(Outcome(ticket))
            return
        self.completions.cancel_of(s)
        self._control(s, ControlOp("close", ticket, time.perf_counter()))

    def _control(self, s: Session, op: ControlOp) -> None:
        s.accept_control(op)
        s.last_used_at = time.time()
        rt = self._runtimes[s.model]
        rt.speculator.discard(s)  # whatever the op, the session's guesses no longer hold
        rt.work[s] = None

    def _runtime(self, model: str | None) -> ModelRuntime:
        rt = self._runtimes.get(model or self.repository.default)
        if rt is None:
            raise NotFound("unknown model")
        return rt

    def _fresh_memory(self, rt: ModelRuntime, wanted: bool) -> SessionMemory | None:
        """An empty session memory when the model mixes one and the session wants it."""
        return SessionMemory(self._memory_settings) if wanted and rt.mixer is not None else None
