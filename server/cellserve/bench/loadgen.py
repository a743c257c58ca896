"""The load generator: worker processes driving concurrent sessions over the raw generated
stubs (never the SDK, never torch), one ``CellserveService.Session`` stream per session.

Workloads (``Workload.kind``):

- ``closed``: each session sends a piece and awaits its Prediction before sending the next;
- ``open``: each session sends pieces at ``rate`` per second on average (exponential think
  time), without waiting for answers (the stream pipelines them); latency is measured from
  the *scheduled* send time, so a server that falls behind is charged for it (no coordinated
  omission);
- ``complete``: each session asks for a greedy completion of ``complete_chars`` characters,
  reads it to the end, and asks again (closed loop); the unit is a generated character;
- ``open_sessions``: unary OpenSession calls only (the memory scenario);
- ``sequences``: perf_analyzer's ``--streaming --sequence-length`` traffic, on the KServe or the
  native surface (``bench/sequences.py``), to compare the two tools on the same sequences.

A piece is one character, or with probability ``paste_prob`` a paste of ``paste_min`` to
``paste_max`` characters. Keystrokes come from a Python source text, every session at its own
place in it.

Timing: all processes share CLOCK_MONOTONIC (``loop.time()``). The parent hands every worker
the same (start, measure, end) instants; answers arriving in [measure, end) count. A session
with no answer in the window is *starved*; ``max_gap_s`` is the longest any session waited
between answers (window edges included).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .sequences import kserve_sequences, native_sequences

OPEN_TIMEOUT_S = 60.0
END_GRACE_S = 1.0  # after the window: sessions close cleanly; stragglers are cancelled then
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


@dataclass(frozen=True)
class Workload:
    kind: str  # "closed" | "open" | "complete" | "open_sessions" | "sequences"
    sessions: int
    warmup_s: float = 1.0
    window_s: float = 5.0
    rate: float = 0.0  # open loop: pieces per second per session
    paste_prob: float = 0.0
    paste_min: int = 100
    paste_max: int = 300
    top_k: int = 5
    complete_chars: int = 32
    seed: int = 0
    model: str = ""  # "": the server's default model
    surface: str = "native"  # sequences: "native" | "kserve"
    sequence_length: int = 20  # sequences: requests per sequence, one keystroke each
    sequence_text: str = ""  # sequences: character i is request i's keystroke


@dataclass
class WorkerResult:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    answers: list[int] = field(default_factory=list)  # per session, in the window
    max_gap: list[float] = field(default_factory=list)  # per session
    chars: int = 0  # characters appended (or generated, for completions) in the window
    requests: int = 0  # answered requests in the window
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    unanswered: int = 0  # requests still waiting when the window ended
    cpu_s: float = 0.0  # this process's CPU in the window
    opened: int = 0
    open_failures: int = 0


def source_text() -> str:
    """Python source to type: the stdlib (what the default model was trained on)."""
    import argparse as _a
    import asyncio as _b
    import os as _c

    parts = []
    for mod in (_c, _a, _b.base_events):
        if mod.__file__:
            parts.append(Path(mod.__file__).read_text(encoding="utf-8", errors="replace"))
    return "\n".join(parts)


# ---- one session ------------------------------------------------------------------------------


class _Session:
    def __init__(self, w: Workload, index: int, text: str, res: WorkerResult, clock: Callable[[], float]) -> None:
        self.w = w
        self.index = index
        self.text = text
        self.pos = (index * 7919) % max(1, len(text) - 400)
        self.rng = random.Random(w.seed * 1_000_003 + index)
        self.res = res
        self.clock = clock
        self.call: Any = None
        self.offset = 0
        self.rid = 0
        self.answers = 0
        self.last_answer = 0.0
        self.max_gap = 0.0
        self.t_measure = self.t_end = 0.0

    def next_piece(self) -> tuple[str, str]:
        w, n = self.w, 1
        if w.paste_prob and self.rng.random() < w.paste_prob:
            n = self.rng.randint(w.paste_min, w.paste_max)
        if self.pos + n >= len(self.text):
            self.pos = 0
        piece = self.text[self.pos : self.pos + n]
        self.pos += n
        return ("key" if n == 1 else "paste"), piece

    def append(self, piece: str) -> svc.SessionRequest:
        self.rid += 1
        return svc.SessionRequest(
            request_id=self.rid,
            append=svc.SessionRequest.Append(offset=self.offset, input=types.Input(text=piece), top_k=self.w.top_k),
        )

    async def open(self, stub: rpc.CellserveServiceStub) -> None:
        self.call = stub.Session()
        self.rid += 1
        await self.call.write(svc.SessionRequest(request_id=self.rid, open=svc.SessionRequest.Open(model=self.w.model)))
        r = await self.call.read()
        if r is grpc.aio.EOF or not r.HasField("opened"):
            raise RuntimeError(f"open failed: {r}")

    def answered(self, now: float, sent: float, kind: str, chars: int) -> None:
        if self.t_measure <= now < self.t_end:
            self.res.latencies.setdefault(kind, []).append(now - sent)
            self.res.requests += 1
            self.res.chars += chars
            self.answers += 1
            self.max_gap = max(self.max_gap, now - max(self.last_answer, self.t_measure))
        self.last_answer = now

    def error(self, r: svc.SessionResponse) -> None:
        self.res.errors += 1
        if len(self.res.error_samples) < 5:
            self.res.error_samples.append(f"{r.error.code}: {r.error.message}")
        if r.error.HasField("expected_offset"):
            self.offset = r.error.expected_offset

    def error_text(self, message: str) -> None:
        self.res.errors += 1
        if len(self.res.error_samples) < 5:
            self.res.error_samples.append(message)

    def finish(self) -> None:
        end = self.t_end
        self.max_gap = max(self.max_gap, end - max(self.last_answer, self.t_measure))
        self.res.answers.append(self.answers)
        self.res.max_gap.append(self.max_gap)

    # -- the loops -------------------------------------------------------------------------
    async def closed(self) -> None:
        while self.clock() < self.t_end:
            kind, piece = self.next_piece()
            sent = self.clock()
            await self.call.write(self.append(piece))
            r = await self.call.read()
            if r is grpc.aio.EOF:
                raise RuntimeError("stream ended")
            if r.HasField("error"):
                self.error(r)
                continue
            self.offset += len(piece)
            self.answered(self.clock(), sent, kind, len(piece))

    async def open_loop(self) -> None:
        pending: dict[int, tuple[float, str, int]] = {}

        async def writer() -> None:
            t = max(self.clock(), self.t_measure - self.w.warmup_s) + self.rng.expovariate(self.w.rate)
            while t < self.t_end:
                delay = t - self.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                kind, piece = self.next_piece()
                req = self.append(piece)
                pending[self.rid] = (t, kind, len(piece))
                self.offset += len(piece)  # pipelined: the next piece goes right after this one
                await self.call.write(req)
                t += self.rng.expovariate(self.w.rate)

        async def reader() -> None:
            while True:
                r = await self.call.read()
                if r is grpc.aio.EOF:
                    return
                t, kind, n = pending.pop(r.request_id, (0.0, "", 0))
                if r.HasField("error"):
                    self.error(r)
                    continue
                self.answered(self.clock(), t, kind, n)

        rd = asyncio.create_task(reader())
        try:
            await writer()
            await asyncio.wait([rd], timeout=max(0.0, self.t_end - self.clock()))
        finally:
            self.res.unanswered += len(pending)
            rd.cancel()

    async def complete(self) -> None:
        while self.clock() < self.t_end:
            self.rid += 1
            sent = self.clock()
            first = 0.0
            await self.call.write(
                svc.SessionRequest(
                    request_id=self.rid, complete=svc.SessionRequest.Complete(max_chars=self.w.complete_chars)
                )
            )
            while True:
                r = await self.call.read()
                if r is grpc.aio.EOF:
                    raise RuntimeError("stream ended")
                if r.HasField("error"):
                    self.error(r)
                    break
                now = self.clock()
                c = r.completion_chunk
                if self.t_measure <= now < self.t_end:
                    self.res.chars += len(c.text)
                    self.answers += 1
                    self.max_gap = max(self.max_gap, now - max(self.last_answer, self.t_measure))
                if not first:
                    first = now
                    if self.t_measure <= now < self.t_end:
                        self.res.latencies.setdefault("first_char", []).append(now - sent)
                self.last_answer = now
                if c.done:
                    if self.t_measure <= now < self.t_end:
                        self.res.latencies.setdefault("completion", []).append(now - sent)
                        self.res.requests += 1
                    break

    async def close(self) -> None:
        if self.call is None:
            return
        try:
            self.rid += 1
            await self.call.write(svc.SessionRequest(request_id=self.rid, close=svc.SessionRequest.Close()))
            await self.call.done_writing()
            while await self.call.read() is not grpc.aio.EOF:
                pass
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass


# ---- one worker process ------------------------------------------------------------------------


def worker_main(target: str, w: Workload, first: int, count: int, conn: Connection) -> None:
    try:
        asyncio.run(_worker(target, w, first, count, conn))
    except BaseException as e:  # report, never hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
        raise


async def _worker(target: str, w: Workload, first: int, count: int, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    clock = loop.time
    res = WorkerResult()
    n_channels = max(1, min(4, count // 64))
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(n_channels)
    ]
    stubs = [rpc.CellserveServiceStub(ch) for ch in channels]
    try:
        if w.kind == "open_sessions":
            await _open_unary(stubs, count, res)
            conn.send(("done", asdict(res)))
            return
        text = source_text()
        sessions = [_Session(w, first + i, text, res, clock) for i in range(count)]
        sem = asyncio.Semaphore(64)

        async def open_one(s: _Session, stub: rpc.CellserveServiceStub) -> None:
            async with sem:
                await s.open(stub)

        if w.kind != "sequences":  # those open a session per sequence
            await asyncio.wait_for(
                asyncio.gather(*(open_one(s, stubs[i % n_channels]) for i, s in enumerate(sessions))), OPEN_TIMEOUT_S
            )
        conn.send(("ready", None))
        t_start, t_measure, t_end = await loop.run_in_executor(None, conn.recv)
        for s in sessions:
            s.t_measure, s.t_end = t_measure, t_end
        cpu0 = [0.0]
        loop.call_at(t_measure, lambda: cpu0.__setitem__(0, time.process_time()))
        cpu1 = [0.0]
        loop.call_at(t_end, lambda: cpu1.__setitem__(0, time.process_time()))
        await asyncio.sleep(max(0.0, t_start - clock()))
        body: dict[str, Callable[[_Session], Coroutine[Any, Any, None]]] = {
            "closed": _Session.closed,
            "open": _Session.open_loop,
            "complete": _Session.complete,
            "sequences": lambda s: (
                kserve_sequences(s, channels[s.index % n_channels])
                if w.surface == "kserve"
                else native_sequences(s, stubs[s.index % n_channels])
            ),
        }
        tasks = [asyncio.create_task(body[w.kind](s)) for s in sessions]
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, t_end - clock()))
        # sessions still waiting for an answer at the end of the window
        res.unanswered += sum(1 for t in pending) if w.kind not in ("open", "sequences") else 0
        if pending:
            _, pending = await asyncio.wait(pending, timeout=END_GRACE_S)
        for t in pending:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                res.errors += 1
                if len(res.error_samples) < 5:
                    res.error_samples.append(repr(t.exception()))
        await asyncio.sleep(max(0.0, t_end - clock()) + 0.01)
        res.cpu_s = (cpu1[0] or time.process_time()) - cpu0[0]
        for s in sessions:
            s.finish()
        stragglers = {s.index for s, t in zip(sessions, tasks, strict=True) if t in pending}
        await asyncio.wait_for(
            asyncio.gather(
                *(s.close() for s in sessions if s.index not in stragglers and w.surface == "native"),
                return_exceptions=True,
            ),
            10.0,
        )
        for s in sessions:
            if s.index in stragglers and s.call is not None:
                s.call.cancel()
        conn.send(("done", asdict(res)))
    finally:
        for ch in channels:
            await ch.close(grace=None)


async def _open_unary(stubs: list[rpc.CellserveServiceStub], count: int, res: WorkerResult) -> None:
    sem = asyncio.Semaphore(128)

    async def one(i: int) -> None:
        async with sem:
            try:
                await stubs[i % len(stubs)].OpenSession(svc.OpenSessionRequest(), timeout=60)
                res.opened += 1
            except grpc.aio.AioRpcError as e:
                res.open_failures += 1
                if len(res.error_samples) < 5:
                    res.error_samples.append(f"{e.code().name}: {e.details()}")

    await asyncio.gather(*(one(i) for i in range(count)))


# ---- the parent side -----------------------------------------------------------------------------


def percentiles(xs: list[float]) -> dict[str, float]:
    """p50..p99.9 in milliseconds (nearest rank); empty -> {}."""
    if not xs:
        return {}
    s = sorted(xs)
    out = {}
    for p in PERCENTILES:
        k = min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))
        out[f"p{p:g}"] = s[k] * 1e3
    out["mean"] = sum(s) / len(s) * 1e3
    out["max"] = s[-1] * 1e3
    return out


def run_load(target: str, w: Workload, workers: int, server_cpu: Callable[[], float] | None = None) -> dict[str, Any]:
    """Runs ``w`` against ``target`` from ``workers`` processes; returns the merged report."""
    ctx = mp.get_context("spawn")
    workers = max(1, min(workers, w.sessions))
    shares = [w.sessions // workers + (1 if i < w.sessions % workers else 0) for i in range(workers)]
    procs, conns = [], []
    first = 0
    for share in shares:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=worker_main, args=(target, w, first, share, child), daemon=True)
        p.start()
        procs.append(p)
        conns.append(parent)
        first += share
    try:
        if w.kind == "open_sessions":
            t0 = time.monotonic()
            results = [_expect(c, p, "done", 900.0) for c, p in zip(conns, procs, strict=True)]
            return _merge_open(results, time.monotonic() - t0)
        for c, p in zip(conns, procs, strict=True):
            _expect(c, p, "ready", OPEN_TIMEOUT_S + 60.0)
        t_start = time.monotonic() + 0.2
        t_measure = t_start + w.warmup_s
        t_end = t_measure + w.window_s
        for c in conns:
            c.send((t_start, t_measure, t_end))
        cpu0 = cpu1 = 0.0
        if server_cpu is not None:
            time.sleep(max(0.0, t_measure - time.monotonic()))
            cpu0 = server_cpu()
            time.sleep(max(0.0, t_end - time.monotonic()))
            cpu1 = server_cpu()
        results = [_expect(c, p, "done", w.warmup_s + w.window_s + 120.0) for c, p in zip(conns, procs, strict=True)]
        return _merge(w, results, cpu1 - cpu0 if server_cpu is not None else None)
    finally:
        for p in procs:
            p.join(timeout=15)
            if p.is_alive():
                p.kill()
                p.join()


def _expect(conn: Connection, proc: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not conn.poll(0.2):
        if not proc.is_alive() and not conn.poll(0.2):
            raise RuntimeError(f"load generator worker exited (status {proc.exitcode}) before '{what}'")
        if time.monotonic() > deadline:
            raise RuntimeError(f"load generator worker: no '{what}' within {timeout:.0f} s")
    tag, payload = conn.recv()
    if tag != what:
        raise RuntimeError(f"load generator worker failed: {payload}")
    return payload


def _merge(w: Workload, results: list[dict[str, Any]], server_cpu_s: float | None) -> dict[str, Any]:
    lat: dict[str, list[float]] = {}
    for r in results:
        for k, v in r["latencies"].items():
            lat.setdefault(k, []).extend(v)
    answers = [a for r in results for a in r["answers"]]
    gaps = [g for r in results for g in r["max_gap"]]
    requests = sum(r["requests"] for r in results)
    chars = sum(r["chars"] for r in results)
    client_cpu = sum(r["cpu_s"] for r in results)
    main = {"closed": "all", "open": "all", "complete": "completion", "sequences": "all"}[w.kind]
    all_lat = [x for k, v in lat.items() if k in ("key", "paste") for x in v] if main == "all" else lat.get(main, [])
    out: dict[str, Any] = {
        "workload": asdict(w),
        "requests": requests,
        "throughput_rps": requests / w.window_s,
        "chars_per_s": chars / w.window_s,
        "latency_ms": percentiles(all_lat),
        "latency_ms_by_kind": {k: percentiles(v) for k, v in lat.items()},
        "errors": sum(r["errors"] for r in results),
        "error_samples": [e for r in results for e in r["error_samples"]][:5],
        "unanswered_at_end": sum(r["unanswered"] for r in results),
        "sessions_starved": sum(1 for a in answers if a == 0),
        "max_gap_s": max(gaps, default=0.0),
        "min_answers_per_session": min(answers, default=0),
        "client_cpu_ms_per_request": client_cpu / requests * 1e3 if requests else None,
        "server_cpu_ms_per_request": server_cpu_s / requests * 1e3 if requests and server_cpu_s is not None else None,
        "server_cpu_util": server_cpu_s / w.window_s if server_cpu_s is not None else None,
        "client_cpu_util": client_cpu / w.window_s,
    }
    return out


def _merge_open(results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    opened = sum(r["opened"] for r in results)
    return {
        "opened": opened,
        "failures": sum(r["open_failures"] for r in results),
        "error_samples": [e for r in results for e in r["error_samples"]][:5],
        "seconds": seconds,
        "opens_per_s": opened / seconds if seconds else 0.0,
    }


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
