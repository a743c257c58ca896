"""Failure is an output: a step that raises in any phase answers every op it took with the
error and leaves every session exactly as before that step; slots are never freed twice; the
device thread survives a step that raises.

Real engines (real ``ModelRunner``, device thread, event loop); the failure is injected once
into one phase of the runner (prepare, forward, pick, unpack, commit) or of the core (staging
the answers, scheduling), then the sessions are checked against the offline oracle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _engine_helpers import assert_prediction_matches, engine, offline_probs, run
from cellserve.engine.core import EngineCore
from cellserve.engine.engine import Engine
from cellserve.engine.rewind import RewindLog
from cellserve.engine.runner import ModelRunner
from cellserve.engine.scheduler import Scheduler
from cellserve.engine.session_blobs import SessionBlobs
from cellserve.engine.state_pool import SlotAllocator, SlotError
from cellserve.engine.update import StepUpdate

RUNNER_PHASES = ["_prepare", "_forward", "_pick", "_unpack", "commit"]
CORE_PHASES: dict[str, type] = {"stage": StepUpdate, "predictions": StepUpdate, "seal": SessionBlobs}


def fail_once(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, after: bool = False) -> dict[str, int]:
    """``cls.name`` raises on its next call (``after``: once it did its work), then behaves
    as before."""
    real = getattr(cls, name)
    calls = {"n": 0}

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            return real(*args, **kwargs)
        if after:
            real(*args, **kwargs)
        raise RuntimeError(f"{name} fell over")

    monkeypatch.setattr(cls, name, broken)
    return calls


def checkpoint_slots(eng: Engine) -> list[int]:
    """Every checkpoint-pool slot some session's rewind log holds (duplicates kept)."""
    slots = []
    for s in eng.core.sessions.values():
        for _pos, handle in s.history.checkpoints:
            slot = getattr(handle, "slot", None)
            if slot is not None:
                slots.append(slot)
    return slots


def assert_slots_consistent(eng: Engine) -> None:
    rt = eng.core._runtimes[eng.core.repository.default]
    held = checkpoint_slots(eng)
    assert len(held) == len(set(held)), "two sessions share a checkpoint slot"
    assert rt.ck_alloc.used == len(held)
    assert rt.alloc.used == len(eng.core.sessions)  # no scratch or completion slot leaked


@pytest.mark.parametrize("phase", RUNNER_PHASES + list(CORE_PHASES))
def test_a_failed_phase_answers_everything_and_changes_no_session(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    async def body() -> None:
        async with engine(model_dir, checkpoint_every=4, rewind_window=64) as eng:
            lm = eng.repository.get()
            s = (await eng.open_session()).session_id
            for i, piece in enumerate(["hel", "lo w", "orld"]):
                await eng.append(s, [0, 3, 7][i], piece)
            assert len(checkpoint_slots(eng)) >= 2
            snap_before = await eng.snapshot(s)
            other = (await eng.open_session()).session_id
            await eng.append(other, 0, "abc")
            fresh = (await eng.open_session()).session_id
            fail_once(monkeypatch, CORE_PHASES.get(phase, ModelRunner), phase)
            futs = [
                eng.submit_append(s, 11, "!!"),  # a run that takes a checkpoint (11 -> 13)
                eng.submit_append(fresh, 0, "ab"),
                eng.submit_snapshot(other),  # all three in the one step that fails
            ]
            errors = []
            for f in futs:
                try:
                    await f
                except RuntimeError as e:
                    errors.append(e)
            assert len(errors) == 3  # every op of the step, whichever phase failed
            assert all(phase in str(e) for e in errors)
            assert (await eng.get_session(s)).position == 11  # the step that failed changed nothing
            assert (await eng.get_session_queued(fresh)).position == 0
            assert_slots_consistent(eng)
            # the state is exactly as before: the same pieces again match the oracle
            p = await eng.append(s, 11, "!!")
            assert_prediction_matches(lm, p, offline_probs(lm, "hello world!!")[-1], 5)
            p = await eng.append(fresh, 0, "ab")
            assert_prediction_matches(lm, p, offline_probs(lm, "ab")[-1], 5)
            # rewind restores this session's own checkpoints, not another's
            info = await eng.rewind(s, 6)
            assert info.position == 7
            p = await eng.append(s, 7, "x")
            assert_prediction_matches(lm, p, offline_probs(lm, "hello wx")[-1], 5)
            assert_slots_consistent(eng)
            # a snapshot taken before the failure still resumes bit-for-bit
            resumed, pred = await eng.resume(snap_before, "!")
            assert resumed.position == 12 and pred is not None
            assert_prediction_matches(lm, pred, offline_probs(lm, "hello world!")[-1], 5)

    run(body)


def test_a_failed_commit_in_a_completion_step_cancels_it_and_keeps_serving(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        from cellserve.engine.types import CompletionRequest

        async with engine(model_dir) as eng:
            lm = eng.repository.get()
            s = (await eng.open_session()).session_id
            await eng.append(s, 0, "hello")
            fail_once(monkeypatch, ModelRunner, "commit")
            stream = eng.complete(s, CompletionRequest(max_chars=4, temperature=0.0))
            chunks = [c async for c in stream]
            assert chunks[-1].finish_reason == "cancelled"  # ended, with no text of the failed step
            assert (await eng.stats()).running_completions == 0
            assert_slots_consistent(eng)
            p = await eng.append(s, 5, " w")
            assert_prediction_matches(lm, p, offline_probs(lm, "hello w")[-1], 5)

    run(body)


def test_a_commit_that_breaks_off_never_frees_or_repeats_what_landed(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bookkeeping bug after a run was recorded: the checkpoint the log now owns is not
    freed, the start-state write that landed is not re-queued, and the session goes on from
    the state its slot holds."""

    async def body() -> None:
        async with engine(model_dir, checkpoint_every=4, rewind_window=64) as eng:
            lm = eng.repository.get()
            s = (await eng.open_session()).session_id  # its write folds into "abcd"
            fail_once(monkeypatch, RewindLog, "record", after=True)
            p = await eng.append(s, 0, "abcd")  # answered before the bookkeeping broke off
            assert p.position == 4 and (await eng.get_session(s)).position == 4
            assert_slots_consistent(eng)
            assert len(checkpoint_slots(eng)) == 1
            assert not eng.core.sessions[s].queue  # the applied write was not re-queued
            p = await eng.append(s, 4, "efgh")
            assert_prediction_matches(lm, p, offline_probs(lm, "abcdefgh")[-1], 5)
            await eng.rewind(s, 5)
            p = await eng.append(s, 3, "x")
            assert_prediction_matches(lm, p, offline_probs(lm, "abcx")[-1], 5)
            assert_slots_consistent(eng)

    run(body)


@pytest.mark.parametrize(
    ("where", "answered_with_error"),
    [("scheduler", True), ("step", False)],
)
def test_the_device_thread_survives_a_scheduler_or_step_that_raises(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, where: str, answered_with_error: bool
) -> None:
    """A scheduler raising after it took the ops: they are answered with the error. A step
    raising before it took anything: the work stays queued and the next step answers it."""

    async def body() -> None:
        async with engine(model_dir) as eng:
            lm = eng.repository.get()
            s = (await eng.open_session()).session_id
            await eng.append(s, 0, "hi")
            if where == "scheduler":
                calls = fail_once(monkeypatch, Scheduler, "schedule", after=True)
            else:
                calls = fail_once(monkeypatch, EngineCore, "step")
            f = eng.submit_append(s, 2, " there")
            if answered_with_error:
                with pytest.raises(RuntimeError, match="schedule"):
                    await f
                f = eng.submit_append(s, 2, " there")  # the same piece again: applied once
            p = await f
            assert calls["n"] >= 2 and eng.running
            assert_prediction_matches(lm, p, offline_probs(lm, "hi there")[-1], 5)
            await eng.drain()  # nothing is left in flight: drain returns

    run(body)


def test_a_slot_cannot_be_freed_twice() -> None:
    alloc = SlotAllocator(chunk=4, slots_max=8)
    a, b = alloc.alloc(), alloc.alloc()
    alloc.free(a)
    with pytest.raises(SlotError):
        alloc.free(a)  # freed twice: refused, the free list unchanged
    with pytest.raises(SlotError):
        alloc.free(5)  # never handed out
    assert alloc.used == 1 and alloc.free_count == 7
    assert alloc.alloc() == a and alloc.alloc() == 2  # each slot has one owner
    alloc.free(b)
    assert alloc.used == 2
