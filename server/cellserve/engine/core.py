"""The engine core: ``add(call)``, ``step() -> StepOutput``, ``has_work()``.

``EngineCore`` owns the model runtimes (``engine/runtime.py``: pool, runner, scheduler per
model), the session table (``engine/session_table.py``), the running completions and searches
(``engine/completion_book.py``) and the counters. It is synchronous and has nothing
asynchronous in it: no future, no lock, no event loop. Requests come in as ``Call``s carrying
integer tickets (``add``; refusals are answers like any other); ``step()`` plans one iteration
for every model with work (``_schedule``), executes the plans on the runners, stages every
answer, has the runners write their states back, then applies the results (``engine/update.py``).
Everything meant for a caller (a value or an error for a ticket, a completion chunk) goes to
the core's ``Deliveries``, which the pass hands on as a ``StepOutput`` of plain dataclasses,
with the iteration's ``IterationStats`` (``engine/core_io.py``).

Threads: one. The core thread (``engine/loop.py``) is the only one that touches a core; the
frontend turns tickets into futures (``engine/engine.py``). Driven directly (tests), the core
needs no thread and no loop.

Error behaviour (``cellserve.errors``): session lookups and caps as in ``SessionTable``; bad
requests raise ``InvalidInput`` at submission and change nothing. Failure is an output:
whatever raises in a step after scheduling (a runner phase, staging, a write-back) answers
every op of that step with the exception (the API reports INTERNAL) and the sessions are as
they were before it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from ..config import Settings
from ..errors import CapacityExceeded, CellserveError, InvalidInput, NotFound, OffsetConflict
from ..handoff.record import HandoffRecord
from ..memory.window import SessionMemory
from ..repository import ModelRepository
from .admission import Admission, Limits
from .completion_book import CompletionBook
from .completions import Completion
from .core_io import Call, Deliveries, Delivery, Outcome, StepOutput
from .handoff_records import SessionHandoff
from .limits import MAX_PENDING_SUGGESTS, check_suggest, completion_checked
from .memory_mix import attach_memory, memory_settings
from .plan import ZERO, RunResult
from .runtime import ModelRuntime, RunnerFactory, build_runtimes
from .scheduler import Batch
from .sequence_ids import SequenceIds
from .session_blobs import SessionBlobs
from .session_table import SESSION_NOT_FOUND, SessionTable
from .sessions import AppendOp, ControlOp, Session
from .types import (
    AppendOptions,
    CompletionRequest,
    EngineHealth,
    EngineStats,
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
from .update import Job, Staged, StepUpdate, sessions_of

log = logging.getLogger(__name__)

# Multi-step decoding (see the scheduler): when only completions run, an iteration takes up to
# MAX_DECODE_STEPS steps, as many as fit in DECODE_BURST_S at the latest measured step time, so
# a keystroke arriving meanwhile waits at most about that long. The figures behind the rule:
# docs/measurements.md, "Multi-step decoding".
MAX_DECODE_STEPS = 8
DECODE_BURST_S = 0.025

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
        self, settings: Settings, repository: ModelRepository, runner_factory: RunnerFactory | None = None
    ) -> None:
        """``runner_factory(loaded, pool, checkpoint_pool)`` builds each model's runner (anything with
        ``execute(plan) -> RunResult``); the default is ``ModelRunner``."""
        self.settings = settings
        self.repository = repository
        self.device = repository.device
        memory = memory_settings(settings)
        self._memory_settings = memory
        self._runtimes = build_runtimes(settings, repository, runner_factory)
        self.admission = Admission(settings)  # every quota and global stream cap (engine/admission.py)
        self.sequence_ids = SequenceIds(2 * settings.max_sessions)  # KServe sequences, for every frontend
        self.deliveries = Deliveries()  # what callers get with the next pass (core_io.py)
        self.completions = CompletionBook(self.admission, self._runtimes, self.deliveries)
        self.sessions = SessionTable(settings, self.admission, self._runtimes, self.deliveries, self.completions)
        self._blobs = SessionBlobs(settings, self._runtimes, memory)
        self._handoff = SessionHandoff(settings, self.sessions, self._runtimes, self._blobs, self.sequence_ids)
        self._iterations = 0
        self._chars: dict[str, int] = {p: 0 for p in Phase}
        self._update = StepUpdate(self.deliveries, self.completions, self._blobs, self._chars)
        self._model_totals: dict[str, ModelTotals] = {}  # EngineStats.models

    # ---- queries -----------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return [rt.info for rt in self._runtimes.values()]

    def get_session(self, session_id: str, owner: str = "") -> SessionInfo:
        return self.sessions.get(session_id, owner).info()

    def get_session_queued(self, session_id: str, owner: str = "") -> SessionInfo:
        """The session with ``position`` = the offset the next append must carry."""
        s = self.sessions.get(session_id, owner)
        return s.info(s.queued_end)

    def session_ids(self) -> set[str]:
        return self.sessions.ids()

    def stats(self) -> EngineStats:
        """Cumulative counters and gauges now; reading changes nothing (any number of readers).
        Per-iteration observations come out of ``step()`` (``StepOutput.stats``)."""
        memory_bytes = self.sessions.memory_bytes()
        runtimes = self._runtimes.values()
        return EngineStats(
            active_sessions=len(self.sessions),
            slots_capacity=sum(rt.pool.capacity for rt in runtimes),
            slots_max=sum(rt.alloc.slots_max for rt in runtimes),
            slots_used=sum(rt.alloc.used for rt in runtimes),
            state_bytes=sum(rt.pool.nbytes + rt.ck_pool.nbytes for rt in runtimes) + memory_bytes,
            memory_bytes=memory_bytes,
            running_completions=self.completions.running_alternatives,
            iterations=self._iterations,
            chars_processed=dict(self._chars),
            session_events=dict(self.sessions.events),
            models=tuple(self._model_totals.values()),
        )

    def health(self, owner: str = "") -> EngineHealth:
        return EngineHealth(
            serving=not self.sessions.draining,
            active_sessions=len(self.sessions),
            slots_used=sum(rt.alloc.used for rt in self._runtimes.values()),
            slots_max=sum(rt.alloc.slots_max for rt in self._runtimes.values()),
            running_completions=self.completions.running_alternatives,
            owner_sessions=self.sessions.owner_count(owner),
        )

    def has_work(self) -> bool:
        """Work is queued, running or completing: ``step()`` has something to do."""
        return any(rt.work or rt.completions or rt.beams.running for rt in self._runtimes.values()) or (
            self.completions.running_alternatives > 0
        )

    # ---- calls in, deliveries out --------------------------------------------------------------
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

    def idle_output(self) -> StepOutput:
        """A pass without a step: what the calls since the last pass answered."""
        return StepOutput(self._take_deliveries(), None, not self.has_work())

    def after_failed_step(self) -> StepOutput:
        """What a ``step()`` that raised (a bug in the core's own bookkeeping) left for callers;
        its work stays queued for the next step."""
        return StepOutput(self._take_deliveries(), None, not self.has_work())

    def take_deliveries(self) -> list[Delivery]:
        """What the calls since the last pass produced for callers (a close that failed
        queued ops, a cancelled completion), for a frontend that ran them on the core itself
        (after the core thread stopped): it applies them after such a call."""
        return self._take_deliveries()

    def _take_deliveries(self) -> list[Delivery]:
        out = self.deliveries.take()
        pending = self.completions.suggest_tickets
        if pending:
            for d in out:
                if isinstance(d, Outcome):
                    pending.discard(d.ticket)
        return out

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

    def start_draining(self) -> None:
        """New sessions are refused from now on (Unavailable)."""
        self.sessions.draining = True

    # ---- KServe sequence ids (engine/sequence_ids.py) ---------------------------------------------
    def bind_sequence(self, owner: str, model: str, seq: str, session_id: str) -> str | None:
        """Binds the sequence to the session just opened for its START; returns the session it
        named before, still live (its owner restarted it: the caller closes that one)."""
        return self.sequence_ids.bind((owner, model, seq), session_id, self.sessions.alive_of(owner))

    def find_sequence(self, owner: str, model: str, seq: str) -> SessionInfo:
        """The live session of the sequence, as ``get_session_queued`` (NotFound: not live)."""
        sid = self.sequence_ids.find((owner, model, seq), self.sessions.alive_of(owner))
        if sid is None:
            raise NotFound(SESSION_NOT_FOUND)
        return self.get_session_queued(sid, owner)

    def forget_sequence(self, owner: str, model: str, seq: str, session_id: str) -> None:
        self.sequence_ids.forget((owner, model, seq), session_id)

    # ---- session operations ------------------------------------------------------------------
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
        s.accept_append(AppendOp(offset, text, rt.loaded.vocab.encode(text), options, ticket, time.perf_counter()))
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

    def expire_idle(self, cutoff: float) -> None:
        """Closes sessions unused since ``cutoff`` (unix seconds) whose work is all done
        (``SessionTable.expire``)."""
        self.sessions.expire(cutoff)

    def export_sessions(self, idle_s: float | None, move: bool = False) -> list[HandoffRecord]:
        """Idle sessions as handoff records (``SessionHandoff.export``)."""
        return self._handoff.export(idle_s, move)

    def adopt(self, owner: str, record: HandoffRecord) -> SessionInfo:
        """The record's session, here, under its own id (``SessionHandoff.adopt``)."""
        return self._handoff.adopt(owner, record)

    def fail_all(self, err: BaseException) -> None:
        """At stop, after the last step: everything still queued fails with ``err``."""
        for s in self.sessions.values():
            for op in s.queue:
                self.deliveries.fail(op, err)
            s.queue.clear()
            self.completions.cancel_of(s)
        for rt in self._runtimes.values():
            rt.beams.fail_all(err)
            self.completions.answer_beams(rt)

    def _control(self, s: Session, op: ControlOp) -> None:
        s.accept_control(op)
        s.last_used_at = time.time()
        self._runtimes[s.model].work[s] = None

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
        staged: list[Staged] = []
        committed = 0  # jobs whose runner wrote its states back
        error: Exception | None = None
        if jobs:
            try:
                results = [rt.runner.execute(b.plan) for rt, b in jobs]
                staged = [self._update.stage(rt, b, res) for (rt, b), res in zip(jobs, results, strict=True)]
                for rt, _b in jobs:
                    rt.runner.commit()
                    committed += 1
            except Exception as e:  # nothing of the uncommitted jobs landed
                log.exception("engine iteration failed")
                error = e
        beam_rows = self.completions.step_beams()
        stats = None
        if jobs:
            self._update.apply(jobs, staged, committed, error)
        if jobs or beam_rows:
            self._iterations += 1
        if jobs or beam_rows:
            try:
                stats = self._iteration_stats(jobs, results if error is None else [], waits, chars_before, beam_rows)
                for mi in stats.models:
                    self._model_totals[mi.model] = self._model_totals.get(mi.model, ModelTotals(mi.model)).plus(mi)
            except Exception:  # statistics are not worth an iteration's answers
                log.exception("computing an iteration's statistics failed")
        for rt in self._runtimes.values():
            self.completions.answer_beams(rt)
        return StepOutput(self._take_deliveries(), stats, not self.has_work())

    def _schedule(self) -> list[Job]:
        """Plans this iteration for every model with work; answers what needs no device work
        (rejected offsets, closes reached in a session's queue) right away."""
        budget = self.settings.max_batch_tokens
        jobs: list[Job] = []
        for rt in self._runtimes.values():
            if not (rt.work or rt.completions):
                continue
            try:
                b = rt.scheduler.schedule(list(rt.work), list(rt.completions), budget, 0, _decode_steps(rt))
            except Exception as e:  # a scheduler bug: answer what it took, keep serving
                log.exception("scheduling an iteration failed")
                b = rt.scheduler.last_batch
                self._update.fail_batch(rt, b, e)
                self._update.fail_rejected(b, e)
                for s, op in b.closes:
                    self.deliveries.fail(op, e)
                    self._update.after_failure(s, op)
                for s in [s for s in rt.work if not s.queue]:
                    del rt.work[s]
                continue
            b.plan.capacity = rt.alloc.wanted_capacity()  # after the scheduler took scratch slots
            if rt.mixer is not None:
                attach_memory(b)
            b.plan.checkpoint_capacity = rt.ck_alloc.wanted_capacity()
            for s in sessions_of(b):
                s.begin_iteration()
            self._update.fail_rejected(b)
            for s, op in b.closes:
                self.sessions.close(s, SessionEvent.CLOSED)
                self.deliveries.resolve(op, None)
            for s in [s for s in rt.work if not s.queue]:
                del rt.work[s]
            if not b.plan.is_empty():
                jobs.append((rt, b))
            else:
                for s in sessions_of(b):
                    s.end_iteration()
        return jobs

    def _iteration_stats(
        self,
        jobs: list[Job],
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

    # ---- internals ---------------------------------------------------------------------------
    def _runtime(self, model: str | None) -> ModelRuntime:
        rt = self._runtimes.get(model or self.repository.default)
        if rt is None:
            raise NotFound("unknown model")
        return rt

    def _fresh_memory(self, rt: ModelRuntime, wanted: bool) -> SessionMemory | None:
        """An empty session memory when the model mixes one and the session wants it."""
        return SessionMemory(self._memory_settings) if wanted and rt.mixer is not None else None


def _decode_steps(rt: ModelRuntime) -> int:
    """Steps the next completion-only iteration may take (see MAX_DECODE_STEPS)."""
    if rt.work or not rt.completions:
        return 1
    if any(a.memory is not None for c in rt.completions for a in c.running()):
        return 1  # a mixed step needs the memory's prediction after each drawn character
    if rt.decode_step_s <= 0:
        return 2
    return max(1, min(MAX_DECODE_STEPS, int(DECODE_BURST_S / rt.decode_step_s)))


def _submitted_times(b: Batch) -> list[float]:
    """Submission times of the operations this batch starts (a chunk counts once, its first)."""
    times = [op.submitted_at for run in b.appends for op in run.ops if not (run.first_done and op is run.ops[0])]
    return times + [cw.op.submitted_at for cw in b.controls]
