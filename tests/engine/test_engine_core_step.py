"""``EngineCore.step()`` in isolation: a core driven synchronously with a fake runner, on the
test thread, with no event loop running and no device thread. Deterministic: every step is
one call, and what it answered is in its ``StepOutput``.

The fake runner's "state" of a slot is the tuple of token ids applied to it, and its top-1
prediction after a prefix is ``sum(prefix) % V``: so a test can check exactly which characters
each session's slot received, in which order, and which prefix each Prediction answers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from _engine_helpers import make_settings
from cellserve.engine.core import EngineCore
from cellserve.engine.core_io import ChunkOut, Outcome, StepOutput
from cellserve.engine.plan import ZERO, CheckpointRef, Plan, RowResult, RunResult
from cellserve.engine.types import AppendOptions, CompletionRequest, Prediction
from cellserve.errors import OffsetConflict, PreconditionFailed
from cellserve.nn.checkpoint import LoadedModel
from cellserve.repository import ModelRepository

State = tuple[int, ...]


class FakeRunner:
    def __init__(self, lm: LoadedModel) -> None:
        self.vocab_size = lm.model.vocab_size
        self.slots: dict[int, State] = {}
        self.checkpoints: dict[int, State] = {}  # the checkpoint pool
        self.plans: list[Plan] = []
        self.fail_next = False  # the next execute raises (nothing computed)
        self.fail_commit = False  # the next commit raises (before writing anything)
        self.pending: list[tuple[int, State]] = []  # the last execute's write-back
        self.pending_checkpoints: list[tuple[int, State]] = []
        self.during: Callable[[], None] | None = None  # runs inside the next execute (the lock is free)

    def top1(self, prefix: State) -> int:
        return sum(prefix) % self.vocab_size

    def commit(self) -> None:
        """The write-back (the core calls it once it staged the iteration's answers)."""
        if self.fail_commit:
            self.fail_commit = False
            raise RuntimeError("write-back fell over")
        for dst, end in self.pending:
            self.slots[dst] = end
        for slot, end in self.pending_checkpoints:
            self.checkpoints[slot] = end
        self.pending, self.pending_checkpoints = [], []

    def execute(self, plan: Plan) -> RunResult:
        self.pending = []
        self.plans.append(plan)
        if self.during is not None:
            hook, self.during = self.during, None
            hook()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("device fell over")
        results, finals, ck_writes = [], [], []
        for r in plan.rows:
            start: State = self.slots.get(r.src, ()) if r.src is not None else self._handle(r.init)
            end = start + tuple(r.tokens)
            res = RowResult([], [], [], None)
            for e, k in r.ends:
                res.top_k.append([(self.top1(start + tuple(r.tokens[:e])), 1.0)][:k])
            if r.logprobs:
                res.logprobs = [-1.0] * len(r.tokens)
            if r.sample is not None:
                res.sampled = self.top1(end)
                drawn = [res.sampled]
                for _ in r.more:
                    drawn.append(self.top1(end + tuple(drawn)))
                res.sampled_more = drawn[1:]
                end = end + tuple(drawn[:-1])
            if r.checkpoint is not None:
                ck_writes.append((r.checkpoint, end))
            results.append(res)
            finals.append((r.dst, end))
        writes = [(slot, self._handle(src)) for slot, src in plan.writes]
        self.pending = [(dst, end) for dst, end in finals if dst is not None] + writes  # at commit()
        self.pending_checkpoints = ck_writes
        return RunResult(results, [], [("step", sum(len(r.tokens) for r in plan.rows), 0.0)])

    def _handle(self, h: object) -> State:
        if h is ZERO:
            return ()
        if isinstance(h, CheckpointRef):
            return self.checkpoints[h.slot]
        assert isinstance(h, tuple)
        return h


class Driver:
    """A core, its fake runner and the tickets handed to it."""

    def __init__(self, model_dir: Path, **kw: Any) -> None:
        st = make_settings(model_dir, **kw)
        self.runners: list[FakeRunner] = []

        def factory(lm: LoadedModel, pool: object, checkpoints: object) -> FakeRunner:
            self.runners.append(FakeRunner(lm))
            return self.runners[-1]

        self.core = EngineCore(st, ModelRepository.load(st), runner_factory=factory)
        self.lm = self.core.repository.get()
        self.runner = self.runners[list(self.core.repository.names()).index(self.core.repository.default)]
        self._tickets = itertools.count(1)

    def future(self) -> int:
        """A new ticket (what a frontend maps to a caller's future)."""
        return next(self._tickets)

    def append(self, sid: str, offset: int, text: str, **opts: Any) -> int:
        fut = self.future()
        assert self.core.submit_append(sid, offset, text, AppendOptions(**opts), "", fut) is None
        return fut

    def state(self, sid: str) -> str:
        return "".join(self.lm.vocab.char(t) for t in self.runner.slots[self.core.sessions[sid].slot])

    def top1(self, text: str) -> str:
        return self.lm.vocab.char(self.runner.top1(tuple(self.lm.vocab.encode(text))))


@contextmanager
def driver(model_dir: Path, **kw: Any) -> Iterator[Driver]:
    yield Driver(model_dir, **kw)


def outcomes(out: StepOutput) -> dict[int, Outcome]:
    return {d.ticket: d for d in out.deliveries if isinstance(d, Outcome)}


def test_step_applies_pipelined_appends_and_reports(model_dir: Path) -> None:
    with driver(model_dir) as d:
        sid = d.core.open_session().session_id
        first = d.core.step()  # the new session's start-state write
        assert first.idle and first.stats is not None and not first.deliveries
        a, b = d.append(sid, 0, "hel"), d.append(sid, 3, "lo")
        assert d.core.get_session_queued(sid, "").position == 5
        assert d.core.get_session(sid, "").position == 0  # accepted, not applied yet
        out = d.core.step()
        got = outcomes(out)
        assert set(got) == {a, b} and out.idle  # both pieces in one row, each answered
        pa, pb = got[a].value, got[b].value
        assert isinstance(pa, Prediction) and isinstance(pb, Prediction)
        assert (pa.position, pb.position) == (3, 5)
        assert pa.top_k[0][0] == d.top1("hel") and pb.top_k[0][0] == d.top1("hello")
        assert d.state(sid) == "hello" and d.core.get_session(sid, "").position == 5
        assert out.stats is not None and out.stats.rows == 1 and len(out.stats.queue_wait_s) == 2
        assert d.core.stats().iterations == 2
        empty = d.core.step()  # nothing to do: no device work, no stats, nothing answered
        assert empty.idle and empty.stats is None and not empty.deliveries and len(d.runner.plans) == 2


def test_chunked_piece_lands_whole_and_keystrokes_go_first(model_dir: Path) -> None:
    with driver(model_dir, max_batch_tokens=16) as d:
        paste, typist = d.core.open_session().session_id, d.core.open_session().session_id
        d.core.step()
        text = "the quick brown fox jumps over the lazy dog"  # 43 characters: 3 chunks of 16
        fp = d.append(paste, 0, text)
        steps = 0
        keys = "abc"
        answered: list[str] = []
        while True:
            fk = d.append(typist, steps, keys[steps]) if steps < len(keys) else None
            out = d.core.step()
            steps += 1
            got = outcomes(out)
            if fk is not None:  # every keystroke is answered by the very step it was submitted to
                assert fk in got
                answered.append(keys[steps - 1])
            if fp in got:
                break
            assert d.core.get_session(paste, "").position == 0  # nothing lands before the last chunk
        assert steps == 3 and answered == list(keys)
        pred = got[fp].value
        assert isinstance(pred, Prediction) and pred.position == len(text)
        assert pred.top_k[0][0] == d.top1(text)
        assert d.state(paste) == text and d.state(typist) == "abc"
        assert out.idle


def test_retries_attach_to_the_queued_piece_or_get_its_cached_answer(model_dir: Path) -> None:
    """Exactly-once by ticket: a retry of the piece still queued is answered with it (one row,
    applied once); a retry of the piece already applied is answered at once from the cached
    value, with no step; both marked replayed."""
    with driver(model_dir) as d:
        sid = d.core.open_session().session_id
        d.core.step()
        first = d.append(sid, 0, "ab")
        retry = d.future()
        assert d.core.submit_append(sid, 0, "ab", AppendOptions(), "", retry) is None  # attached
        got = outcomes(d.core.step())
        p1, p2 = got[first].value, got[retry].value
        assert isinstance(p1, Prediction) and isinstance(p2, Prediction)
        assert p1.position == p2.position == 2 and not p1.replayed and p2.replayed
        assert p2.top_k == p1.top_k and d.state(sid) == "ab" and len(d.runner.plans[-1].rows) == 1
        late = d.future()
        cached = d.core.submit_append(sid, 0, "ab", AppendOptions(), "", late)
        assert cached is not None and cached.ticket == late and cached.value == replace(p1, replayed=True)
        plans = len(d.runner.plans)
        assert d.core.step().idle and len(d.runner.plans) == plans and d.state(sid) == "ab"


def test_failed_step_answers_errors_and_changes_nothing(model_dir: Path) -> None:
    with driver(model_dir) as d:
        sid = d.core.open_session().session_id
        d.core.step()
        d.append(sid, 0, "hi")
        d.core.step()
        d.runner.fail_next = True
        f = d.append(sid, 2, "!!")
        got = outcomes(d.core.step())
        assert isinstance(got[f].error, RuntimeError)
        assert d.core.get_session_queued(sid, "").position == 2 and d.state(sid) == "hi"
        again = d.append(sid, 2, "!!")  # the same piece is accepted again and applied once
        assert outcomes(d.core.step())[again].value.position == 4  # type: ignore[union-attr]
        assert d.state(sid) == "hi!!"


def test_failed_write_back_answers_errors_and_changes_nothing(model_dir: Path) -> None:
    """The runner computed everything, then its write-back raised: nothing of the step lands,
    and a new session's start-state write is queued again (it never landed)."""
    with driver(model_dir, checkpoint_every=2) as d:
        sid = d.core.open_session().session_id
        d.core.step()
        d.append(sid, 0, "hi")
        d.core.step()
        rt = d.core._runtimes[d.core.repository.default]
        ck_used = rt.ck_alloc.used
        fresh = d.core.open_session().session_id
        d.runner.fail_commit = True
        f, g = d.append(sid, 2, "!!"), d.append(fresh, 0, "yo")
        got = outcomes(d.core.step())
        assert isinstance(got[f].error, RuntimeError) and isinstance(got[g].error, RuntimeError)
        assert d.state(sid) == "hi" and d.core.get_session(sid, "").position == 2
        assert rt.ck_alloc.used == ck_used  # the planned checkpoint went back to the pool
        assert [op.kind for op in d.core.sessions[fresh].queue] == ["write"]  # never landed: again
        again = d.append(sid, 2, "!!"), d.append(fresh, 0, "yo")
        got = outcomes(d.core.step())
        assert [got[a].value.position for a in again] == [4, 2]  # type: ignore[union-attr]
        assert d.state(sid) == "hi!!" and d.state(fresh) == "yo"


def test_offsets_count_ops_planned_into_the_running_step(model_dir: Path) -> None:
    """The planned_end fix, with no threads: ops submitted while a step executes (the fake
    runner's hook) are checked against where the running step will leave the session."""
    with driver(model_dir, rewind_window=256, max_append_chars=400) as d:
        sid = d.core.open_session().session_id
        d.core.step()
        d.append(sid, 0, "x" * 300)
        while not d.core.step().idle:  # 300 characters: chunked over several steps
            pass
        fx = d.append(sid, 300, "abc")
        late: dict[str, int] = {}

        def during() -> None:  # "abc" is in the running step
            late["rewind"] = d.future()
            d.core.submit_rewind(sid, 280, "", late["rewind"])  # past the window: fails when reached
            late["q"], late["r"] = d.append(sid, 23, "q"), d.append(sid, 24, "r")

        d.runner.during = during
        assert fx in outcomes(d.core.step())
        got: dict[int, Outcome] = {}
        for _ in range(3):  # the rewind fails when reached; the appends behind it are refused
            got |= outcomes(d.core.step())
        assert isinstance(got[late["rewind"]].error, PreconditionFailed)
        for k in ("q", "r"):
            err = got[late[k]].error
            assert isinstance(err, OffsetConflict) and err.expected == 303
        assert d.core.get_session_queued(sid, "").position == 303
        assert d.state(sid) == "x" * 300 + "abc"


def test_rewind_and_completion_through_steps(model_dir: Path) -> None:
    with driver(model_dir, checkpoint_every=4) as d:
        sid = d.core.open_session().session_id
        d.core.step()
        for i, ch in enumerate("abcdefgh"):
            d.append(sid, i, ch)
            d.core.step()
        rt = d.core._runtimes[d.core.repository.default]
        assert rt.ck_alloc.used == 2  # checkpoints at 4 and 8, in the checkpoint pool
        assert sorted(d.runner.checkpoints.values()) == [tuple(d.lm.vocab.encode(t)) for t in ("abcd", "abcdefgh")]
        fr = d.future()
        d.core.submit_rewind(sid, 3, "", fr)
        info = outcomes(d.core.step())[fr].value
        assert info.position == 5 and d.state(sid) == "abcde"  # type: ignore[union-attr]
        assert d.runner.plans[-1].rows[0].init == CheckpointRef(0) and len(d.runner.plans[-1].rows[0].tokens) == 1
        assert rt.ck_alloc.used == 1  # the one past the target was dropped and its slot freed
        c = d.core.complete(sid, CompletionRequest(max_chars=3, temperature=0.0), "", d.future())
        chunks = []
        for _ in range(10):
            out = d.core.step()
            chunks += [x.chunk for x in out.deliveries if isinstance(x, ChunkOut) and x.completion is c]
            if out.idle:
                break
        assert chunks[-1] is None and chunks[-2] is not None and chunks[-2].finish_reason == "length"
        text = "".join(ch.text for ch in chunks if ch is not None)
        want = ""
        for _ in range(3):
            want += d.top1("abcde" + want)
        assert text == want
        assert d.state(sid) == "abcde"  # a completion never changes its session
        assert d.core.stats().running_completions == 0
        d.core.submit_close(sid, "", d.future())
        assert rt.ck_alloc.used == 0  # closing frees the session's checkpoints


def test_close_and_expiry_are_answered_through_the_deliveries(model_dir: Path) -> None:
    with driver(model_dir) as d:
        sid = d.core.open_session().session_id
        d.core.step()
        f = d.future()
        d.core.submit_close(sid, "", f)  # nothing queued: closed at once
        (o,) = d.core.take_deliveries()
        assert isinstance(o, Outcome) and o.ticket == f and o.error is None
        busy, idle = d.core.open_session().session_id, d.core.open_session().session_id
        d.core.step()
        d.append(busy, 0, "a")  # queued, not stepped: never expired
        d.core.expire_idle(cutoff=float("inf"))
        assert d.core.session_ids() == {busy}
        with pytest.raises(Exception, match="session not found"):
            d.append(idle, 0, "a")


def test_expiry_pops_only_sessions_past_the_cutoff(model_dir: Path) -> None:
    """The sweep works from a heap of last-use times: a session used after its entry was
    pushed, or busy, is looked at again later, never closed early; an idle one is closed once."""
    with driver(model_dir) as d:
        sids = [d.core.open_session().session_id for _ in range(3)]
        d.core.step()
        used, busy, idle = (d.core.sessions[x] for x in sids)
        t0 = max(s.last_used_at for s in (used, busy, idle))
        used.last_used_at = t0 + 100  # typed since its entry was pushed
        d.append(busy.session_id, 0, "a")  # queued work
        busy.last_used_at = t0  # (as if long ago)
        d.core.expire_idle(cutoff=t0 + 1)
        assert d.core.session_ids() == {used.session_id, busy.session_id}
        assert len(d.core.sessions._expiry) == 2  # the two looked at again later; the expired one is gone
        d.core.step()  # busy's append lands: it is idle from now on
        busy.last_used_at = t0
        d.core.expire_idle(cutoff=t0 + 2)
        assert d.core.session_ids() == {used.session_id}
        d.core.expire_idle(cutoff=t0 + 101)
        assert d.core.session_ids() == set() and d.core.stats().session_events["expired"] == 3


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, _CUDA])])
def test_real_runner_keeps_pool_addresses_across_steps(model_dir: Path, device: str) -> None:
    """The state and checkpoint pools reallocate only when they grow (geometrically, when the
    slot high-water mark passes their capacity): steady-state steps keep every address, so a
    captured CUDA graph can replay on them."""
    st = make_settings(model_dir, checkpoint_every=2, rewind_window=8, device=device)
    core = EngineCore(st, ModelRepository.load(st))  # the real ModelRunner, driven synchronously
    tickets = itertools.count(1)
    sids = [core.open_session().session_id for _ in range(3)]
    core.step()
    rt = core._runtimes[core.repository.default]

    def addresses() -> list[int]:
        return [t.data_ptr() for t in (*rt.pool.tensors, *rt.ck_pool.tensors)]

    for i in range(2):  # the first checkpoints size the checkpoint pool
        for sid in sids:
            core.submit_append(sid, i, "x", AppendOptions(), "", next(tickets))
        core.step()
    before = addresses()
    for i in range(2, 40):
        for sid in sids:
            core.submit_append(sid, i, "xy"[i % 2], AppendOptions(), "", next(tickets))
        assert core.step().stats is not None
        assert addresses() == before
    assert rt.ck_alloc.used <= 3 * (8 // 2 + 2) and rt.pool.generation == 1 == rt.ck_pool.generation
    assert core.stats().state_bytes == rt.pool.nbytes + rt.ck_pool.nbytes + sum(
        r.pool.nbytes + r.ck_pool.nbytes for r in core._runtimes.values() if r is not rt
    )
