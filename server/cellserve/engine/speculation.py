"""Speculative keystrokes: a typing session's likeliest next characters, stepped while the
engine has nothing else to do, so the keystroke that is one of them needs no model step.

A typist leaves the device idle for 100+ ms between keystrokes. When nothing is queued, the
core thread asks the ``Speculator`` of each model for one small batch (``run_batch``): the k
most probable next characters of each recently active session, each stepped from the
session's slot into a scratch slot of its own, in one batched call, with the session's
memory mixed in as if that character had been pushed (the runner mixes a row's end point with
its memory fork plus the row's token: exactly the keystroke's own row). What comes back is
kept per session as ``Guess``es: the state (its scratch slot, and a rewind checkpoint copy
where the session's log would take one), the ``Prediction`` the keystroke would get, and the
k likeliest characters after it (the next round's guesses).

When the next append of that session is one of them (one character, at the session's
position, with the options the guesses were computed with, nothing else queued), ``take``
returns the guess and ``adopt`` applies it as the keystroke's own commit would: the scratch
slot becomes the session's slot (a handle swap: no copy, no step), the memory pushes the
character, the rewind log records the piece with the guess's checkpoint. Any other operation
on the session (other text, a rewind, reset, snapshot, completion, suggestion, close) is
queued by ``engine/session_ops.py`` (``submit_append``, ``_control``, ``complete``), which
``discard``s the guesses; a closed session is ``forget``-ten (``SessionTable.close``).

Exactness: a guess must be bit-identical to the step the keystroke would have had, although
it ran in another batch. Only a batch-invariant precision gives that (``EXACT_PRECISIONS``:
int8, see docs/precision.md; fp32's and the half precisions' GEMM kernels change with the
number of rows), and the mixer is row-invariant (``memory.mixer._row_linear``). Models served
at another precision never speculate.

Never in the way: the core calls ``run_batch`` only when nothing is queued, running or
completing; a batch holds at most ``BATCH_ROWS`` rows, and the core loop checks its inbox
between batches, so work that arrives waits at most one small batch. Memory is bounded:
``speculation_slots`` state slots per model (and as many checkpoint slots at most), taken from
the model's pools and so counted in ``state_bytes``. Speculation never changes a session: a
failed batch only frees its slots.

Single-threaded: the core thread owns this, as it owns the core.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..config import Settings
from ..errors import CapacityExceeded
from ..memory.window import MemoryFork
from ..nn.vocab import Vocab
from .plan import CheckpointRef, Plan, Row, RunResult
from .sessions import Session
from .state_pool import SlotAllocator
from .types import AppendOptions, Prediction

log = logging.getLogger(__name__)

# Precisions whose step, head and mix give a row the same bits whatever its batch companions
# (tests/nn/test_int8.py; fp32 and bf16 differ between batch sizes on CPU: docs/precision.md).
EXACT_PRECISIONS = frozenset({"int8"})
# Rows of one speculative batch: small, so a keystroke arriving meanwhile waits at most about
# one int8 step of this many rows (~1 ms on CPU), yet enough for 8 sessions' guesses at k=4.
BATCH_ROWS = 32


class _Runner(Protocol):
    def execute(self, plan: Plan) -> RunResult: ...

    def commit(self) -> None: ...


@dataclass(eq=False)
class Guess:
    """One guessed next character of a session, stepped."""

    char: str
    token: int
    slot: int  # scratch slot holding the state after ``char``
    checkpoint: int | None  # checkpoint-pool slot holding a copy of it (the log wants one there)
    prediction: Prediction | None = None  # what the keystroke is answered; None until run
    after: list[int] = field(default_factory=list)  # the likeliest tokens after it (next guesses)


@dataclass(eq=False)
class _Entry:
    """A session's guesses, valid while nothing else was submitted to it."""

    position: int
    options: AppendOptions
    guesses: dict[str, Guess]


@dataclass(eq=False)
class _Active:
    """A session that typed recently: the options of its latest append, and the tokens to
    guess next when known (None: a peek row finds them)."""

    options: AppendOptions
    candidates: list[int] | None
    at: float  # monotonic seconds of its latest append
    answer: Prediction | None = None  # the latest answer, read for candidates when guessing starts


@dataclass
class SpeculationCounts:
    """Cumulative counters (``EngineStats.speculation``)."""

    hits: int = 0  # keystrokes answered from a guess
    misses: int = 0  # keystrokes of a session with guesses, none of them matching
    unguessed: int = 0  # keystrokes of a session without guesses (not yet run, or not typing)
    rows: int = 0  # rows stepped speculatively (peeks not included)
    wasted_rows: int = 0  # guesses dropped unused

    def as_dict(self, slots: int) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "unguessed": self.unguessed,
            "rows": self.rows,
            "wasted_rows": self.wasted_rows,
            "slots": slots,
        }


class Speculator:
    """One model's speculative keystrokes (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        enabled: bool,
        vocab: Vocab,
        runner: _Runner,
        alloc: SlotAllocator,
        ck_alloc: SlotAllocator,
        mixes: bool,
    ) -> None:
        """``runner``: the model's runner (``execute(plan)``, ``commit()``); ``mixes``: the
        model serves a session memory (rows carry the session's memory fork)."""
        self.enabled = enabled
        self.k = settings.speculation_k
        self.max_slots = settings.speculation_slots
        self.recent_s = settings.speculation_recent_s
        self.max_top_k = settings.max_top_k
        self._vocab = vocab
        self._runner = runner
        self._alloc = alloc
        self._ck_alloc = ck_alloc
        self._mixes = mixes
        self._active: OrderedDict[Session, _Active] = OrderedDict()  # least recently active first
        self._todo: OrderedDict[Session, None] = OrderedDict()  # active sessions without guesses
        self._entries: dict[Session, _Entry] = {}
        self.slots = 0  # state slots held by guesses
        self.counts = SpeculationCounts()

    # ---- hooks of the core ---------------------------------------------------------------------
    def note(self, s: Session, options: AppendOptions, candidates: list[int] | None = None) -> None:
        """An append of ``s`` was applied (``candidates``: the likeliest next tokens when the
        answer knew them): the session is typing, and worth guessing for."""
        if not self.enabled or options.want_gates:  # gates come from the fp32 reference cells
            return
        # the answer's top-k is read into candidates only when guessing starts: under load the
        # core is never idle, and every keystroke is noted (docs/measurements.md)
        answer = s.last_applied[2] if candidates is None and s.last_applied is not None else None
        act = self._active.get(s)
        if act is None:
            self._active[s] = _Active(options, candidates, time.monotonic(), answer)
        else:  # updated in place: noted at every keystroke
            act.options, act.candidates, act.at, act.answer = options, candidates, time.monotonic(), answer
            self._active.move_to_end(s)
        self._todo[s] = None
        self._todo.move_to_end(s)

    def discard(self, s: Session) -> None:
        """An operation was submitted to ``s``: its guesses no longer hold. It stays active and
        is guessed for again once idle (the state may have changed: candidates found anew)."""
        entry = self._entries.pop(s, None)
        if entry is not None:
            self._free(entry.guesses.values())
        act = self._active.get(s)
        if act is not None:
            act.candidates = act.answer = None
            self._todo[s] = None

    def forget(self, s: Session) -> None:
        """``s`` closed."""
        self.discard(s)
        self._active.pop(s, None)
        self._todo.pop(s, None)

    def take(self, s: Session, offset: int, text: str, options: AppendOptions) -> Guess | None:
        """The guess answering this append, if there is one (removed, its siblings freed); None:
        the append runs as usual (and ``submit_append`` discards the session's guesses)."""
        if not self.enabled or len(text) != 1:
            return None
        entry = self._entries.get(s)
        if entry is None:
            self.counts.unguessed += 1
            return None
        guess = entry.guesses.get(text)
        if (
            guess is None
            or guess.prediction is None
            or options != entry.options
            or offset != s.position
            or entry.position != s.position
            or s.queue
            or s.in_flight
        ):
            self.counts.misses += 1
            return None
        del self._entries[s]
        self._free(g for g in entry.guesses.values() if g is not guess)
        self.counts.hits += 1
        return guess

    def adopt(self, s: Session, guess: Guess, offset: int, text: str, now: float) -> Prediction:
        """Applies a taken guess as the keystroke's commit would (``Session.land_piece``, as
        ``StepUpdate._apply_run`` does for one one-character piece): the guess's slot becomes the session's, the memory reads the
        character, the rewind log records it. Returns the keystroke's answer."""
        pred = guess.prediction
        assert pred is not None
        old, s.slot = s.slot, guess.slot
        self._alloc.free(old)  # nothing reads it any more: the session was idle
        self.slots -= 1
        pos = s.position + 1
        ck = CheckpointRef(guess.checkpoint) if guess.checkpoint is not None else None
        s.land_piece(pos, [guess.token], text, ck, (offset, text, pred), now)
        s.queued_end = s.planned_end = pos
        s.last_piece = s.last_applied
        act = self._active.get(s)
        self.note(s, act.options if act is not None else AppendOptions(), guess.after or None)
        return pred

    def guessed(self, s: Session) -> tuple[str, ...]:
        """The characters ``s`` holds stepped guesses for now (most probable first)."""
        entry = self._entries.get(s)
        return tuple(entry.guesses) if entry is not None else ()

    # ---- the idle work ----------------------------------------------------------------------------
    def pending(self) -> bool:
        """Some active session has no guesses yet (``run_batch`` may have work)."""
        return self.enabled and bool(self._todo)

    def run_batch(self) -> bool:
        """One batch of guesses (at most ``BATCH_ROWS`` rows) for the most recently active
        sessions without any; False: nothing to do. Only while the core has nothing queued."""
        if not self.enabled:
            return False
        self._drop_quiet()
        plan = Plan()
        work: list[tuple[Session, list[Guess] | None, int]] = []  # (session, guesses or a peek, first row)
        for s in list(reversed(self._todo)):
            if len(plan.rows) >= BATCH_ROWS:
                break
            act = self._active[s]
            if s.closed or s.queue or s.in_flight:
                continue
            top_k = max(act.options.top_k, self.k)
            memory = s.memory.fork() if self._mixes and act.options.memory and s.memory is not None else None
            if act.candidates is None and act.answer is not None:
                act.candidates, act.answer = self._from_prediction(act.answer), None
            if act.candidates is None:  # the likeliest next characters first: a peek (no step)
                plan.rows.append(Row([], src=s.slot, ends=[(0, self.k)], memory=memory))
                work.append((s, None, len(plan.rows) - 1))
                continue
            if self.slots + len(act.candidates) > self.max_slots or len(plan.rows) + len(act.candidates) > BATCH_ROWS:
                if not work:  # no room at all: wait for guesses to be taken or dropped
                    return False
                break
            if not act.candidates:  # nothing typeable to guess
                self._todo.pop(s, None)
                continue
            guesses = self._stage(s, act, plan, top_k, memory)
            if guesses is None:
                break
            work.append((s, guesses, len(plan.rows) - len(guesses)))
        if not work:
            return False
        plan.capacity = self._alloc.wanted_capacity()
        plan.checkpoint_capacity = self._ck_alloc.wanted_capacity()
        try:
            res = self._runner.execute(plan)
            self._runner.commit()
        except Exception:  # speculation never changes a session: drop the batch's slots
            log.exception("a speculative batch failed")
            for s, guesses, _ in work:
                if guesses is not None:
                    self._free(guesses)
                self._todo.pop(s, None)
            return True
        for s, guesses, row in work:
            act = self._active[s]
            if guesses is None:
                act.candidates = [t for t, _ in res.rows[row].top_k[0] if self._typeable(t)][: self.k]
                continue
            self._todo.pop(s, None)
            o = act.options
            for j, g in enumerate(guesses):
                r = res.rows[row + j]
                g.prediction = Prediction(
                    position=s.position + 1,
                    top_k=tuple([(self._vocab.served[i], p) for i, p in r.top_k[0][: o.top_k]]),
                    logprobs=tuple(r.logprobs) if o.want_logprobs else (),
                )
                g.after = [t for t, _ in r.top_k[0] if self._typeable(t)][: self.k]
            self._entries[s] = _Entry(s.position, o, {g.char: g for g in guesses})
            self.counts.rows += len(guesses)
        return True

    def _stage(self, s: Session, act: _Active, plan: Plan, top_k: int, memory: MemoryFork | None) -> list[Guess] | None:
        """Rows stepping each candidate from the session's slot into a scratch slot, shaped as
        the keystroke's own row (``Scheduler._add_run``); None: no slot free."""
        assert act.candidates is not None
        wants_ck = s.history.wants_checkpoint(s.position + 1)
        guesses: list[Guess] = []
        try:
            for t in act.candidates:
                slot = self._alloc.alloc()
                self.slots += 1
                guesses.append(Guess(self._vocab.char(t), t, slot, None))
                if wants_ck:
                    guesses[-1].checkpoint = self._ck_alloc.alloc()
        except CapacityExceeded:
            self._free(guesses)
            return None
        for g in guesses:
            fork = memory.fork() if memory is not None else None
            plan.rows.append(
                Row(
                    [g.token],
                    src=s.slot,
                    dst=g.slot,
                    ends=[(1, top_k)],
                    logprobs=act.options.want_logprobs,
                    checkpoint=g.checkpoint,
                    memory=fork,
                )
            )
        return guesses

    def _drop_quiet(self) -> None:
        """Sessions quiet for longer than ``recent_s`` lose their guesses and leave the set."""
        cutoff = time.monotonic() - self.recent_s
        while self._active:
            s, act = next(iter(self._active.items()))
            if act.at >= cutoff and not s.closed:
                break
            self.forget(s)

    def _free(self, guesses: Iterable[Guess]) -> None:
        for g in guesses:
            self._alloc.free(g.slot)
            self.slots -= 1
            if g.checkpoint is not None:
                self._ck_alloc.free(g.checkpoint)
            if g.prediction is not None:
                self.counts.wasted_rows += 1

    def _typeable(self, token: int) -> bool:
        """A token an append can carry as one character (the unknown entry 0 cannot be told
        apart from other unknown characters)."""
        ch = self._vocab.char(token)
        return token != 0 and len(ch) == 1 and self._vocab.encode(ch) == [token]

    def _from_prediction(self, pred: Prediction) -> list[int] | None:
        """The guesses a served answer gives: its top-k, when it holds at least k characters."""
        if len(pred.top_k) < self.k:
            return None
        out = []
        for ch, _p in pred.top_k:
            ids = self._vocab.encode(ch)
            if len(ids) == 1 and self._typeable(ids[0]) and self._vocab.char(ids[0]) == ch:
                out.append(ids[0])
        return out[: self.k]
