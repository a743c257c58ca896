"""The gate inspector's admission: one run at a time, a bounded queue, RESOURCE_EXHAUSTED
beyond it, and a cancelled caller's run still counted until its thread ends."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from cellserve.api import gates
from cellserve.config import Settings
from cellserve.errors import CapacityExceeded
from cellserve.gate_report import GateQuery, GateReport
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc


def test_queue_is_bounded_and_cancelled_runs_still_count(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    started: list[str] = []

    def blocking_run(lookup: Any, query: GateQuery) -> GateReport:
        started.append(query.text)
        assert release.wait(60)
        return GateReport("m", "lstm", 0, (), ())

    monkeypatch.setattr(gates, "run_query", blocking_run)
    inspector = gates.GateInspector(lambda name: None, Settings())  # type: ignore[arg-type,return-value]

    def request(text: str) -> svc.InspectGatesRequest:
        req = svc.InspectGatesRequest()
        req.input.text = text
        return req

    async def main() -> None:
        first = asyncio.ensure_future(inspector.inspect(request("a")))
        while not started:  # the first run is in its thread
            await asyncio.sleep(0.01)
        first.cancel()  # its caller gives up; the thread still runs and still holds the slot
        waiting = [asyncio.ensure_future(inspector.inspect(request(str(k)))) for k in range(gates.MAX_WAITING)]
        await asyncio.sleep(0)  # let them queue
        with pytest.raises(CapacityExceeded, match="too many gate inspections"):
            await inspector.inspect(request("one too many"))
        assert started == ["a"]  # nobody ran beside the cancelled caller's thread
        release.set()
        results = await asyncio.wait_for(asyncio.gather(*waiting), 60)
        assert [r.model for r in results] == ["m"] * gates.MAX_WAITING
        assert sorted(started[1:]) == sorted(str(k) for k in range(gates.MAX_WAITING))

    asyncio.run(asyncio.wait_for(main(), 120))
