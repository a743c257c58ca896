"""Picks the work of one iteration for one model and turns it into a ``Plan``. Plain Python:
no torch here (the runner executes the plan; the engine delivers its result).

Policy (cellular batching, re-formed at every iteration from whatever is waiting):

- every running completion alternative takes one step (continuous batching); when nothing
  else waits (no session has queued work) and every alternative is past its first character,
  they take up to ``decode_steps`` steps in this one iteration (multi-step decoding: the same
  number for all, at most what the shortest has left to generate);
- every session with queued work contributes its head: a run of consecutive appends (coalesced
  into one row), or one control operation (write / rewind / snapshot / completion start);
- single characters go first (keystrokes are latency-bound and cheap); multi-character rows
  follow oldest first while the iteration stays within ``max_batch_tokens`` characters. The
  first multi-character row is always admitted, so a piece larger than the budget still runs
  (a piece is never split: ``max_append_chars`` bounds it); coalescing stops at the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..errors import CellserveError, OffsetConflict
from .completions import Alternative, Completion
from .plan import Plan, Row, SampleParams
from .sessions import AppendOp, ControlOp, Op, Session


@dataclass
class AppendRun:
    session: Session
    ops: list[AppendOp]
    row: int  # index into plan.rows
    start: int  # session position before the run
    leading_write: ControlOp | None = None  # an open/reset write folded into the row's start state


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
    chars: int = 0


def sample_params(completion: Completion, alt: Alternative) -> SampleParams:
    r = completion.request
    return SampleParams(r.temperature, r.top_k, r.top_p, alt.rng.random() if r.temperature > 0 else 0.0)


class Scheduler:
    def __init__(self, encode: Callable[[str], list[int]]) -> None:
        self._encode = encode

    def schedule(
        self,
        sessions: Iterable[Session],
        completions: Iterable[Completion],
        budget: int,
        capacity: int,
        decode_steps: int = 1,
    ) -> Batch:
        batch = Batch(Plan(capacity=capacity))
        plan = batch.plan
        sessions = [s for s in sessions if s.queue]
        completions = list(completions)
        if decode_steps > 1 and not sessions and completions:
            alts = [(c, a) for c in completions for a in c.running()]
            if alts and all(a.last_token is not None for _, a in alts):
                k = min(decode_steps, min(c.request.max_chars - len(a.text) for c, a in alts))
                if k > 1:
                    for c, alt in alts:
                        src = alt.slot if alt.forked else c.session.slot
                        first = sample_params(c, alt)  # drawn in step order: seeded runs repeat
                        more = [sample_params(c, alt) for _ in range(k - 1)]
                        plan.rows.append(Row([alt.last_token], src=src, dst=alt.slot, sample=first, more=more))  # type: ignore[list-item]
                        batch.chars += k
                        batch.steps.append(StepWork(c, alt, len(plan.rows) - 1))
                    return batch
        for c in completions:  # started completions: one step per running alternative
            for alt in c.running():
                if batch.chars >= budget and plan.rows:
                    break
                if alt.last_token is None:  # the first character: the session's own distribution
                    plan.rows.append(Row([], src=c.session.slot, sample=sample_params(c, alt)))
                else:
                    src = alt.slot if alt.forked else c.session.slot
                    plan.rows.append(Row([alt.last_token], src=src, dst=alt.slot, sample=sample_params(c, alt)))
                    batch.chars += 1
                batch.steps.append(StepWork(c, alt, len(plan.rows) - 1))

        deferred: list[tuple[float, Session, list[AppendOp], ControlOp | None]] = []
        for s in sessions:
            if not s.queue:
                continue
            head = s.queue[0]
            if isinstance(head, ControlOp) and not (head.kind == "write" and self._next_is_append(s)):
                self._control(batch, s, head)
                continue
            ops, write = self._run(batch, s, budget)
            if not ops:
                if write is not None:  # its appends were all rejected
                    self._control(batch, s, write)
                continue
            chars = sum(len(o.text) for o in ops)
            if chars == 1 and batch.chars < budget:
                self._add_run(batch, s, ops, write)
            else:
                deferred.append((ops[0].submitted_at, s, ops, write))
        admitted_long = False
        for _, s, ops, write in sorted(deferred, key=lambda d: d[0]):  # oldest first
            chars = sum(len(o.text) for o in ops)
            if batch.chars + chars <= budget or not admitted_long:
                self._add_run(batch, s, ops, write)
                admitted_long = True
        return batch

    # ------------------------------------------------------------------------------------
    @staticmethod
    def _next_is_append(s: Session) -> bool:
        return len(s.queue) > 1 and isinstance(s.queue[1], AppendOp)

    def _run(self, batch: Batch, s: Session, budget: int) -> tuple[list[AppendOp], ControlOp | None]:
        """The session's head run of appends (not yet popped), with offsets checked against the
        position the run starts at. A head whose offset no longer fits (an earlier op failed)
        is rejected with the offset the session expects."""
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
            if ops and batch.chars + chars + len(op.text) > budget:  # coalesce only within the budget
                break
            ops.append(op)
            end += len(op.text)
            chars += len(op.text)
        return ops, write

    def _add_run(self, batch: Batch, s: Session, ops: list[AppendOp], write: ControlOp | None) -> None:
        start = write.position if write is not None else s.position
        for _ in range(len(ops) + (write is not None)):
            s.queue.popleft()
        tokens: list[int] = []
        ends: list[tuple[int, int]] = []
        for k, op in enumerate(ops):
            tokens.extend(op.tokens)
            superseded = op.options.only_last and k < len(ops) - 1
            ends.append((len(tokens), 0 if superseded else op.options.top_k))
        end = start + len(tokens)
        row = Row(
            tokens,
            src=None if write is not None else s.slot,
            init=write.state if write is not None else None,
            dst=s.slot,
            ends=ends,
            logprobs=any(op.options.want_logprobs for op in ops),
            gates=any(op.options.want_gates for op in ops),
            checkpoint=s.history.wants_checkpoint(end),
        )
        batch.plan.rows.append(row)
        batch.appends.append(AppendRun(s, ops, len(batch.plan.rows) - 1, start, write))
        batch.chars += len(tokens)

    def _control(self, batch: Batch, s: Session, op: ControlOp) -> None:
        plan = batch.plan
        s.queue.popleft()
        if op.kind == "write":
            plan.writes.append((s.slot, op.state))
            batch.controls.append(ControlWork(s, op))
        elif op.kind == "snapshot":
            plan.reads.append(s.slot)
            batch.controls.append(ControlWork(s, op, read=len(plan.reads) - 1))
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
        elif op.kind == "complete":
            c = op.completion
            assert c is not None
            batch.controls.append(ControlWork(s, op))
            for alt in c.running():  # the first character of each alternative: a peek
                plan.rows.append(Row([], src=s.slot, sample=sample_params(c, alt)))
                batch.steps.append(StepWork(c, alt, len(plan.rows) - 1))
