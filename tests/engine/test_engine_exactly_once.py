"""Exactly-once appends: duplicates replay from cache, gaps and reorders are refused with the
expected offset, a failed step leaves the session untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _engine_helpers import GatedRunner, assert_prediction_matches, engine, offline_probs, run
from cellserve.engine.runner import ModelRunner
from cellserve.engine.types import AppendOptions
from cellserve.errors import InvalidInput, NotFound, OffsetConflict, PreconditionFailed


def test_duplicate_gap_reorder(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir, max_append_chars=50) as eng:
            lm = eng.repository.get()
            s = (await eng.open_session()).session_id
            p1 = await eng.append(s, 0, "abc")
            again = await eng.append(s, 0, "abc")  # retry of the last piece: cached, not applied
            assert again.replayed and not p1.replayed
            assert again.top_k == p1.top_k and again.position == 3
            assert (await eng.get_session(s)).position == 3
            with pytest.raises(OffsetConflict) as e:  # same offset, other text: not a retry
                await eng.append(s, 0, "abd")
            assert (e.value.expected, e.value.got) == (3, 0)
            with pytest.raises(OffsetConflict) as e:  # a gap
                await eng.append(s, 5, "x")
            assert e.value.expected == 3 and "3" in str(e.value)
            p2 = await eng.append(s, 3, "de")
            with pytest.raises(OffsetConflict):  # an older piece is no longer the last one
                await eng.append(s, 0, "abc")
            # reordered pipeline: offset 7 sent before offset 5 -> 7 refused, 5 applied
            results = await asyncio.gather(eng.append(s, 7, "hi"), eng.append(s, 5, "fg"), return_exceptions=True)
            assert isinstance(results[0], OffsetConflict) and results[0].expected == 5
            assert not isinstance(results[1], BaseException) and results[1].position == 7
            assert (await eng.get_session(s)).position == 7
            probs = offline_probs(lm, "abcdefg")
            assert_prediction_matches(lm, p2, probs[4], 5)
            assert_prediction_matches(lm, results[1], probs[6], 5)
            # a retry while the original is still queued shares its answer
            a, b = await asyncio.gather(eng.append(s, 7, "h"), eng.append(s, 7, "h"))
            assert a.position == b.position == 8 and b.replayed and a.top_k == b.top_k
            assert (await eng.get_session(s)).position == 8
            with pytest.raises(InvalidInput):
                await eng.append(s, 8, "")
            with pytest.raises(InvalidInput):
                await eng.append(s, 8, "x" * 51)
            with pytest.raises(InvalidInput):
                await eng.append(s, 8, "x", AppendOptions(top_k=10_000))
            with pytest.raises(NotFound):
                await eng.append("0" * 32, 0, "x")

    run(body)


def test_failed_step_leaves_session_untouched(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            lm = eng.repository.get()
            s = (await eng.open_session()).session_id
            await eng.append(s, 0, "hello")
            real = ModelRunner.execute
            calls = {"n": 0}

            def boom(self: ModelRunner, plan: object) -> object:
                calls["n"] += 1
                raise RuntimeError("device fell over")

            monkeypatch.setattr(ModelRunner, "execute", boom)
            with pytest.raises(RuntimeError):
                await eng.append(s, 5, " world")
            assert calls["n"] == 1
            assert (await eng.get_session(s)).position == 5
            monkeypatch.setattr(ModelRunner, "execute", real)
            pred = await eng.append(s, 5, " world")  # the same piece again: applied once, now
            assert pred.position == 11 and not pred.replayed
            assert_prediction_matches(lm, pred, offline_probs(lm, "hello world")[-1], 5)

    run(body)


def test_offsets_count_appends_taken_into_the_running_batch(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: after a failed op, the expected offset used to be recomputed from the applied
    position plus the queue, leaving out appends already taken into the running batch, so a
    correctly pipelined append was ABORTED. Reproduced with a rewind past the window and
    pipelined appends, on a slowed device worker."""

    async def body() -> None:
        async with engine(model_dir, rewind_window=256, max_append_chars=400) as eng:
            s, y = (await eng.open_session()).session_id, (await eng.open_session()).session_id
            await eng.append(s, 0, "x" * 300)
            await eng.append(y, 0, "a")
            gate = GatedRunner()
            gate.install(monkeypatch)
            fx = eng.submit_append(s, 300, "abc")
            eng.submit_append(y, 1, "b")
            await gate.running()  # iteration 1: s's "abc" and y's "b"
            fr = eng.submit_rewind(s, 280)  # past the window: fails when reached
            stale = [eng.submit_append(s, 23, "q"), eng.submit_append(s, 24, "r")]  # pipelined after it
            eng.submit_append(y, 2, "c")
            gate.release()
            await gate.running()  # iteration 2: the rewind failed when scheduled; y's "c" runs
            assert (await fx).position == 303
            fb = eng.submit_append(s, 303, "hello")  # the client resends at the real position
            gate.release()  # (answers come with their iteration's output: the rewind's with 2's)
            with pytest.raises(PreconditionFailed):
                await fr
            await gate.running()  # iteration 3: the stale appends are refused, "hello" runs
            assert (
                eng.core.sessions[s].queued_end == 308
            )  # accepted, not yet applied (the core thread waits in the gate)
            fc = eng.submit_append(s, 308, "!")  # pipelined behind "hello": must be accepted
            gate.open()
            for f in stale:
                with pytest.raises(OffsetConflict) as e:
                    await f
                assert e.value.expected == 303
            assert (await fb).position == 308 and (await fc).position == 309
            assert (await eng.get_session(s)).position == 309

    run(body)


def test_ttl_never_expires_a_session_with_running_work(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweeps run on the core thread between passes: while a long iteration runs, they wait
    in the inbox behind the session's next keystroke, so they find it busy (queued work) and
    expire only the idle session."""

    async def body() -> None:
        async with engine(model_dir, session_idle_ttl_s=0.05, session_sweep_interval_s=0.01) as eng:
            idle = (await eng.open_session()).session_id
            busy = (await eng.open_session()).session_id
            await eng.append(busy, 0, "a")
            gate = GatedRunner()
            gate.install(monkeypatch)
            fut = eng.submit_append(busy, 1, "b")
            await gate.running()  # the keystroke waits in a long iteration
            queued = eng.submit_append(busy, 2, "c")  # queued behind it, before the sweeps
            await asyncio.sleep(0.05 + 5 * 0.01)  # sweeps past the TTL pile up in the inbox
            gate.open()
            assert (await fut).position == 2 and (await queued).position == 3
            # the piled-up sweeps ran in the pass that took "c": the idle session expired
            assert idle not in eng.core.sessions and busy in eng.core.sessions

    run(body)
