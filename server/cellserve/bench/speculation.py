"""Speculative keystrokes at a human pace: the hit rate, and what speculation costs.

One session types Python source, then English prose, at ``rate`` keystrokes per second with
jitter (each gap uniform within ``1 +- jitter`` of the mean), waiting for each answer. The
hit rate is read from the server's own counters (``cellserve_speculation_keystrokes_total``
on /metrics, before and after: hit / all one-character appends); the typist's latencies are
measured at the client. The suite runs this against a server with speculation on and one with
it off, beside closed-loop N=1 and N=256, and the same typist against the echo peer (the
transport alone at the same pace: a server idle for 125 ms between keystrokes answers slower
than one kept busy, echo included, so a closed-loop echo is not the baseline for a paced
typist). One run reports the hit rate, the typist's p50 over echo's with and without
speculation, and the throughput ratio at N=256 (speculation must cost nothing there: it only
runs when nothing is queued).
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .loadgen import percentiles, source_text

RESULTS = ("hit", "miss", "unguessed")
POLL_S = 1.2  # the engine's counters reach /metrics on a 0.5 s poll: wait two polls
Req = svc.SessionRequest


@dataclass(frozen=True)
class Typing:
    rate: float = 8.0  # keystrokes per second, on average
    jitter: float = 0.5  # each gap uniform in [(1 - jitter) / rate, (1 + jitter) / rate]
    keystrokes: int = 240  # per text (30 s at 8/s)
    top_k: int = 5

    @classmethod
    def quick(cls) -> Typing:
        return cls(keystrokes=40)


def prose_text() -> str:
    """English prose to type: the documentation of a few standard modules."""
    import argparse
    import collections
    import json
    import logging

    docs = [m.__doc__ or "" for m in (argparse, json, logging, collections)]
    return " ".join(" ".join(d.split()) for d in docs)


def speculation_counts(metrics_target: str) -> dict[str, float]:
    """The server's one-character appends by speculation result, as /metrics shows them."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{metrics_target}/metrics", timeout=10) as response:
        body = response.read().decode()
    out = dict.fromkeys(RESULTS, 0.0)
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == "cellserve_speculation_keystrokes_total" and s.labels.get("result") in out:
                out[s.labels["result"]] = float(s.value)
    return out


def hit_rate(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Hits over every one-character append between two readings (None: none were counted)."""
    delta = {k: after[k] - before[k] for k in RESULTS}
    total = sum(delta.values())
    return delta["hit"] / total if total > 0 else None


async def _type(target: str, text: str, w: Typing, rng: random.Random) -> list[float]:
    lat: list[float] = []
    async with grpc.aio.insecure_channel(target) as ch:
        call = rpc.CellserveServiceStub(ch).Session()
        await call.write(Req(request_id=1, open=Req.Open()))
        r = await call.read()
        if r is grpc.aio.EOF or not r.HasField("opened"):
            raise RuntimeError(f"open failed: {r}")
        for i in range(w.keystrokes):
            gap = (1.0 + rng.uniform(-w.jitter, w.jitter)) / w.rate
            sent = time.perf_counter()
            append = Req.Append(offset=i, input=types.Input(text=text[i % len(text)]), top_k=w.top_k)
            await call.write(Req(request_id=i + 2, append=append))
            r = await call.read()
            if r is grpc.aio.EOF or r.HasField("error"):
                raise RuntimeError(f"a keystroke failed: {r}")
            lat.append(time.perf_counter() - sent)
            await asyncio.sleep(max(0.0, sent + gap - time.perf_counter()))
        await call.done_writing()
    return lat


def run_typist(target: str, metrics_target: str, w: Typing, seed: int = 0) -> dict[str, Any]:
    """The typist on Python source and on prose: hit rate and latencies per text. Without
    ``metrics_target`` (a peer such as echo, the same-pace baseline): latencies only."""
    out: dict[str, Any] = {"workload": asdict(w)}
    rng = random.Random(seed)
    for name, text in (("python", source_text()), ("prose", prose_text())):
        before = speculation_counts(metrics_target) if metrics_target else None
        lat = asyncio.run(_type(target, text, w, rng))
        out[name] = {"hit_rate": None, "counts": dict.fromkeys(RESULTS, 0.0), "latency_ms": percentiles(lat)}
        if before is not None:
            time.sleep(POLL_S)
            after = speculation_counts(metrics_target)
            out[name]["hit_rate"] = hit_rate(before, after)
            out[name]["counts"] = {k: after[k] - before[k] for k in RESULTS}
    return out
