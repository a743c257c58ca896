"""The two-tenant fairness workload: a greedy tenant pastes at full speed on several streams
while another tenant types; what the typist's keystrokes wait is the tenant-then-session
round-robin, measured.

The server runs with a tokens file of two tenants (``greedy`` and ``typist``); the greedy
tenant's character quota is lifted so that only the scheduler stands between it and the
typist. The typist types one character every ``interval_s`` and waits for each answer: first
alone for ``alone_s`` (its idle p99), then for ``window_s`` while ``greedy_streams`` streams of
the greedy tenant each keep ``depth`` pastes of ``paste_chars`` characters in flight. Reported:
both p99s and their ratio (target: within 2x).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from ..tokens import new_token
from .loadgen import percentiles, source_text

OPEN_TIMEOUT_S = 60.0
Req = svc.SessionRequest
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Tenants:
    greedy_streams: int = 4
    depth: int = 4  # pastes in flight per greedy stream
    paste_chars: int = 1024
    interval_s: float = 0.05  # the typist's pace
    alone_s: float = 5.0
    window_s: float = 10.0

    @classmethod
    def quick(cls) -> Tenants:
        return cls(greedy_streams=2, depth=2, paste_chars=256, alone_s=1.0, window_s=2.0)


def write_tokens_file(path: Path) -> dict[str, str]:
    """A tokens file for the two tenants; returns each tenant's token."""
    raw: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for name in ("greedy", "typist"):
        token, stored = new_token()
        raw[name] = token
        entry: dict[str, Any] = {"name": name, "tokens": [stored]}
        if name == "greedy":  # no bucket in the way: the scheduler alone keeps it fair
            entry["quota"] = {"chars_per_s": 1e9, "chars_burst": 1_000_000_000}
        entries.append(entry)
    path.write_text(json.dumps({"tenants": entries}))
    return raw


def _md(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _append(rid: int, offset: int, text: str) -> svc.SessionRequest:
    return Req(request_id=rid, append=Req.Append(offset=offset, input=types.Input(text=text), top_k=5))


async def _open(stub: rpc.CellserveServiceStub, md: Metadata) -> Any:
    call = stub.Session(metadata=md)
    await call.write(Req(request_id=1, open=Req.Open()))
    r = await asyncio.wait_for(call.read(), OPEN_TIMEOUT_S)
    if r is grpc.aio.EOF or not r.HasField("opened"):
        raise RuntimeError(f"open failed: {r}")
    return call


async def _greedy(stub: rpc.CellserveServiceStub, md: Metadata, w: Tenants, text: str, stop: asyncio.Event) -> int:
    """One greedy stream: ``depth`` pastes always in flight until ``stop``; returns its chars."""
    call = await _open(stub, md)
    offset, rid, inflight = 0, 1, 0
    while not stop.is_set() or inflight:
        while inflight < w.depth and not stop.is_set():
            rid += 1
            start = offset % max(1, len(text) - w.paste_chars)
            await call.write(_append(rid, offset, text[start : start + w.paste_chars]))
            offset += w.paste_chars
            inflight += 1
        r = await call.read()
        if r is grpc.aio.EOF:
            raise RuntimeError("a greedy stream ended early")
        if r.HasField("error"):
            raise RuntimeError(f"greedy append refused: {r.error.message}")
        inflight -= 1
    await call.done_writing()
    return offset


async def _type(stub: rpc.CellserveServiceStub, md: Metadata, w: Tenants, text: str, seconds: float) -> list[float]:
    call = await _open(stub, md)
    lat: list[float] = []
    offset, rid = 0, 1
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        due = time.perf_counter() + w.interval_s
        rid += 1
        sent = time.perf_counter()
        await call.write(_append(rid, offset, text[offset % len(text)]))
        r = await call.read()
        if r is grpc.aio.EOF or r.HasField("error"):
            raise RuntimeError(f"the typist's keystroke failed: {r}")
        lat.append(time.perf_counter() - sent)
        offset += 1
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
    await call.done_writing()
    return lat


async def _run(target: str, tokens: dict[str, str], w: Tenants) -> dict[str, Any]:
    text = source_text()
    async with grpc.aio.insecure_channel(target) as ch_t, grpc.aio.insecure_channel(target) as ch_g:
        typist, greedy = rpc.CellserveServiceStub(ch_t), rpc.CellserveServiceStub(ch_g)
        alone = await _type(typist, _md(tokens["typist"]), w, text, w.alone_s)
        stop = asyncio.Event()
        floods = [
            asyncio.create_task(_greedy(greedy, _md(tokens["greedy"]), w, text, stop)) for _ in range(w.greedy_streams)
        ]
        t0 = time.perf_counter()
        try:
            loaded = await _type(typist, _md(tokens["typist"]), w, text, w.window_s)
        finally:
            stop.set()
        chars = sum(await asyncio.gather(*floods))
        seconds = time.perf_counter() - t0
    idle_p, loaded_p = percentiles(alone), percentiles(loaded)
    p99_i, p99_l = idle_p.get("p99"), loaded_p.get("p99")
    return {
        "workload": asdict(w),
        "typist_alone_ms": idle_p,
        "typist_loaded_ms": loaded_p,
        "keystrokes": {"alone": len(alone), "loaded": len(loaded)},
        "greedy_chars_per_s": chars / seconds if seconds > 0 else None,
        "p99_ratio": p99_l / p99_i if p99_i and p99_l is not None else None,
    }


def run_tenants(target: str, tokens: dict[str, str], w: Tenants) -> dict[str, Any]:
    """Runs the workload against the server at ``target`` started with ``write_tokens_file``."""
    return asyncio.run(_run(target, tokens, w))
