"""Sessions partitioned among core processes (engine/shards.py) and the frontend's routing
over them (multiproc/routing.py): ids name their core, every call on a session goes there, and
what the cores report combines into one engine's figures."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from cellserve.engine.admission import Limits
from cellserve.engine.shards import Shard, combined_health, combined_stats, core_of, sequence_core
from cellserve.engine.types import (
    CompletionRequest,
    EngineHealth,
    EngineStats,
    ModelTotals,
    SuggestRequest,
)
from cellserve.multiproc.routing import RoutingEngineClient


def test_a_core_mints_only_ids_that_name_it() -> None:
    for cores in (1, 2, 3, 8):
        for index in range(cores):
            shard = Shard(index, cores)
            ids = {shard.mint_id() for _ in range(50)}
            assert len(ids) == 50
            assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
            assert {core_of(i, cores) for i in ids} == {index}


def test_core_of_is_a_stable_hash_every_process_agrees_on() -> None:
    sid = "0123456789abcdef0123456789abcdef"
    digest = hashlib.blake2b(sid.encode(), digest_size=8).digest()
    assert core_of(sid, 5) == int.from_bytes(digest, "little") % 5  # not Python's salted hash()
    assert core_of(sid, 1) == 0
    assert {core_of(Shard(0, 1).mint_id(), 4) for _ in range(200)} == {0, 1, 2, 3}  # spread
    # a KServe sequence's core depends on owner, model and id alike
    seen = [sequence_core(o, m, s, 4) for o in ("a", "b") for m in ("x", "y") for s in ("1:7", "2:7", "1:8")]
    assert set(seen) == {0, 1, 2, 3}
    assert sorted(seen.count(c) for c in range(4))[0] >= 1
    # consecutive integer ids (perf_analyzer's) spread evenly
    counts = [0] * 4
    for n in range(400):
        counts[sequence_core("", "tiny-lstm", f"1:{n}", 4)] += 1
    assert min(counts) > 60, counts
    assert sequence_core("a", "x", "1:7", 4) == sequence_core("a", "x", "1:7", 4)


def test_a_shard_must_be_one_of_its_cores() -> None:
    with pytest.raises(ValueError, match="not one of 2 cores"):
        Shard(2, 2)


def test_statistics_of_several_cores_add_up() -> None:
    a = EngineStats(
        active_sessions=3, slots_used=4, iterations=10, chars_processed={"step": 5},
        session_events={"opened": 3}, speculation={"hits": 1},
        models=(ModelTotals("m", 2, 3, 0.5, 4, 1.0),),
    )  # fmt: skip
    b = EngineStats(
        active_sessions=2, slots_used=1, iterations=7, chars_processed={"step": 1, "prefill": 9},
        session_events={"opened": 2, "closed": 1},
        models=(ModelTotals("m", 1, 1, 0.25, 2, 0.5), ModelTotals("n", 1, 1, 0.0, 1, 0.1)),
    )  # fmt: skip
    c = combined_stats([a, b])
    assert (c.active_sessions, c.slots_used, c.iterations) == (5, 5, 17)
    assert c.chars_processed == {"step": 6, "prefill": 9}
    assert c.session_events == {"opened": 5, "closed": 1} and c.speculation == {"hits": 1}
    assert c.models == (ModelTotals("m", 3, 4, 0.75, 6, 1.5), ModelTotals("n", 1, 1, 0.0, 1, 0.1))
    assert combined_stats([a]) is a


def test_health_serves_only_while_every_core_serves() -> None:
    up, down = EngineHealth(True, 2, 3, 10, 1, owner_sessions=4), EngineHealth(False, 1, 1, 10, 0, owner_sessions=5)
    assert combined_health([up, up]) == EngineHealth(True, 4, 6, 20, 2, owner_sessions=4)
    assert not combined_health([up, down]).serving
    assert combined_health([up, down]).owner_sessions == 5


class FakeCore:
    """Records what the routing client asked of it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.recorder = object()

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> Any:
            self.calls.append((name, args))
            fut = asyncio.get_running_loop().create_future()
            if name == "health":
                fut.set_result(EngineHealth(True, self.index + 1, 0, 5, 0))
            elif name == "stats":
                fut.set_result(EngineStats(active_sessions=self.index + 1))
            elif name == "export_sessions":
                fut.set_result([f"record-{self.index}"])
            else:
                fut.set_result(self.index)
            return fut

        return call


def test_every_call_on_a_session_goes_to_the_core_its_id_names() -> None:
    asyncio.run(_routes())


async def _routes() -> None:
    cores = [FakeCore(i) for i in range(3)]
    client = RoutingEngineClient(cores)  # type: ignore[arg-type]
    for sid in (Shard(i, 3).mint_id() for i in (0, 1, 2, 2, 1)):
        want = core_of(sid, 3)
        assert await client.append("o", sid, 0, "x") == want
        assert await client.get_session("o", sid) == want
        assert await client.rewind("o", sid, 1) == want
        assert await client.snapshot("o", sid) == want
        assert await client.close_session("o", sid) == want
        assert await client.suggest("o", sid, SuggestRequest()) == want
        client.complete("o", sid, CompletionRequest())
        assert cores[want].calls[-1][0] == "complete"
    # new sessions go round the cores; a KServe START to its sequence's core
    assert [await client.open_session("o") for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    for seq in ("1:5", "1:6", "2:x"):
        home = sequence_core("o", "m", seq, 3)
        assert await client.open_session("o", "m", sequence=seq) == home
        assert await client.bind_sequence("o", "m", seq, "s") == home
        assert await client.find_sequence("o", "m", seq) == home
    # stream leases on core 0 alone (exact caps); limits to every core
    assert await client.open_stream("o") == 0
    client.close_stream("o", 1)
    assert [c for c, _ in cores[0].calls[-2:]] == ["open_stream", "close_stream"]
    assert not any(c in ("open_stream", "close_stream") for core in cores[1:] for c, _ in core.calls)
    lim = Limits(1, 1, 1, 1.0, 1)
    client.set_limits("o", lim)
    assert all(core.calls[-1] == ("set_limits", ("o", lim)) for core in cores)
    # every core answers health, statistics and exports
    assert (await client.health("o")).active_sessions == 6
    assert (await client.stats("o")).active_sessions == 6
    assert await client.export_sessions(None) == ["record-0", "record-1", "record-2"]
