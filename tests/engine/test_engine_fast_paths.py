"""The engine's keystroke fast paths change nothing but speed. A random workload (keystrokes,
queued keystrokes that coalesce, pastes, retries, rewinds, resets) runs on two cores over the
shipped-style model with a session memory. On one core every fast path takes the general path it
short-cuts:

- the scheduler's one-character queue (``Scheduler._add_keystroke``) -> ``_add_run``;
- a one-piece commit (``StepUpdate._commit_piece``) -> ``_commit_run``;
- a keystroke's memory push (``SessionMemory.push``'s first branch) -> ``_push_many``;
- a fork's cached validity -> the full check on every prediction;
- a step's outputs picked as made (``ModelRunner._picked``) -> the bank's gather.

Both cores must answer every call alike, bit for bit, and leave the same sessions: positions,
memories (text and predictions) and states in the slots."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from _engine_helpers import make_settings
from cellserve.engine.core import EngineCore
from cellserve.engine.core_io import Call, Outcome
from cellserve.engine.runner import ModelRunner
from cellserve.engine.scheduler import Batch, Scheduler
from cellserve.engine.sessions import AppendOp
from cellserve.engine.types import AppendOptions, Prediction, SessionInfo
from cellserve.engine.update import StepUpdate
from cellserve.memory.window import MemoryFork, MemoryPrediction, SessionMemory
from cellserve.repository import ModelRepository

TEXT = "def value(self, x):\n    return self.items[x] if x else None\n# a longer comment, typed on\n"


def _general_paths(mp: pytest.MonkeyPatch) -> None:
    def add_keystroke(self: Scheduler, batch: Batch, s: Any, op: AppendOp) -> None:
        self._add_run(batch, s, [op], None, 0, 1)

    def commit_piece(self: StepUpdate, rt: Any, b: Batch, run: Any, pred: Prediction, now: float) -> None:
        self._commit_run(rt, b, run, [pred], now)

    def push(self: SessionMemory, ids: Any) -> None:
        self._push_many(bytes(ids))

    def predict_after(self: MemoryFork, ids: Any) -> MemoryPrediction:
        if not self.valid():
            raise RuntimeError("the parent memory changed since this fork was made")
        extra = self._extra
        return self._base._predict(bytes(extra) + bytes(ids) if extra else bytes(ids), self._at)

    def picked(self: ModelRunner, fwd: Any, pick: list[int]) -> torch.Tensor:
        parts = fwd.bank_parts
        bank = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return bank.index_select(0, torch.tensor(pick, dtype=torch.long))

    mp.setattr(Scheduler, "_add_keystroke", add_keystroke)
    mp.setattr(StepUpdate, "_commit_piece", commit_piece)
    mp.setattr(SessionMemory, "push", push)
    mp.setattr(MemoryFork, "predict_after", predict_after)
    mp.setattr(ModelRunner, "_picked", picked)


def _comparable(value: object) -> object:
    """What an answer must equal across the cores (a session's id and times differ)."""
    if isinstance(value, SessionInfo):
        return ("session", value.position, value.rewindable)
    if isinstance(value, tuple):
        return tuple(_comparable(v) for v in value)
    return value


def _run(model_dir: Path, seed: int, general: bool) -> tuple[list[object], list[object]]:
    """The workload of ``seed`` on a fresh core: every answer in the order given, then each
    session's position, memory and state."""
    with pytest.MonkeyPatch.context() as mp:
        if general:
            _general_paths(mp)
        st = make_settings(model_dir, checkpoint_every=4, rewind_window=32, max_batch_tokens=24)
        core = EngineCore(st, ModelRepository.load(st))
        rng = random.Random(seed)
        tickets = itertools.count(1)
        answers: list[object] = []
        sids = [core.open_session().session_id for _ in range(6)]
        ends = dict.fromkeys(sids, 0)  # the offset each session's next append carries
        last: dict[str, tuple[int, str]] = {}
        opts = [AppendOptions(), AppendOptions(top_k=3), AppendOptions(want_logprobs=True)]

        def call(method: str, *args: Any) -> None:
            core.add(Call(next(tickets), method, args, ticketed=True))

        for _ in range(160):
            for sid in rng.sample(sids, rng.randint(1, len(sids))):
                r, at = rng.random(), ends[sid]
                if r < 0.6 or at == 0:  # one keystroke, sometimes two queued (they coalesce)
                    for _ in range(1 if rng.random() < 0.8 else 2):
                        ch = TEXT[ends[sid] % len(TEXT)]
                        call("submit_append", sid, ends[sid], ch, rng.choice(opts), "")
                        last[sid] = (ends[sid], ch)
                        ends[sid] += 1
                elif r < 0.75:  # a paste, chunked past the step's budget
                    n = rng.randint(2, 40)
                    text = (TEXT * 2)[at % len(TEXT) : at % len(TEXT) + n]
                    call("submit_append", sid, at, text, rng.choice(opts), "")
                    last[sid], ends[sid] = (at, text), at + len(text)
                elif r < 0.85 and sid in last:  # a retry of the latest piece
                    call("submit_append", sid, *last[sid], AppendOptions(), "")
                elif r < 0.92:  # a rewind, now and then deeper than the window (refused)
                    k = rng.randint(1, min(at, 40))
                    call("submit_rewind", sid, k, "")
                    ends[sid] = at - k
                    last.pop(sid, None)
                elif r < 0.95:  # an append at an offset the session is not at (refused)
                    call("submit_append", sid, at + 3, "z", AppendOptions(), "")
                else:
                    call("submit_reset", sid, "")
                    ends[sid] = 0
                    last.pop(sid, None)
            outs = list(core.take_deliveries())
            while core.has_work():
                outs += core.step().deliveries
            for d in outs:
                assert isinstance(d, Outcome)
                answers.append((d.ticket, _comparable(d.value), type(d.error).__name__ if d.error else None))
            ends = {sid: core.get_session(sid).position for sid in sids}  # after refusals too
        rt = core._runtimes[core.repository.default]
        final: list[object] = []
        for sid in sids:
            s = core.sessions.get(sid, "")
            mem = s.memory
            assert mem is not None
            final.append((s.position, mem.text(), len(mem), mem.predict(), rt.runner.read_states([s.slot])))
        return answers, final


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_paths_answer_and_leave_sessions_as_the_general_paths(memory_model_dir: Path, seed: int) -> None:
    fast = _run(memory_model_dir, seed, general=False)
    general = _run(memory_model_dir, seed, general=True)
    answers, final = fast
    assert len(answers) > 300 and any(a[2] for a in answers)  # refusals too (a rewind too deep, say)
    assert sum(isinstance(a[1], Prediction) for a in answers) > 200
    assert answers == general[0]
    assert final == general[1]
