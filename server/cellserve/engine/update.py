"""A step's results into sessions and answers: stage, then commit; or fail, changing nothing.

``stage`` computes everything a job answers from its run results (Predictions, snapshot
blobs, suggest reads, drawn characters) without changing anything: what can raise on bad
results raises there, before any runner writes its states back. ``apply`` then commits each
job whose runner wrote back (positions, rewind logs, session memories, completions, answers),
or fails it: every op not applied yet is answered with the error, the sessions keep their
state and position, a checkpoint a rewind log does not own goes back to the pool, and a new
session's start-state write is queued again (it never landed). A commit that breaks off is
handled op by op (``Staged.applied``): what landed is never undone or repeated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ..errors import NotFound
from ..memory.window import SessionMemory
from .completion_book import CompletionBook
from .completions import Alternative, Completion
from .core_io import ChunkOut, Deliveries
from .plan import CheckpointRef, Plan, RowResult, RunResult
from .runtime import ModelRuntime
from .scheduler import AppendRun, Batch, ControlWork
from .session_blobs import SessionBlobs
from .session_table import SESSION_NOT_FOUND
from .sessions import AppendOp, ControlOp, Op, Session
from .types import CompletionChunk, FinishReason, GateTrace, Phase, Prediction, plain_prediction

log = logging.getLogger(__name__)

Job = tuple[ModelRuntime, Batch]


@dataclass
class Staged:
    """A job's answers, computed before anything is applied (``StepUpdate.stage``)."""

    now: float
    predictions: dict[int, list[Prediction]] = field(default_factory=dict)  # append run index -> per piece
    blobs: dict[int, bytes] = field(default_factory=dict)  # control index -> snapshot blob
    reads: dict[int, list[bytes]] = field(default_factory=dict)  # control index -> a suggest's state
    chunks: dict[int, tuple[list[float], list[list[list[float]]]]] = field(default_factory=dict)  # logprobs, gates
    drawn: list[list[tuple[int, str]]] = field(default_factory=list)  # per completion step: (token, character)
    decode_step_s: float | None = None
    applied: set[int] = field(default_factory=set)  # ids of runs and controls committed


class StepUpdate:
    def __init__(
        self, deliveries: Deliveries, completions: CompletionBook, blobs: SessionBlobs, chars: dict[str, int]
    ) -> None:
        """``chars``: the core's characters-per-``Phase`` counter, added to by commits."""
        self._deliveries = deliveries
        self._completions = completions
        self._blobs = blobs
        self._chars = chars

    def apply(self, jobs: list[Job], staged: list[Staged], committed: int, error: Exception | None) -> None:
        """After the runners ran: the first ``committed`` jobs wrote their states back and are
        committed (all of them only when ``error`` is None); the others fail with ``error``."""
        for k, (rt, b) in enumerate(jobs):
            if k < committed and error is None:
                try:
                    self.commit(rt, b, staged[k])
                except Exception as e:  # a bookkeeping bug: still answer everything it took
                    log.exception("applying an iteration's results failed")
                    self.fail_batch(rt, b, e, staged[k])
            else:
                self.fail_batch(rt, b, error or RuntimeError("the iteration was not run"))
        for _, b in jobs:
            for s in sessions_of(b):
                s.end_iteration()

    # ---- stage ---------------------------------------------------------------------------------
    def stage(self, rt: ModelRuntime, b: Batch, res: RunResult) -> Staged:
        """Everything the job answers, computed from its results without changing anything.
        What can raise on bad results (a token id, a snapshot's encoding) raises here, before
        any commit."""
        st = Staged(time.time())
        for phase, _chars, secs in res.phases:
            if phase == Phase.COMPLETION and b.steps:
                st.decode_step_s = secs / max(1, 1 + len(b.plan.rows[b.steps[0].row].more))
        for k, run in enumerate(b.appends):
            row = res.rows[run.row]
            if not run.partial:
                st.predictions[k] = self.predictions(rt, run, row)
            else:  # a chunk: what it answers waits on the op for the piece's Prediction
                o = run.ops[0].options
                st.chunks[k] = (row.logprobs if o.want_logprobs else [], row.gates if o.want_gates else [])
        for k, cw in enumerate(b.controls):
            if cw.op.kind == "snapshot":
                assert cw.read is not None
                st.blobs[k] = self._blobs.seal(rt, cw.session, res.reads[cw.read], st.now)
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

    def predictions(self, rt: ModelRuntime, run: AppendRun, row: RowResult) -> list[Prediction]:
        """One Prediction per piece of a run applied whole (the first one possibly finishing a
        chunked piece)."""
        chars = rt.loaded.vocab.served
        if len(run.ops) == 1 and not run.first_done:  # one whole piece (a keystroke): as below, directly
            op = run.ops[0]
            o = op.options
            if not (o.want_logprobs or o.want_gates):
                top = tuple([(chars[i], p) for i, p in row.top_k[0][: o.top_k]])
                return [plain_prediction(run.start + len(op.text), top)]
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
                    top_k=tuple([(chars[i], p) for i, p in row.top_k[k][: o.top_k]]),
                    logprobs=tuple(logprobs),
                    gates=tuple(GateTrace(rt.gate_names, tuple(tuple(layer) for layer in g)) for g in gates),
                    superseded=o.only_last and k < last,
                )
            )
            tok_at += n
        return preds

    # ---- commit --------------------------------------------------------------------------------
    def commit(self, rt: ModelRuntime, b: Batch, st: Staged) -> None:
        """Applies a job whose states the runner wrote back: plain bookkeeping (positions,
        rewind logs, answers), each run or control marked applied as it lands."""
        if st.decode_step_s is not None:
            rt.decode_step_s = st.decode_step_s
        for k, run in enumerate(b.appends):
            if run.partial:
                self._commit_chunk(b, run, st.chunks[k], st.now)
            elif len(run.ops) == 1 and run.leading_write is None and not run.first_done:
                self._commit_piece(rt, b, run, st.predictions[k][0], st.now)
            else:
                self._commit_run(rt, b, run, st.predictions[k], st.now)
            st.applied.add(id(run))
        for k, cw in enumerate(b.controls):
            self._commit_control(rt, b, cw, st, k)
            st.applied.add(id(cw))
        for sw, drawn in zip(b.steps, st.drawn, strict=True):
            self._commit_step(b.plan, sw.completion, sw.alt, sw.row, drawn)

    def _commit_control(self, rt: ModelRuntime, b: Batch, cw: ControlWork, st: Staged, k: int) -> None:
        s, cop = cw.session, cw.op
        if cw.row is not None:
            self._chars[Phase.PREFILL] += len(b.plan.rows[cw.row].tokens)
        if s.closed and cop.kind in ("write", "rewind"):
            self._deliveries.fail(cop, NotFound(SESSION_NOT_FOUND))
        elif cop.kind == "write":
            self._apply_write(rt, s, cop)
        elif cop.kind == "rewind":
            _rewind_memory(s, s.position - cw.target)
            s.apply(cw.target)
            s.history.truncate(cw.target)
            s.last_applied = None
            self._deliveries.resolve(cop, s.info())
        elif cop.kind == "snapshot":
            self._deliveries.resolve(cop, st.blobs[k])
        elif cop.kind == "suggest" and cop.suggest is not None and cop.ticket is not None:
            try:
                rt.beams.add(cop.suggest, cop.ticket, st.reads[k], s.memory.fork() if s.memory else None)
                cop.answered = True  # the search answers it (through the deliveries) when it ends
            except Exception as e:  # only this search fails; the session is untouched
                log.exception("starting a suggestion failed")
                self._deliveries.fail(cop, e)
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

    def _commit_piece(self, rt: ModelRuntime, b: Batch, run: AppendRun, pred: Prediction, now: float) -> None:
        """``_commit_run`` of a run that is one whole piece and nothing else (every keystroke):
        the same steps in the same order, without the loops over a run's pieces."""
        op, s = run.ops[0], run.session
        if op.scratch is not None or op.with_session or s.closed:
            self._commit_run(rt, b, run, [pred], now)
            return
        self._deliveries.resolve(op, pred)
        self._chars[Phase.STEP if len(op.text) == 1 else Phase.PREFILL] += len(op.text)
        s.land_piece(pred.position, op.tokens, op.text, checkpoint_of(b, run), (op.offset, op.text, pred), now)
        if s.last_piece is not None and s.last_piece[2] is op:  # a retry now gets the value
            s.last_piece = s.last_applied
        rt.speculator.note(s, op.options)

    def _commit_run(self, rt: ModelRuntime, b: Batch, run: AppendRun, preds: list[Prediction], now: float) -> None:
        s = run.session
        tok_at = -run.first_done
        for op, pred in zip(run.ops, preds, strict=True):
            if op.scratch is not None:
                rt.free_scratch(op)
            if not op.with_session or s.closed:
                self._deliveries.resolve(op, pred)
            tok_at += len(op.text)
        self._chars[Phase.STEP if tok_at == 1 and not run.first_done else Phase.PREFILL] += tok_at
        if s.closed:
            rt.release_checkpoint(checkpoint_of(b, run))
            return
        self._apply_run(rt, b, run, preds, now)
        rt.speculator.note(s, run.ops[-1].options)
        for op, pred in zip(run.ops, preds, strict=True):
            if op.with_session:  # a resume's replay: the session as the replay left it
                self._deliveries.resolve(op, (s.info(), pred))

    def _apply_run(self, rt: ModelRuntime, b: Batch, run: AppendRun, preds: list[Prediction], now: float) -> None:
        s = run.session
        if run.leading_write is not None:
            self._apply_write(rt, s, run.leading_write)
        ops, last = run.ops, run.ops[-1]
        one = len(ops) == 1  # a keystroke's run: its op's own tokens and text (read, never changed)
        s.land_piece(  # the whole of every piece lands now (chunks pushed nothing to the memory)
            preds[-1].position,
            last.tokens if one else [t for op in ops for t in op.tokens],
            last.text if one else "".join(op.text for op in ops),
            checkpoint_of(b, run),
            (last.offset, last.text, preds[-1]),
            now,
        )
        if s.last_piece is not None and s.last_piece[2] is last:  # a retry now gets the value
            s.last_piece = s.last_applied

    def _apply_write(self, rt: ModelRuntime, s: Session, op: ControlOp) -> None:
        op.applied = True
        s.apply(op.position)
        s.memory = op.memory
        s.memory_changed()
        s.history.release_all()
        s.history = rt.new_history(op.position, op.state)
        s.last_applied = None
        self._deliveries.resolve(op, s.info())

    def _commit_step(self, plan: Plan, c: Completion, alt: Alternative, row: int, drawn: list[tuple[int, str]]) -> None:
        if alt.finish_reason:  # cancelled while the iteration ran
            return
        if plan.rows[row].tokens:
            alt.forked = True  # the scratch slot now holds the state after last_token
            if alt.memory is not None:  # generated text advances the alternative's fork only:
                # the tokens this iteration's steps read (the row's, then all drawn but the last)
                alt.memory.push([*plan.rows[row].tokens, *(t for t, _ in drawn[:-1])])
            self._chars["completion"] += len(drawn)
        c.session.last_used_at = time.time()
        for tok, ch in drawn:  # several with multi-step decoding; still one chunk per character
            alt.text += ch
            alt.last_token = tok
            if any(alt.text.endswith(stop) for stop in c.request.stop):
                self._completions.end_alternative(c, alt, FinishReason.STOP, ch)
                return
            if len(alt.text) >= c.request.max_chars:
                self._completions.end_alternative(c, alt, FinishReason.LENGTH, ch)
                return
            self._deliveries.put(ChunkOut(c, CompletionChunk(alt.index, ch, False)))

    # ---- fail ----------------------------------------------------------------------------------
    def fail_batch(self, rt: ModelRuntime, b: Batch, err: Exception, staged: Staged | None = None) -> None:
        """Answers every op of ``b`` not applied yet with ``err``; the sessions keep their state
        and position (the runner never wrote this job's states back). ``staged``: what a
        commit that broke off applied already (skipped)."""
        applied = staged.applied if staged is not None else set()
        for s in sessions_of(b):
            s.end_iteration()  # nothing of this iteration landed
        for run in b.appends:
            if id(run) in applied:
                continue
            for op in run.ops:
                self._deliveries.fail(op, err)
                rt.free_scratch(op)
            if run.partial and run.ops[0] in run.session.queue:  # a chunk: the piece is still queued
                run.session.queue.remove(run.ops[0])
            if run.leading_write is not None:
                self._fail_write(rt, run.session, run.leading_write, err)
            ck = checkpoint_of(b, run)
            if ck is not None and not run.session.history.holds(ck):  # recorded: the log owns it
                rt.release_checkpoint(ck)
            self.after_failure(run.session, run.ops[-1])
        for cw in b.controls:
            if id(cw) in applied:
                continue
            if cw.op.kind == "write":
                self._fail_write(rt, cw.session, cw.op, err)
            self._deliveries.fail(cw.op, err)
            if cw.op.kind == "complete" and cw.op.completion is not None:
                cw.op.completion.started = True
                self._completions.cancel(cw.op.completion)
            self.after_failure(cw.session, cw.op)
        for sw in b.steps:
            if not sw.alt.finish_reason:
                self._completions.end_alternative(sw.completion, sw.alt, FinishReason.CANCELLED)

    def _fail_write(self, rt: ModelRuntime, s: Session, op: ControlOp, err: Exception) -> None:
        if op.applied:  # never undo or repeat a write that landed
            return
        if op.ticket is None and not s.closed:  # a new session's start state: its slot still needs it
            s.queue.appendleft(op)
            rt.work[s] = None
        else:  # a reset: the session keeps its old state and position
            self._deliveries.fail(op, err)

    def fail_rejected(self, b: Batch, err: Exception | None = None) -> None:
        """The ops the scheduler rejected when it reached them (each with its own error, or
        all with ``err``)."""
        for s, op, own in b.failures:
            self._deliveries.fail(op, own if err is None else err)
            self.after_failure(s, op)

    def after_failure(self, s: Session, op: Op) -> None:
        """The session did not move: later offsets are checked against its real position."""
        if isinstance(op, AppendOp) and s.last_piece is not None and s.last_piece[2] is op:
            s.last_piece = s.last_applied
        s.requeue_end()


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


def checkpoint_of(b: Batch, run: AppendRun) -> CheckpointRef | None:
    slot = b.plan.rows[run.row].checkpoint
    return CheckpointRef(slot) if slot is not None else None


def sessions_of(b: Batch) -> set[Session]:
    return {run.session for run in b.appends} | {cw.session for cw in b.controls}
