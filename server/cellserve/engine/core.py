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
from collections.abc import Iterable

from ..config import Settings
from ..errors import CellserveError, InvalidInput, NotFound
from ..handoff.record import HandoffRecord
from ..repository import ModelRepository
from .admission import Admission, Limits
from .completion_book import CompletionBook
from .core_io import Call, Deliveries, Delivery, Outcome, StepOutput
from .handoff_records import SessionHandoff
from .ledger import Ledger
from .memory_mix import attach_memory, memory_settings
from .plan import RunResult
from .runtime import ModelRuntime, RunnerFactory, build_runtimes
from .scheduler import Batch
from .sequence_ids import SequenceIds
from .session_blobs import SessionBlobs
from .session_ops import SessionOps
from .session_table import SESSION_NOT_FOUND, SessionTable
from .shards import ONE, Shard
from .types import (
    EngineHealth,
    EngineStats,
    IterationStats,
    ModelInfo,
    ModelIteration,
    ModelTotals,
    Phase,
    SessionEvent,
    SessionInfo,
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


class EngineCore(SessionOps):
    def __init__(
        self,
        settings: Settings,
        repository: ModelRepository,
        runner_factory: RunnerFactory | None = None,
        *,
        ledger: Ledger | None = None,
        shard: Shard = ONE,
    ) -> None:
        """``runner_factory(loaded, pool, checkpoint_pool)`` builds each model's runner (anything with
        ``execute(plan) -> RunResult``); the default is ``ModelRunner``. ``ledger``: the admission
        ledger shared by several core processes (engine/ledger.py); default, a private one.
        ``shard``: which of the server's core processes this is (its session ids name it)."""
        self.shard = shard
        self.settings = settings
        self.repository = repository
        self.device = repository.device
        self._memory_settings = memory_settings(settings)
        self._runtimes = build_runtimes(settings, repository, runner_factory)
        self.admission = Admission(settings, ledger=ledger)  # every quota and global cap (engine/admission.py)
        self.sequence_ids = SequenceIds(2 * settings.max_sessions)  # KServe sequences, for every frontend
        self.deliveries = Deliveries()  # what callers get with the next pass (core_io.py)
        self.completions = CompletionBook(self.admission, self._runtimes, self.deliveries)
        self.sessions = SessionTable(self.admission, self._runtimes, self.deliveries, self.completions, shard.mint_id)
        self._blobs = SessionBlobs(settings, self._runtimes, self._memory_settings)
        self._handoff = SessionHandoff(settings, self.sessions, self._runtimes, self._blobs, self.sequence_ids)
        self._iterations = 0
        self._busy_until = 0.0  # monotonic time before which the core guesses no keystrokes
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
            speculation=_speculation_totals(runtimes),
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
        return StepOutput(self.take_deliveries(), None, not self.has_work())

    def after_failed_step(self) -> StepOutput:
        """What a ``step()`` that raised (a bug in the core's own bookkeeping) left for callers;
        its work stays queued for the next step."""
        return self.idle_output()

    def take_deliveries(self) -> list[Delivery]:
        """What the calls since the last pass produced for callers (a close that failed
        queued ops, a cancelled completion), for a frontend that ran them on the core itself
        (after the core thread stopped): it applies them after such a call."""
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
            try:
                stats = self._iteration_stats(jobs, results if error is None else [], waits, chars_before, beam_rows)
                if dict(stats.chars).get(Phase.STEP, 0) >= self.settings.speculation_busy_rows:
                    # many sessions typing at once: no guessing for a while
                    self._busy_until = time.monotonic() + self.settings.speculation_busy_hold_s
                for mi in stats.models:
                    self._model_totals[mi.model] = self._model_totals.get(mi.model, ModelTotals(mi.model)).plus(mi)
            except Exception:  # statistics are not worth an iteration's answers
                log.exception("computing an iteration's statistics failed")
        for rt in self._runtimes.values():
            self.completions.answer_beams(rt)
        return StepOutput(self.take_deliveries(), stats, not self.has_work())

    def speculating(self) -> bool:
        """Some model has sessions to guess for (``speculate`` would do something)."""
        return not self._busy() and any(rt.speculator.pending() for rt in self._runtimes.values())

    def speculate(self) -> bool:
        """One small batch of speculative keystrokes (engine/speculation.py), only while
        nothing is queued, running or completing, and not shortly after a busy step
        (``Settings.speculation_busy_rows``); False: nothing to guess now."""
        if self.has_work() or self._busy():
            return False
        return any(rt.speculator.run_batch() for rt in self._runtimes.values())

    def _busy(self) -> bool:
        """A step of ``speculation_busy_rows`` keystrokes or more ran within the last
        ``speculation_busy_hold_s``."""
        return time.monotonic() < self._busy_until

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


def _decode_steps(rt: ModelRuntime) -> int:
    """Steps the next completion-only iteration may take (see MAX_DECODE_STEPS)."""
    if rt.work or not rt.completions:
        return 1
    if any(a.memory is not None for c in rt.completions for a in c.running()) and not rt.runner.decodes_mixed:
        return 1  # a mixed step needs the memory's prediction after each drawn character, on the host
    if rt.decode_step_s <= 0:
        return 2
    return max(1, min(MAX_DECODE_STEPS, int(DECODE_BURST_S / rt.decode_step_s)))


def _speculation_totals(runtimes: Iterable[ModelRuntime]) -> dict[str, int]:
    """Every model's speculation counters (and scratch slots held), summed."""
    out: dict[str, int] = {}
    for rt in runtimes:
        for key, n in rt.speculator.counts.as_dict(rt.speculator.slots).items():
            out[key] = out.get(key, 0) + n
    return out


def _submitted_times(b: Batch) -> list[float]:
    """Submission times of the operations this batch starts (a chunk counts once, its first)."""
    times = [op.submitted_at for run in b.appends for op in run.ops if not (run.first_done and op is run.ops[0])]
    return times + [cw.op.submitted_at for cw in b.controls]
