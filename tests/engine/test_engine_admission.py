"""Admission caps, idle TTL, owners, drain/stop, leak accounting and coalescing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _engine_helpers import assert_prediction_matches, engine, offline_probs, run
from cellserve.engine.types import AppendOptions, CompletionRequest
from cellserve.errors import CapacityExceeded, NotFound, Unavailable


def test_session_cap_and_others_unaffected(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir, max_sessions=3, pool_chunk=2) as eng:
            ids = [(await eng.open_session()).session_id for _ in range(3)]
            with pytest.raises(CapacityExceeded) as e:
                (await eng.open_session())
            assert e.value.retry_after_s > 0
            preds = await asyncio.gather(*(eng.append(s, 0, "ok") for s in ids))
            assert all(p.position == 2 for p in preds)
            st = await eng.stats()
            assert st.slots_capacity == 4 and st.slots_used == 3  # grew by chunks of 2
            assert st.session_events["rejected_sessions"] == 1
            await eng.close_session(ids[0])
            (await eng.open_session())  # the slot is free again

    run(body)


def test_owner_and_unknown_are_indistinguishable(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            s = (await eng.open_session(owner="alice")).session_id
            with pytest.raises(NotFound) as foreign:
                await eng.append(s, 0, "x", owner="mallory")
            with pytest.raises(NotFound) as unknown:
                await eng.append("f" * 32, 0, "x", owner="mallory")
            assert str(foreign.value) == str(unknown.value)
            with pytest.raises(NotFound):
                (await eng.get_session(s, owner="mallory"))
            with pytest.raises(NotFound):
                (await eng.open_session("no-such-model"))
            assert (await eng.append(s, 0, "x", owner="alice")).position == 1
            assert len(s) == 32 and int(s, 16) >= 0

    run(body)


def test_idle_ttl_evicts_only_idle_sessions(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir, session_idle_ttl_s=0.3, session_sweep_interval_s=0.05) as eng:
            idle = (await eng.open_session()).session_id
            busy = (await eng.open_session()).session_id
            await eng.append(idle, 0, "a")
            typed = 0
            for _ in range(1000):  # the busy one types (faster than the TTL) until the idle one expired
                if idle not in eng.core.sessions:
                    break
                await eng.append(busy, typed, "b")
                typed += 1
                await asyncio.sleep(0.03)
            with pytest.raises(NotFound):
                await eng.append(idle, 1, "a")
            assert (await eng.get_session(busy)).position == typed
            assert (await eng.stats()).session_events["expired"] == 1
            for _ in range(1000):  # now idle too: it expires in its turn
                if not eng.core.sessions:
                    break
                await asyncio.sleep(0.03)
            st = await eng.stats()
            assert st.active_sessions == 0 and st.slots_used == 0  # leak accounting
            assert st.session_events["expired"] == 2

    run(body)


def test_leak_accounting_after_everything(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir, pool_chunk=4) as eng:
            ids = [(await eng.open_session(m)).session_id for m in ("tiny-lstm", "tiny-gru") * 5]
            await asyncio.gather(*(eng.append(s, 0, "hello") for s in ids))
            streams = [eng.complete(s, CompletionRequest(max_chars=100, n=2)) for s in ids[:4]]
            await asyncio.gather(*(st.__anext__() for st in streams))
            await eng.rewind(ids[5], 2)
            await eng.snapshot(ids[6])
            assert (await eng.stats()).slots_used == 10 + 8
            for s in ids:
                await eng.close_session(s)
            st = await eng.stats()
            assert st.active_sessions == 0 and st.slots_used == 0 and st.running_completions == 0
            assert not any(rt.work or rt.completions for rt in eng.core._runtimes.values())
            with pytest.raises(NotFound):
                await eng.append(ids[0], 5, "x")
            # a reused slot (and a reused scratch slot) starts from the zero state, not its last owner's
            lm = eng.repository.get()
            fresh = (await eng.open_session()).session_id
            assert (await eng.stats()).slots_used == 1
            pred = await eng.append(fresh, 0, "abc")
            assert_prediction_matches(lm, pred, offline_probs(lm, "abc")[-1], 5)

    run(body)


def test_coalescing_each_append_gets_its_answer(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            lm = eng.repository.get()
            s = (await eng.open_session()).session_id
            await eng.append(s, 0, "start ")
            before = (await eng.stats()).iterations
            pieces = ["a", "bc", "d", "efg", "h"]
            offsets = [6, 7, 9, 10, 13]
            preds = await asyncio.gather(*(eng.append(s, o, p) for o, p in zip(offsets, pieces, strict=True)))
            assert (await eng.stats()).iterations - before == 1  # all five in one prefill row
            probs = offline_probs(lm, "start abcdefgh")
            for o, p, pred in zip(offsets, pieces, preds, strict=True):
                assert pred.position == o + len(p)
                assert_prediction_matches(lm, pred, probs[o + len(p) - 1], 5)
            # only_last: earlier ones are superseded, the last one answers
            opts = AppendOptions(only_last=True)
            preds = await asyncio.gather(*(eng.append(s, 14 + i, "xyz"[i], opts) for i in range(3)))
            assert [p.superseded for p in preds] == [True, True, False]
            assert preds[0].top_k == () and preds[2].position == 17
            assert_prediction_matches(lm, preds[2], offline_probs(lm, "start abcdefghxyz")[-1], 5)

    run(body)


def test_drain_and_stop(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            s = (await eng.open_session()).session_id
            inflight = asyncio.ensure_future(eng.append(s, 0, "x" * 200))
            await asyncio.sleep(0)  # the append is queued first; the completion forks after it
            stream = eng.complete(s, CompletionRequest(max_chars=5))
            await eng.drain()
            assert (await eng.stats()).running_completions == 0
            # everything queued before the drain was answered (only the callers' resumption is left)
            assert (await asyncio.wait_for(inflight, 0.1)).position == 200
            chunks = await asyncio.wait_for(_collect(stream), 0.1)
            # chunks waiting together are handed over as one: count characters, not chunks
            assert len("".join(c.text for c in chunks)) == 5 and chunks[-1].finish_reason == "length"
            with pytest.raises(Unavailable):
                (await eng.open_session())
            assert (await eng.append(s, 200, "y")).position == 201  # existing sessions still work
            await eng.stop()
            assert not eng.running
            assert (await eng.stats()).active_sessions == 1  # answered after stop (a last metrics read)

    run(body)


async def _collect(stream: object) -> list[object]:
    return [c async for c in stream]  # type: ignore[attr-defined]
