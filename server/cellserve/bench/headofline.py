"""The head-of-line workload: one client floods its stream with long pieces while a bystander
types; what the bystander's keystrokes wait is the scheduler's fairness, measured.

The heavy stream pipelines ``pastes`` appends of ``paste_chars`` characters, then
``gate_pastes`` more with ``want_gates`` (the slow reference-cell path), all without waiting.
The bystander, on a stream of its own, types one character every ``interval_s`` and waits
for each answer, from just before the flood starts until the heavy stream's last answer.
Reported: the bystander's latency percentiles (p99 and max are the targets) and how long the
flood took.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .loadgen import percentiles, source_text

OPEN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class HeadOfLine:
    pastes: int = 16
    paste_chars: int = 4096
    gate_pastes: int = 2
    interval_s: float = 0.05  # the bystander's typing pace
    lead_s: float = 0.5  # the bystander types alone this long first (its quiet baseline)
    max_s: float = 600.0  # give up on the flood after this long

    @classmethod
    def quick(cls) -> HeadOfLine:
        return cls(pastes=2, paste_chars=1024, gate_pastes=1, lead_s=0.2, max_s=120.0)


Req = svc.SessionRequest


async def _open(stub: rpc.CellserveServiceStub) -> Any:
    call = stub.Session()
    await call.write(Req(request_id=1, open=Req.Open()))
    r = await asyncio.wait_for(call.read(), OPEN_TIMEOUT_S)
    if r is grpc.aio.EOF or not r.HasField("opened"):
        raise RuntimeError(f"open failed: {r}")
    return call


def _append(rid: int, offset: int, text: str, *, gates: bool = False) -> svc.SessionRequest:
    return Req(
        request_id=rid,
        append=Req.Append(offset=offset, input=types.Input(text=text), top_k=5, want_gates=gates),
    )


async def _flood(stub: rpc.CellserveServiceStub, w: HeadOfLine, text: str) -> dict[str, Any]:
    call = await _open(stub)
    pieces = [
        (text[i * w.paste_chars : (i + 1) * w.paste_chars], i >= w.pastes) for i in range(w.pastes + w.gate_pastes)
    ]
    t0 = time.perf_counter()
    offset = 0
    for rid, (piece, gates) in enumerate(pieces, start=2):
        await call.write(_append(rid, offset, piece, gates=gates))
        offset += len(piece)
    errors = 0
    for _ in pieces:
        r = await call.read()
        if r is grpc.aio.EOF:
            raise RuntimeError("the heavy stream ended early")
        errors += r.HasField("error")
    seconds = time.perf_counter() - t0
    await call.done_writing()
    return {"seconds": seconds, "chars": offset, "errors": errors}


async def _bystander(
    stub: rpc.CellserveServiceStub, w: HeadOfLine, text: str, flooding: asyncio.Event, stop: asyncio.Event
) -> dict[str, Any]:
    call = await _open(stub)
    lat: list[float] = []  # keystrokes sent while the flood ran
    quiet: list[float] = []  # before it: the baseline
    offset, rid, errors = 0, 1, 0
    while not stop.is_set():
        due = time.perf_counter() + w.interval_s
        rid += 1
        during = flooding.is_set()
        sent = time.perf_counter()
        await call.write(_append(rid, offset, text[offset % len(text)]))
        r = await call.read()
        if r is grpc.aio.EOF:
            raise RuntimeError("the bystander's stream ended early")
        if r.HasField("error"):
            errors += 1
        else:
            (lat if during else quiet).append(time.perf_counter() - sent)
            offset += 1
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
    await call.done_writing()
    return {
        "latency_ms": percentiles(lat),
        "keystrokes": len(lat),
        "quiet_latency_ms": percentiles(quiet),
        "errors": errors,
    }


async def _run(target: str, w: HeadOfLine) -> dict[str, Any]:
    text = source_text()
    while len(text) < (w.pastes + w.gate_pastes) * w.paste_chars:
        text += text
    async with grpc.aio.insecure_channel(target) as ch1, grpc.aio.insecure_channel(target) as ch2:
        flooding, stop = asyncio.Event(), asyncio.Event()
        typing = asyncio.create_task(_bystander(rpc.CellserveServiceStub(ch1), w, text, flooding, stop))
        await asyncio.sleep(w.lead_s)
        flooding.set()
        try:
            flood = await asyncio.wait_for(_flood(rpc.CellserveServiceStub(ch2), w, text), w.max_s)
        finally:
            stop.set()
        bystander = await typing
    return {"workload": asdict(w), "flood": flood, "bystander": bystander}


def run_head_of_line(target: str, w: HeadOfLine) -> dict[str, Any]:
    """Runs the workload against the server at ``target`` (host:port) and returns its results."""
    return asyncio.run(_run(target, w))
