"""Unit tests of the pool, the rewind log and the (torch-free) scheduler."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import cellserve.engine.scheduler as scheduler_mod
import pytest
import torch
from cellserve.engine.buffers import InputBuffers
from cellserve.engine.plan import ZERO
from cellserve.engine.rewind import RewindLog
from cellserve.engine.scheduler import Scheduler
from cellserve.engine.sessions import AppendOp, ControlOp, Session
from cellserve.engine.state_pool import SlotAllocator, StatePool
from cellserve.engine.types import AppendOptions
from cellserve.errors import CapacityExceeded


def test_allocator_grows_in_chunks_and_reuses() -> None:
    a = SlotAllocator(chunk=4, slots_max=6)
    slots = [a.alloc() for _ in range(5)]
    assert slots == [0, 1, 2, 3, 4] and a.wanted_capacity() == 6  # 2 chunks, capped at the max
    a.free(2)
    assert a.alloc() == 2 and a.used == 5
    a.alloc()
    with pytest.raises(CapacityExceeded):
        a.alloc()


def test_pool_gather_scatter_and_growth_keep_states() -> None:
    p = StatePool(layers=2, hidden=3, arity=2, device=torch.device("cpu"))
    p.ensure_capacity(4)
    st = (torch.randn(2, 2, 3), torch.randn(2, 2, 3))
    p.scatter(torch.tensor([3, 1]), st)
    p.ensure_capacity(8)  # growing keeps every slot's state
    got = p.gather(torch.tensor([1, 3]))
    assert torch.equal(got[0][:, 0], st[0][:, 1]) and torch.equal(got[1][:, 1], st[1][:, 0])
    assert p.capacity == 8 and p.nbytes == 2 * 2 * 8 * 3 * 4


def test_rewind_log_is_bounded() -> None:
    log = RewindLog(every=4, window=10)
    pos = 0
    for i in range(200):
        piece = "ab"[i % 2] * (1 + i % 3)
        pos += len(piece)
        log.record(piece, pos, object() if log.wants_checkpoint(pos) else None)
        assert len(log.checkpoints) <= 10 // 4 + 2
        assert len(log.text) <= 10 + 4 + 3
        assert log.reach(pos) == min(10, pos)
    target, state, replay = log.plan(pos, 10)
    assert target == pos - 10 and state is not ZERO and len(replay) < 4 + 3


_TICKETS = itertools.count(1)


def _session(slot: int) -> Session:
    return Session(f"s{slot}", "m", "", slot, 0.0, 0.0, RewindLog(64, 256))


def _append(s: Session, text: str, submitted: float = 0.0, **opts: object) -> AppendOp:
    op = AppendOp(s.queued_end, text, [1] * len(text), AppendOptions(**opts), next(_TICKETS), submitted)  # type: ignore[arg-type]
    s.queue.append(op)
    s.queued_end += len(text)
    return op


def test_scheduler_coalesces_folds_writes_and_chunks_within_budget() -> None:
    sch = Scheduler(lambda t: [1] * len(t), scratch=lambda: 9)
    a, b, c = _session(0), _session(1), _session(2)
    a.queue.append(ControlOp("write", None, 0.0, state=ZERO))  # a new session's start state
    _append(a, "x")
    _append(a, "yz", only_last=True)
    _append(b, "k")
    _append(c, "q" * 80, submitted=1.0)
    batch = sch.schedule([a, b, c], [], budget=40, capacity=4)
    rows = batch.plan.rows
    # a: one row of 3 tokens from the zero state (write folded in), results after 1 and 3 tokens
    ra = rows[batch.appends[[r.session for r in batch.appends].index(a)].row]
    assert ra.src is None and ra.init is ZERO and ra.dst == 0 and ra.ends == [(1, 5), (3, 5)]
    assert not batch.plan.writes and not a.queue
    # b's keystroke rides along; c's 80 characters exceed what is left of the budget (40 - 1 - 3):
    # a first chunk of 36 into a scratch slot; c's piece stays queued
    assert sorted(len(r.tokens) for r in rows) == [1, 3, 36] and len(c.queue) == 1
    rc = rows[batch.appends[[r.session for r in batch.appends].index(c)].row]
    assert rc.src == 2 and rc.dst == 9 and rc.ends == [] and c.queue[0].scratch == 9
    c.queue[0].done = len(rc.tokens)  # as the engine notes a delivered chunk
    # round-robin: d (never served) goes first and fits whole in its half; c continues from its
    # scratch slot with the other half
    d = _session(3)
    _append(d, "w" * 20, submitted=2.0)
    batch = sch.schedule([c, d], [], budget=40, capacity=4)
    assert [(r.session, len(batch.plan.rows[r.row].tokens)) for r in batch.appends] == [(d, 20), (c, 20)]
    rd, rc = (batch.plan.rows[r.row] for r in batch.appends)
    assert rd.dst == 3 and rd.ends == [(20, 5)] and not d.queue
    assert rc.src == 9 and rc.dst == 9 and rc.ends == [] and len(c.queue) == 1
    c.queue[0].done += 20
    batch = sch.schedule([c], [], budget=40, capacity=4)  # the last 24 characters: into c's own slot
    (rc,) = batch.plan.rows
    assert rc.src == 9 and rc.dst == 2 and rc.ends == [(24, 5)] and not c.queue


def test_scheduler_rejects_stale_offsets() -> None:
    sch = Scheduler(lambda t: [1] * len(t))
    s = _session(0)
    op = _append(s, "abc")
    op.offset = 7  # as if an earlier op had failed after this one was accepted
    d = _append(s, "d")  # offset 3: assumed "abc" would apply, so it is stale too
    ok = AppendOp(0, "e", [1], AppendOptions(), next(_TICKETS), 0.0)
    s.queue.append(ok)
    batch = sch.schedule([s], [], budget=100, capacity=1)
    assert [f[1] for f in batch.failures] == [op, d]
    assert all(f[2].expected == 0 for f in batch.failures)  # type: ignore[attr-defined]
    assert [r.tokens for r in batch.plan.rows] == [[1]] and not s.queue


def test_scheduler_and_plan_do_not_import_torch() -> None:
    for mod in ("scheduler", "plan", "sessions", "rewind", "completions", "types"):
        src = Path(scheduler_mod.__file__).with_name(f"{mod}.py").read_text()
        names = {n.names[0].name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import)}
        froms = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
        assert not any(x and x.split(".")[0] in ("torch", "grpc") for x in names | froms), mod


def test_input_buffers_are_reused_and_grow() -> None:
    buf = InputBuffers(torch.device("cpu"))
    a = buf.ints("src", [3, 1, 2])
    assert a.tolist() == [3, 1, 2] and a.dtype == torch.int64
    b = buf.ints("src", [7, 8])  # the same call site next iteration: the same storage
    assert b.tolist() == [7, 8] and b.data_ptr() == a.data_ptr()
    c = buf.ints("src", list(range(100)))  # grown: a new buffer, then reused again
    assert c.tolist() == list(range(100))
    assert buf.ints("src", [5]).data_ptr() == c.data_ptr()
    assert buf.ints("dst", [5]).data_ptr() != c.data_ptr()  # call sites never share


def test_prefill_budget_is_shared_by_tenant_first() -> None:
    sch = Scheduler(lambda t: [1] * len(t), scratch=lambda: 9)
    alice = [_session(i) for i in range(4)]
    bob = _session(4)
    bob.owner = "bob"
    for s in alice:
        s.owner = "alice"
        _append(s, "a" * 500)
    _append(bob, "b" * 500)
    batch = sch.schedule([*alice, bob], [], budget=96, capacity=8)
    got = {r.session.session_id: len(batch.plan.rows[r.row].tokens) for r in batch.appends}
    # two tenants: half the budget each; alice's half split between her sessions in turn
    assert got["s4"] == 48 and sum(v for k, v in got.items() if k != "s4") == 48
    assert len(got) == 4  # alice's 48 between four sessions, at least MIN_CHUNK (16) each: three served
    served = {k for k in got if k != "s4"}
    for s in alice:  # as the engine notes delivered chunks
        if s.session_id in served:
            s.queue[0].done += got[s.session_id]
    batch = sch.schedule([*alice, bob], [], budget=96, capacity=8)
    again = {r.session.session_id for r in batch.appends}
    assert {s.session_id for s in alice} - served <= again  # the one left out goes first now
