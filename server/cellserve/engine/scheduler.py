"""Picks the work of one iteration for one model and turns it into a ``Plan``. Plain Python:
no torch here (the runner executes the plan; the engine delivers its result).

Policy (cellular batching, re-formed at every iteration from whatever is waiting), within a
budget of ``max_batch_tokens`` characters per iteration:

1. keystrokes first: every session whose head is a single-character append takes one step
   (latency-bound and cheap; bounded by the number of sessions, so always admitted);
   control operations (write / rewind / snapshot / completion start / close) likewise;
2. every running completion alternative takes one step (continuous batching); when nothing
   else waits and every alternative is past its first character, they take up to
   ``decode_steps`` steps in this one iteration (multi-step decoding);
3. what is left of the budget goes to multi-character work (pastes, coalesced appends) in
   chunks, round-robin: tenants (the session owner) in turn, then sessions within a tenant,
   each given an equal share of what remains. A piece longer than its share is applied in
   chunks over several iterations (chunked prefill) on a scratch slot: the session's own
   slot, position and rewind history change only when its last chunk lands, so a failure
   loses nothing and the Prediction answers the whole piece. ``want_gates`` work (the slow
   reference cells) counts ``GATE_CHAR_COST`` per character, so it is chunked finer. Whoever
   got nothing goes first in the next iteration, so no session starves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..errors import CellserveError, OffsetConflict
from .completions import Alternative, Completion
from .plan import Plan, Row, SampleParams
from .sessions import AppendOp, ControlOp, Op, Session

# A character on the reference cells (want_gates: one Python-level step per character, with
# per-gate reductions) costs this many budget characters (docs/measurements.md).
GATE_CHAR_COST = 3
# The smallest prefill chunk worth a row of its own: below it, per-row costs dominate.
MIN_CHUNK = 16


@dataclass(slots=True)
class AppendRun:
    """Appends applied by one row: ``ops[0]`` from character ``first_done`` on (chunked
    prefill: the rest of a partly applied piece), the others whole. ``partial``: the row ends
    inside ``ops[0]`` (its only op); its state goes to the op's scratch slot."""

    session: Session
    ops: list[AppendOp]
    row: int  # index into plan.rows
    start: int  # session position before the run
    leading_write: ControlOp | None = None  # an open/reset write folded into the row's start state
    first_done: int = 0
    partial: bool = False


@dataclass
class ControlWork:
    session: Session
    op: ControlOp
    row: int | None = None  # rewinds that replay text
    read: int | None = None  # snapshots: index into plan.reads
    target: int = 0  # rewinds: the position restored


@dataclass
class StepWork:
    completion: Completion
    alt: Alternative
    row: int


@dataclass
class Batch:
    """A plan plus what each of its rows, writes and reads answers."""

    plan: Plan
    appends: list[AppendRun] = field(default_factory=list)
    controls: list[ControlWork] = field(default_factory=list)
    steps: list[StepWork] = field(default_factory=list)
    failures: list[tuple[Session, Op, CellserveError]] = field(default_factory=list)  # rejected when reached
    closes: list[tuple[Session, ControlOp]] = field(default_factory=list)  # reached: no device work
    chars: int = 0


def sample_params(completion: Completion, alt: Alternative) -> SampleParams:
    r = completion.request
    return SampleParams(r.temperature, r.top_k, r.top_p, alt.rng.random() if r.temperature > 0 else 0.0)


class Scheduler:
    def __init__(
        self,
        encode: Callable[[str], list[int]],
        scratch: Callable[[], int | None] | None = None,
        checkpoint: Callable[[], int | None] | None = None,
    ) -> None:
        self._encode = encode
        self._scratch = scratch or (lambda: None)  # a free slot for chunked prefill, or None
        self._checkpoint = checkpoint or (lambda: None)  # a free checkpoint-pool slot, or None
        self._tick = 0
        self._served: dict[str, int] = {}  # tenant -> tick it was last given prefill budget
        self.last_batch = Batch(Plan())

    def schedule(
        self,
        sessions: Iterable[Session],
        completions: Iterable[Completion],
        budget: int,
        capacity: int,
        decode_steps: int = 1,
    ) -> Batch:
        self._tick += 1
        batch = self.last_batch = Batch(Plan(capacity=capacity))  # kept: a core that sees this
        # call raise answers the ops already taken into it
        sessions = [s for s in sessions if s.queue]
        completions = list(completions)
        if decode_steps > 1 and not sessions and completions and self._multi_step(batch, completions, decode_steps):
            return batch
        long: list[Session] = []
        for s in sessions:  # 1. keystrokes and control operations
            head = s.queue[0]
            if isinstance(head, ControlOp) and not (head.kind == "write" and self._next_is_append(s)):
                self._control(batch, s, head)
                continue
            if self._keystroke(batch, s):
                continue
            long.append(s)
        self._steps(batch, completions)  # 2. completion steps
        self._prefill(batch, long, budget)  # 3. multi-character work, round-robin, chunked
        return batch

    # ------------------------------------------------------------------------------------
    def _multi_step(self, batch: Batch, completions: list[Completion], decode_steps: int) -> bool:
        alts = [(c, a) for c in completions for a in c.running()]
        if not alts or any(a.last_token is None for _, a in alts):
            return False
        k = min(decode_steps, min(c.request.max_chars - len(a.text) for c, a in alts))
        if k <= 1:
            return False
        for c, alt in alts:
            src = alt.slot if alt.forked else c.session.slot
            first = sample_params(c, alt)  # drawn in step order: seeded runs repeat
            more = [sample_params(c, alt) for _ in range(k - 1)]
            batch.plan.rows.append(Row([alt.last_token], src=src, dst=alt.slot, sample=first, more=more))  # type: ignore[list-item]
            batch.chars += k
            batch.steps.append(StepWork(c, alt, len(batch.plan.rows) - 1))
        return True

    def _steps(self, batch: Batch, completions: list[Completion]) -> None:
        plan = batch.plan
        for c in completions:  # started completions: one step per running alternative
            for alt in c.running():
                if alt.last_token is None:  # the first character: the session's own distribution
                    plan.rows.append(Row([], src=c.session.slot, sample=sample_params(c, alt)))
                else:
                    src = alt.slot if alt.forked else c.session.slot
                    plan.rows.append(Row([alt.last_token], src=src, dst=alt.slot, sample=sample_params(c, alt)))
                    batch.chars += 1
                batch.steps.append(StepWork(c, alt, len(plan.rows) - 1))

    def _keystroke(self, batch: Batch, s: Session) -> bool:
        """True when the session's head was dealt with here: a run of one character (a
        keystroke, with a new session's start state folded in), or nothing left to run."""
        q = s.queue
        if len(q) == 1:  # the common case, without building the run: one character at the position
            op = q[0]
            if type(op) is AppendOp and op.offset == s.position and len(op.text) == 1 and op.done == 0:
                self._add_keystroke(batch, s, op)
                return True
        ops, write = self._run(batch, s, 1 << 62)
        if not ops:
            if write is not None:  # its appends were all rejected
                self._control(batch, s, write)
            return True
        if len(ops) == 1 and len(ops[0].text) == 1 and ops[0].done == 0:
            self._add_run(batch, s, ops, write, 0, 1)
            return True
        return False

    def _prefill(self, batch: Batch, sessions: list[Session], budget: int) -> None:
        """Shares what is left of the budget round-robin: tenants first, then sessions."""
        by_tenant: dict[str, list[Session]] = {}
        for s in sessions:
            by_tenant.setdefault(s.owner, []).append(s)
        order = sorted(by_tenant, key=lambda t: self._served.get(t, 0))  # least recently served first
        left = max(budget - batch.chars, MIN_CHUNK)
        for ti, tenant in enumerate(order):
            share = max(left // (len(order) - ti), MIN_CHUNK)
            members = sorted(by_tenant[tenant], key=lambda s: s.last_prefill)
            given = 0
            for si, s in enumerate(members):
                if left < MIN_CHUNK or given >= share:
                    break
                mine = max((share - given) // (len(members) - si), MIN_CHUNK)
                used = self._long_run(batch, s, min(mine, left))
                if used:
                    s.last_prefill = self._tick
                    given += used
                    left -= used
            if given:
                self._served[tenant] = self._tick
        for tenant in [t for t in self._served if t not in by_tenant]:
            del self._served[tenant]  # bounded by the tenants with work now

    def _long_run(self, batch: Batch, s: Session, allowance: int) -> int:
        """Up to ``allowance`` budget characters of the session's head run; returns those used."""
        ops, write = self._run(batch, s, allowance)
        if not ops:
            if write is not None:
                self._control(batch, s, write)
            return 0
        head = ops[0]
        cost = GATE_CHAR_COST if any(o.options.want_gates for o in ops) else 1
        room = max(1, allowance // cost)
        rest = len(head.tokens) - head.done
        if rest <= room:
            return self._add_run(batch, s, ops, write, head.done, room) * cost
        # the head piece does not fit: a chunk of it alone, on its scratch slot
        if write is not None:  # a new session's start state: written first, on its own
            self._control(batch, s, write)
            return 0
        if head.scratch is None:
            head.scratch = self._scratch()
        if head.scratch is None:  # no slot to spare: the piece runs whole, over the budget
            return self._add_run(batch, s, [head], None, head.done, rest) * cost
        return self._add_chunk(batch, s, head, room) * cost

    @staticmethod
    def _next_is_append(s: Session) -> bool:
        return len(s.queue) > 1 and isinstance(s.queue[1], AppendOp)

    def _run(self, batch: Batch, s: Session, allowance: int) -> tuple[list[AppendOp], ControlOp | None]:
        """The session's head run of appends (not yet popped), with offsets checked against the
        position the run starts at. A head whose offset no longer fits (an earlier op failed)
        is rejected with the offset the session expects. Whole pieces after the first are
        coalesced while they fit in ``allowance`` characters."""
        write: ControlOp | None = None
        items = list(s.queue)
        start = s.position
        first = items[0]
        if isinstance(first, ControlOp):  # a write followed by appends: fold it in
            write = first
            items.pop(0)
            start = write.position
        while items and isinstance(items[0], AppendOp) and items[0].offset != start:
            bad = items.pop(0)
            assert isinstance(bad, AppendOp)
            s.queue.remove(bad)
            batch.failures.append((s, bad, OffsetConflict(expected=start, got=bad.offset)))
        ops: list[AppendOp] = []
        end, chars = start, 0
        for op in items:
            if not isinstance(op, AppendOp) or op.offset != end:
                break
            n = len(op.text) - op.done
            if ops and chars + n > allowance:  # coalesce only within the allowance
                break
            ops.append(op)
            end += len(op.text)
            chars += n
        return ops, write

    def _add_run(
        self, batch: Batch, s: Session, ops: list[AppendOp], write: ControlOp | None, first_done: int, room: int
    ) -> int:
        """One row applying ``ops`` whole (the first from ``first_done``), coalesced while the
        row stays within ``room`` characters (the first is always taken). Returns its length."""
        taken = [ops[0]]
        n = len(ops[0].tokens) - first_done
        for op in ops[1:]:
            if n + len(op.tokens) > room:
                break
            taken.append(op)
            n += len(op.tokens)
        start = write.position if write is not None else s.position
        for _ in range(len(taken) + (write is not None)):
            s.queue.popleft()
        head = taken[0]
        tokens: list[int] = list(head.tokens[first_done:])
        ends: list[tuple[int, int]] = []
        end, logprobs, gates, last = start, False, False, len(taken) - 1
        for k, op in enumerate(taken):  # one pass (a keystroke's run is one op: this is per keystroke)
            o = op.options
            if k:
                tokens.extend(op.tokens)
            ends.append((len(tokens), 0 if o.only_last and k < last else o.top_k))  # superseded: none
            end += len(op.text)
            logprobs = logprobs or o.want_logprobs
            gates = gates or o.want_gates
        from_scratch = first_done > 0 and head.scratch is not None
        row = Row(
            tokens,
            src=head.scratch if from_scratch else (None if write is not None else s.slot),
            init=write.state if write is not None else None,
            dst=s.slot,
            ends=ends,
            logprobs=logprobs,
            gates=gates,
            checkpoint=self._checkpoint() if s.history.wants_checkpoint(end) else None,
        )
        batch.plan.rows.append(row)
        batch.appends.append(AppendRun(s, taken, len(batch.plan.rows) - 1, start, write, first_done))
        batch.chars += len(tokens)
        s.planned_end = end
        return len(tokens)

    def _add_keystroke(self, batch: Batch, s: Session, op: AppendOp) -> None:
        """``_add_run`` of a session whose queue is one keystroke at its position (the same
        row and run, built directly)."""
        s.queue.popleft()
        o, start = op.options, s.position
        end = start + 1
        rows = batch.plan.rows
        rows.append(
            Row(
                list(op.tokens),
                src=s.slot,
                dst=s.slot,
                ends=[(1, o.top_k)],
                logprobs=o.want_logprobs,
                gates=o.want_gates,
                checkpoint=self._checkpoint() if s.history.wants_checkpoint(end) else None,
            )
        )
        batch.appends.append(AppendRun(s, [op], len(rows) - 1, start))
        batch.chars += 1
        s.planned_end = end

    def _add_chunk(self, batch: Batch, s: Session, op: AppendOp, n: int) -> int:
        """The next ``n`` characters of a piece too long for this iteration, into its scratch
        slot; the op stays at the head of the queue until its last chunk."""
        assert op.scratch is not None
        tokens = op.tokens[op.done : op.done + n]
        row = Row(
            tokens,
            src=op.scratch if op.done else s.slot,
            dst=op.scratch,
            logprobs=op.options.want_logprobs,
            gates=op.options.want_gates,
        )
        batch.plan.rows.append(row)
        batch.appends.append(AppendRun(s, [op], len(batch.plan.rows) - 1, s.position, None, op.done, partial=True))
        batch.chars += len(tokens)
        return len(tokens)

    def _control(self, batch: Batch, s: Session, op: ControlOp) -> None:
        plan = batch.plan
        s.queue.popleft()
        if op.kind == "write":
            plan.writes.append((s.slot, op.state))
            batch.controls.append(ControlWork(s, op))
            s.planned_end = op.position
        elif op.kind in ("snapshot", "suggest"):  # a suggest searches on a copy of the state
            plan.reads.append(s.slot)
            batch.controls.append(ControlWork(s, op, read=len(plan.reads) - 1))
        elif op.kind == "close":
            batch.closes.append((s, op))
        elif op.kind == "rewind":
            try:
                target, state, replay = s.history.plan(s.position, op.chars)
            except CellserveError as e:
                batch.failures.append((s, op, e))
                return
            if replay:
                plan.rows.append(Row(self._encode(replay), src=None, init=state, dst=s.slot))
                batch.controls.append(ControlWork(s, op, row=len(plan.rows) - 1, target=target))
                batch.chars += len(replay)
            else:
                plan.writes.append((s.slot, state))
                batch.controls.append(ControlWork(s, op, target=target))
            s.planned_end = target
        elif op.kind == "complete":
            c = op.completion
            assert c is not None
            batch.controls.append(ControlWork(s, op))
            for alt in c.running():  # the first character of each alternative: a peek
                plan.rows.append(Row([], src=s.slot, sample=sample_params(c, alt)))
                batch.steps.append(StepWork(c, alt, len(plan.rows) - 1))
