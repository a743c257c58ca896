"""Speculative keystrokes (engine/speculation.py), on a core driven synchronously with the real
runner: a typist's session served with speculation on equals the same session served with it
off, bit for bit (answers, top-k, log-probs, state bytes, snapshots, the session memory),
through hits, misses, rewinds, resets, pastes, snapshots and suggestions between keystrokes.

Each action runs on two cores of the same repository at int8 (the batch-invariant precision);
the "on" core is given its idle time (``EngineCore.speculate`` until it has nothing left)
before every action, as the core loop gives it between keystrokes."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from _engine_helpers import make_settings
from cellserve.engine import snapshot as snap
from cellserve.engine.core import EngineCore
from cellserve.engine.core_io import Call, Outcome
from cellserve.engine.plan import ZERO
from cellserve.engine.types import AppendOptions, Prediction, SessionEvent, SessionInfo, SuggestRequest
from cellserve.errors import CellserveError
from cellserve.nn import precision as prec
from cellserve.repository import ModelRepository

pytestmark = pytest.mark.skipif("int8" not in prec.available(torch.device("cpu")), reason="no int8 engine")

TEXT = "def value(self, x):\n    return self.items[x] if x else None\n"


class Core:
    """One core and the tickets handed to it; every call runs to its answer."""

    def __init__(self, model_dir: Path, **kw: Any) -> None:
        st = make_settings(model_dir, precision=kw.pop("precision", "int8"), **kw)
        self.core = EngineCore(st, ModelRepository.load(st))
        self._tickets = itertools.count(1)

    def call(self, method: str, *args: Any) -> Any:
        t = next(self._tickets)
        self.core.add(Call(t, method, args, ticketed=True))
        got = {d.ticket: d for d in self.core.take_deliveries() if isinstance(d, Outcome)}
        while t not in got and self.core.has_work():
            got.update({d.ticket: d for d in self.core.step().deliveries if isinstance(d, Outcome)})
        while self.core.has_work():  # a suggestion's search, or work left behind it
            self.core.step()
        out = got[t]
        if out.error is not None:
            raise out.error
        return out.value

    def open(self, memory: bool = True, session_id: str = "") -> str:
        """A new session (under ``session_id`` when given: the same id on two cores)."""
        rt, core = self.rt, self.core
        mem = core._fresh_memory(rt, memory)
        return core.sessions.open(rt, "", 0, ZERO, SessionEvent.OPENED, mem, session_id=session_id).session_id

    def idle(self) -> int:
        """The loop's idle time: speculative batches until none is left; returns how many."""
        n = 0
        while self.core.speculate():
            n += 1
        return n

    @property
    def rt(self) -> Any:
        return self.core._runtimes[self.core.repository.default]

    def state_bytes(self, sid: str) -> list[bytes]:
        return list(self.rt.runner.read_states([self.core.sessions[sid].slot])[0])

    def memory_text(self, sid: str) -> bytes | None:
        mem = self.core.sessions[sid].memory
        return None if mem is None else mem.text()

    def guessed(self, sid: str) -> tuple[str, ...]:
        return tuple(self.rt.speculator.guessed(self.core.sessions[sid]))


def both(on: Core, off: Core, method: str, *args: Any) -> Any:
    """The call on both cores; the answers (or refusals) must be equal."""
    results: list[tuple[str, Any]] = []
    for c in (on, off):
        try:
            value = c.call(method, *args)
            if isinstance(value, SessionInfo):  # its times are the core's own clock readings
                value = replace(value, created_at=0.0, last_used_at=0.0)
            results.append(("ok", value))
        except CellserveError as e:
            results.append(("error", f"{type(e).__name__}: {e}"))
    assert results[0] == results[1]
    return results[0][1]


def snapshot_equal(on: Core, off: Core, sid: str) -> None:
    blobs = both_blobs = [c.call("submit_snapshot", sid, "") for c in (on, off)]
    a, b = (snap.decode(blob, c.core._blobs._key) for blob, c in zip(blobs, (on, off), strict=True))
    assert (a.position, a.tensors, a.memory) == (b.position, b.tensors, b.memory)
    assert len(both_blobs) == 2


def typist(on: Core, off: Core, sid: str, options: AppendOptions, rng: random.Random, steps: int) -> None:
    """Types ``steps`` actions into session ``sid`` (the same id on both cores) and checks
    every answer and, after each, the state bytes and the memory."""
    pos = 0
    for _ in range(steps):
        assert on.idle() >= 0 and off.idle() == 0  # the off core never guesses
        r = rng.random()
        guessed = on.guessed(sid)
        if r < 0.55 and guessed:  # a guessed character: a hit
            ch, opts = rng.choice(guessed), options
        elif r < 0.6 and guessed:  # a guessed character with other options: a miss
            ch, opts = rng.choice(guessed), AppendOptions(top_k=options.top_k + 1)
        elif r < 0.82:  # the text's next character: a hit or a miss
            ch, opts = TEXT[pos % len(TEXT)], options
        else:
            ch, opts = "", options
        if ch:
            pred = both(on, off, "submit_append", sid, pos, ch, opts, "")
            assert isinstance(pred, Prediction)
            pos += 1
        elif r < 0.87 and pos > 0:
            n = rng.randint(1, min(pos, 3))
            both(on, off, "submit_rewind", sid, n, "")
            pos -= n
        elif r < 0.91:
            snapshot_equal(on, off, sid)
        elif r < 0.95:
            word = rng.choice(["self", ".items", " = ", "\n    "])
            both(on, off, "submit_append", sid, pos, word, options, "")
            pos += len(word)
        elif r < 0.98:
            both(on, off, "submit_suggest", sid, SuggestRequest(n=2, max_chars=6), "")
        else:
            both(on, off, "submit_reset", sid, "")
            pos = 0
        assert on.state_bytes(sid) == off.state_bytes(sid)
        assert on.memory_text(sid) == off.memory_text(sid)
    snapshot_equal(on, off, sid)


def pair(model_dir: Path, memory: bool, **kw: Any) -> tuple[Core, Core, str]:
    on, off = Core(model_dir, **kw), Core(model_dir, speculation=False, **kw)
    sid = on.open(memory)
    off.open(memory, session_id=sid)  # the same id on both
    return on, off, sid


@pytest.mark.parametrize(
    ("session_memory", "options"),
    [
        (True, AppendOptions(top_k=5, want_logprobs=True)),
        (True, AppendOptions(top_k=3)),  # one mixed point per keystroke: a mix of one row
        (True, AppendOptions(top_k=0)),  # the guesses come from a peek at the distribution
        (True, AppendOptions(top_k=4, memory=False)),  # the memory off per request
        (False, AppendOptions(top_k=8, want_logprobs=True)),  # a session without memory
    ],
)
def test_typist_with_speculation_equals_without(memory_model_dir: Path, session_memory: bool, options: Any) -> None:
    on, off, sid = pair(memory_model_dir, session_memory, checkpoint_every=8, rewind_window=32)
    typist(on, off, sid, options, random.Random(str(options)), 160)
    counts = on.core.stats().speculation
    assert counts["hits"] > 20 and counts["misses"] > 5, counts
    assert counts["rows"] >= counts["hits"] and counts["wasted_rows"] > 0, counts
    assert off.core.stats().speculation == {
        "hits": 0, "misses": 0, "unguessed": 0, "rows": 0, "wasted_rows": 0, "slots": 0
    }  # fmt: skip


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
def test_gru_and_lstm_without_a_mixer(model_dir: Path, model: str) -> None:
    on, off, sid = pair(model_dir, True, default_model=model, checkpoint_every=4, rewind_window=16)
    typist(on, off, sid, AppendOptions(top_k=5, want_logprobs=True), random.Random(model), 100)
    assert on.core.stats().speculation["hits"] > 10


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_off_where_steps_are_not_batch_invariant(model_dir: Path, precision: str) -> None:
    """fp32's and bf16's GEMM kernels change with the number of rows (a row's bits depend on
    its batch companions), so those precisions never speculate, whatever the setting."""
    c = Core(model_dir, precision=precision, speculation=True)
    sid = c.open()
    for pos, ch in enumerate("def x"):
        c.call("submit_append", sid, pos, ch, AppendOptions(), "")
        assert c.idle() == 0 and c.guessed(sid) == ()
    assert not c.rt.speculator.enabled
    assert c.core.stats().speculation["rows"] == 0


def test_never_while_work_is_queued(memory_model_dir: Path) -> None:
    c = Core(memory_model_dir)
    a, b = c.open(), c.open()
    c.call("submit_append", a, 0, "d", AppendOptions(), "")
    c.core.submit_append(b, 0, "x", AppendOptions(), "", 999)  # queued, not stepped
    assert c.core.has_work() and not c.core.speculate()
    while c.core.has_work():
        c.core.step()
    assert c.idle() > 0 and c.guessed(a) and c.guessed(b)


@pytest.mark.parametrize("op", ["rewind", "reset", "snapshot", "suggest", "paste", "complete", "close"])
def test_any_other_op_drops_the_guesses(memory_model_dir: Path, op: str) -> None:
    c = Core(memory_model_dir)
    sid = c.open()
    c.call("submit_append", sid, 0, "de", AppendOptions(), "")
    assert c.idle() > 0 and len(c.guessed(sid)) == 4
    held = c.rt.alloc.used
    assert c.rt.speculator.slots == 4
    if op == "rewind":
        c.call("submit_rewind", sid, 1, "")
    elif op == "reset":
        c.call("submit_reset", sid, "")
    elif op == "snapshot":
        c.call("submit_snapshot", sid, "")
    elif op == "suggest":
        c.call("submit_suggest", sid, SuggestRequest(n=2, max_chars=4), "")
    elif op == "paste":
        c.call("submit_append", sid, 2, "f x", AppendOptions(), "")
    elif op == "complete":
        from cellserve.engine.types import CompletionRequest

        c.core.add(Call(77, "complete", (sid, CompletionRequest(max_chars=3), ""), ticketed=True))
        while c.core.has_work():
            c.core.step()
    else:
        c.call("submit_close", sid, "")
        assert c.rt.speculator.slots == 0 and c.rt.alloc.used == held - 5  # its slot and its guesses'
        return
    assert c.rt.speculator.slots == 0 and c.rt.alloc.used == held - 4
    assert c.core.stats().speculation["wasted_rows"] == 4
    assert c.idle() > 0 and len(c.guessed(sid)) == 4  # guessed anew once idle


def test_scratch_slots_are_bounded_and_counted(memory_model_dir: Path) -> None:
    c = Core(memory_model_dir, speculation_slots=10, speculation_k=3, pool_chunk=1)
    sids = [c.open() for _ in range(5)]
    for sid in sids:
        c.call("submit_append", sid, 0, "d", AppendOptions(), "")
    before = c.core.stats()
    c.idle()
    after = c.core.stats()
    assert c.rt.speculator.slots == 9 == after.speculation["slots"]  # 3 sessions of 3; no room for a 4th
    assert [len(c.guessed(s)) for s in sids] == [0, 0, 3, 3, 3]  # the most recently active first
    assert after.slots_used == before.slots_used + 9
    assert after.state_bytes > before.state_bytes  # the pool grew for them
    assert after.slots_max == before.slots_max


def test_quiet_sessions_lose_their_guesses(memory_model_dir: Path) -> None:
    c = Core(memory_model_dir, speculation_recent_s=0.5)
    sid = c.open()
    c.call("submit_append", sid, 0, "d", AppendOptions(), "")
    c.idle()
    assert c.rt.speculator.slots == 4
    import time

    time.sleep(0.6)
    assert c.idle() == 0 and c.rt.speculator.slots == 0 and c.guessed(sid) == ()
    assert c.core.stats().speculation["wasted_rows"] == 4


def test_a_failed_batch_changes_nothing(memory_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on, off, sid = pair(memory_model_dir, True)
    both(on, off, "submit_append", sid, 0, "d", AppendOptions(), "")
    on.idle()  # a peek was not needed (top_k 5 >= k): the guesses ran
    assert on.rt.speculator.slots == 4
    both(on, off, "submit_append", sid, 1, "e", AppendOptions(), "")

    def broken(plan: Any) -> Any:
        raise RuntimeError("device fell over")

    monkeypatch.setattr(on.rt.runner, "execute", broken)
    assert on.idle() >= 1 and on.rt.speculator.slots == 0
    monkeypatch.undo()
    for pos, ch in enumerate("f x", start=2):
        both(on, off, "submit_append", sid, pos, ch, AppendOptions(), "")
        assert on.state_bytes(sid) == off.state_bytes(sid)


def test_a_retried_keystroke_after_a_hit_is_replayed(memory_model_dir: Path) -> None:
    """A client that resends a keystroke answered from a guess (its answer was lost) gets the
    same answer, marked replayed, and nothing is applied twice: exactly-once holds for hits."""
    on, off = Core(memory_model_dir), Core(memory_model_dir, speculation=False)
    sid = on.open()
    off.open(session_id=sid)
    opts = AppendOptions(top_k=5)
    both(on, off, "submit_append", sid, 0, "d", opts, "")
    hits = 0
    for pos in range(1, 12):
        on.idle()
        guessed = on.guessed(sid)
        ch = guessed[0] if guessed else "x"
        first = both(on, off, "submit_append", sid, pos, ch, opts, "")
        hits += bool(guessed)
        again = both(on, off, "submit_append", sid, pos, ch, opts, "")
        assert again.replayed and (again.position, again.top_k) == (first.position, first.top_k)
        assert on.state_bytes(sid) == off.state_bytes(sid)
        assert on.memory_text(sid) == off.memory_text(sid)
    assert hits >= 5 and on.core.stats().speculation["hits"] >= 5


@pytest.mark.parametrize("hold_s", [3600.0, 0.0])
def test_no_guessing_just_after_a_busy_step(memory_model_dir: Path, hold_s: float) -> None:
    """A step of ``speculation_busy_rows`` rows or more (many sessions typing at once) stops
    the guessing for ``speculation_busy_hold_s``; a smaller step does not."""
    c = Core(memory_model_dir, speculation_busy_rows=3, speculation_busy_hold_s=hold_s)
    typist, *others = [c.open() for _ in range(4)]
    c.call("submit_append", typist, 0, "d", AppendOptions(), "")  # a step of one row
    assert c.core.speculating() and c.idle() > 0
    for ticket, sid in enumerate(others, start=1000):  # three fresh sessions: nothing guessed
        c.core.submit_append(sid, 0, "x", AppendOptions(), "", ticket)
    out = c.core.step()
    assert out.stats is not None and out.stats.rows == 3 and not c.core.has_work()
    c.call("submit_append", typist, 1, "\n", AppendOptions(), "")  # a session that guesses are wanted for
    busy = hold_s > 0
    assert c.core.speculating() is not busy
    assert (c.idle() > 0) is not busy
    assert c.rt.speculator.pending() or not busy  # kept for later, not dropped
