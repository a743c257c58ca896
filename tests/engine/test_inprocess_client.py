"""The in-process EngineClient: every op submitted at call time and applied in call order, errors
delivered through the awaitable, owners kept apart, and a cancelled caller never withdraws an
append that was submitted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _engine_helpers import assert_prediction_matches, engine, offline_probs, run
from cellserve.engine.client import EngineClient
from cellserve.engine.inprocess import InProcessEngineClient
from cellserve.engine.types import CompletionRequest, IterationStats
from cellserve.errors import InvalidInput, NotFound, OffsetConflict


def test_ops_apply_in_call_order_and_errors_come_through_the_awaitable(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            client: EngineClient = InProcessEngineClient(eng)
            lm = eng.repository.get()
            seen: list[IterationStats] = []
            remove = client.add_stats_listener(seen.append)
            sid = (await client.open_session("alice")).session_id
            # submitted back to back without awaiting: append, rewind, append, snapshot, close
            a1 = client.append("alice", sid, 0, "hello")
            rw = client.rewind("alice", sid, 2)
            a2 = client.append("alice", sid, 3, "p")
            snap = client.snapshot("alice", sid)
            info = await client.get_session("alice", sid)
            assert info.position == 4  # what the next append must carry, counting queued ops
            closed = client.close_session("alice", sid)
            p1, r, p2, blob, _ = await asyncio.gather(a1, rw, a2, snap, closed)
            assert (p1.position, r.position, p2.position) == (5, 3, 4) and blob
            assert_prediction_matches(lm, p2, offline_probs(lm, "help")[-1], 5)
            with pytest.raises(NotFound):  # closed after everything before it was applied
                await client.get_session("alice", sid)
            assert seen and sum(st.rows for st in seen) >= 3
            remove()
            # errors raised at submission come through the awaitable, not the call
            bad = client.append("alice", "0" * 32, 0, "x")
            with pytest.raises(NotFound):
                await bad
            stream = client.complete("alice", "0" * 32, CompletionRequest())
            with pytest.raises(NotFound):
                await stream.__anext__()
            await stream.aclose()

    run(body)


def test_owners_are_apart_and_a_cancelled_caller_withdraws_nothing(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            client = InProcessEngineClient(eng)
            sid = (await client.open_session("alice")).session_id
            with pytest.raises(NotFound):  # another tenant's session is a missing one
                await client.append("bob", sid, 0, "x")
            waiter = asyncio.ensure_future(client.append("alice", sid, 0, "abc"))  # submitted now
            waiter.cancel()  # the caller goes away at once
            with pytest.raises(asyncio.CancelledError):
                await waiter
            with pytest.raises(OffsetConflict) as e:  # "abc" was still accepted...
                await client.append("alice", sid, 0, "zzz")
            assert e.value.expected == 3
            assert (await client.append("alice", sid, 3, "d")).position == 4  # ...and applied once
            with pytest.raises(InvalidInput):
                await client.append("alice", sid, 4, "")

    run(body)


def test_health_counts_the_asking_owners_sessions(model_dir: Path) -> None:
    """The per-tenant session quota reads this count through the EngineClient."""

    async def body() -> None:
        async with engine(model_dir) as eng:
            client = InProcessEngineClient(eng)
            a1 = (await client.open_session("alice")).session_id
            await client.open_session("alice")
            await client.open_session("bob")
            assert (await client.health("alice")).owner_sessions == 2
            assert (await client.health("bob")).owner_sessions == 1
            assert (await client.health("carol")).owner_sessions == 0
            await client.close_session("alice", a1)
            assert (await client.health("alice")).owner_sessions == 1
            blob = await client.snapshot("bob", (await client.open_session("bob")).session_id)
            await client.resume("bob", blob)
            assert (await client.health("bob")).owner_sessions == 3

    run(body)
