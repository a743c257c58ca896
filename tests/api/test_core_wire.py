"""The internal wire in one process: a ``ZmqEngineClient`` talking to the engine core process's
``CoreServer`` (input, core and output threads) over an ``ipc://`` socket, with a fake core
behind the real ``CoreLoop`` (so each test decides every answer, and in which pass it comes).

Call order and batching (one message each way per pass), errors re-raised as the same
``cellserve.errors`` classes, completions streamed and withdrawn, malformed messages answered
without running any of them, statistics pulled and never pushed, and the bounded queue back to
a frontend that does not read."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from cellserve.api.pb import svc
from cellserve.config import Settings
from cellserve.engine.core_io import Call, ChunkOut, Outcome, StepOutput
from cellserve.engine.types import (
    AppendOptions,
    CompletionChunk,
    CompletionRequest,
    EngineHealth,
    EngineStats,
    IterationStats,
    ModelIteration,
    ModelTotals,
    Phase,
    Prediction,
    SessionInfo,
)
from cellserve.errors import CapacityExceeded, InvalidInput, NotFound, OffsetConflict, Unavailable
from cellserve.gate_report import GateQuery, GateReport
from cellserve.multiproc import messages
from cellserve.multiproc.client import ZmqEngineClient
from cellserve.multiproc.core_server import CoreServer
from cellserve.multiproc.gates import CoreGates

from .fake_engine import MODEL

TIMEOUT_S = 20.0
Delivery = Outcome | ChunkOut


class FakeCore:
    """Stands in for ``EngineCore`` behind the real ``CoreLoop``: queries answer at once
    (``health``/``stats`` values set by the test; ``health`` None: never answered), every other
    call is recorded in ``calls`` and answered when the test hands a pass's deliveries to
    ``answer``."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.cancelled: list[int] = []
        self.health: EngineHealth | None = EngineHealth(True, 0, 0, 0, 0)
        self.stats = EngineStats()
        self._passes: deque[tuple[list[Delivery], IterationStats | None]] = deque()
        self._deliveries: list[Delivery] = []
        self.kick: Callable[[], None] = lambda: None
        self.lock = threading.Lock()

    def models(self) -> list[Any]:
        return [MODEL]

    def add(self, call: Call) -> None:
        if call.method == "cancel_completion":
            self.cancelled.append(call.args[0])
        elif call.method == "health":
            if self.health is not None:
                self._deliveries.append(Outcome(call.ticket, self.health))
        elif call.method == "stats":
            self._deliveries.append(Outcome(call.ticket, self.stats))
        elif call.method == "has_work":
            self._deliveries.append(Outcome(call.ticket, bool(self._passes)))
        elif call.method not in ("noop", "expire_idle", "start_draining"):
            with self.lock:
                self.calls.append(call)

    def answer(self, deliveries: list[Delivery], stats: IterationStats | None = None) -> None:
        """Any thread: the next pass hands ``deliveries`` (and ``stats``) on."""
        self._passes.append((deliveries, stats))
        self.kick()

    def has_work(self) -> bool:
        return bool(self._passes)

    def step(self) -> StepOutput:
        deliveries, stats = self._passes.popleft()
        out, self._deliveries = self._deliveries + deliveries, []
        return StepOutput(out, stats, not self._passes)

    def idle_output(self) -> StepOutput:
        return self.after_failed_step()

    def after_failed_step(self) -> StepOutput:
        out, self._deliveries = self._deliveries, []
        return StepOutput(out, None, not self._passes)

    def take_deliveries(self) -> list[Delivery]:
        out, self._deliveries = self._deliveries, []
        return out

    def fail_all(self, err: BaseException) -> None:
        pass

    def speculating(self) -> bool:
        return False  # the loop's idle work: nothing to guess here

    def speculate(self) -> bool:
        return False

    async def wait_calls(self, n: int) -> list[Call]:
        while True:
            with self.lock:
                if len(self.calls) >= n:
                    return list(self.calls)
            await asyncio.sleep(0.005)


class CountingDecoder:
    """Wraps a module-level decoder and counts the messages it decoded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.count = 0

    def decode(self, data: Any) -> Any:
        out = self.inner.decode(data)
        self.count += 1
        return out


@contextmanager
def core_server(
    tmp_path: Path, metrics: Any = None, gates: Any = None, settings: Settings | None = None
) -> Iterator[tuple[FakeCore, CoreServer, str]]:
    core = FakeCore()
    address = f"ipc://{tmp_path}/core.sock"
    ctx: zmq.Context[Any] = zmq.Context()
    server = CoreServer(core, ctx, address, settings or Settings(), metrics, gates)  # type: ignore[arg-type]
    core.kick = lambda: server.post("noop")
    server.start()
    try:
        yield core, server, address
    finally:
        server.stop(Unavailable("server is stopping"))
        ctx.term()


@asynccontextmanager
async def wired(
    tmp_path: Path, metrics: Any = None, gates: Any = None
) -> AsyncIterator[tuple[FakeCore, ZmqEngineClient, str]]:
    with core_server(tmp_path, metrics, gates) as (core, _, address):
        client = ZmqEngineClient(address, frontend=0)
        await client.start()
        try:
            yield core, client, address
        finally:
            await client.stop()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TIMEOUT_S))


def prediction(position: int) -> Prediction:
    return Prediction(position, (("a", 0.75), ("b", 0.25)))


def dealer(address: str, identity: bytes | None = None, rcvhwm: int = 1000) -> zmq.asyncio.Socket:
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.connect(address)
    return sock


def test_calls_cross_in_order_batched_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    to_core = CountingDecoder(messages.to_core_decoder)
    to_frontend = CountingDecoder(messages.to_frontend_decoder)
    monkeypatch.setattr(messages, "to_core_decoder", to_core)
    monkeypatch.setattr(messages, "to_frontend_decoder", to_frontend)

    async def test() -> None:
        async with wired(tmp_path) as (core, client, _):
            await client.health("")  # connected; from here on, count
            to_core.count = to_frontend.count = 0
            opts = AppendOptions(top_k=2)
            answers = [client.append("t", "s" * 32, i, "x", opts) for i in range(3)]
            answers.append(client.rewind("t", "s" * 32, 2))
            calls = await core.wait_calls(4)
            assert [(c.method, c.args, c.ticketed) for c in calls] == [
                ("submit_append", ("s" * 32, 0, "x", opts, "t"), True),
                ("submit_append", ("s" * 32, 1, "x", opts, "t"), True),
                ("submit_append", ("s" * 32, 2, "x", opts, "t"), True),
                ("submit_rewind", ("s" * 32, 2, "t"), True),
            ]
            info = SessionInfo("s" * 32, "fake", 1, 0.0, 0.0, 1)
            # one pass answers all four: one message back
            core.answer(
                [Outcome(c.ticket, prediction(i + 1)) for i, c in enumerate(calls[:3])]
                + [Outcome(calls[3].ticket, info)]
            )
            got = await asyncio.gather(*answers)
            assert got[:3] == [prediction(1), prediction(2), prediction(3)]
            assert got[3] == info
            assert to_core.count == 1 and to_frontend.count == 1

    run(test)


@pytest.mark.parametrize(
    ("error", "check"),
    [
        (OffsetConflict(5, 3), lambda e: isinstance(e, OffsetConflict) and (e.expected, e.got) == (5, 3)),
        (
            CapacityExceeded("full", retry_after_s=2.5),
            lambda e: isinstance(e, CapacityExceeded) and e.retry_after_s == 2.5,
        ),
        (NotFound("session not found"), lambda e: type(e) is NotFound and str(e) == "session not found"),
        (InvalidInput("bad"), lambda e: type(e) is InvalidInput),
        (Unavailable("draining"), lambda e: type(e) is Unavailable),
        # not a domain error: crosses without its text (the core logs it)
        (RuntimeError("/secret/path"), lambda e: isinstance(e, messages.CoreFailure) and "secret" not in str(e)),
    ],
)
def test_errors_cross_as_the_same_class(tmp_path: Path, error: Exception, check: Callable[[Any], bool]) -> None:
    async def test() -> None:
        async with wired(tmp_path) as (core, client, _):
            answer = client.snapshot("", "s" * 32)
            (call,) = await core.wait_calls(1)
            core.answer([Outcome(call.ticket, None, error)])
            with pytest.raises(Exception) as info:
                await answer
            assert check(info.value), info.value

    run(test)


def test_a_cancelled_caller_withdraws_nothing(tmp_path: Path) -> None:
    async def test() -> None:
        async with wired(tmp_path) as (core, client, _):
            waiter = asyncio.ensure_future(client.append("", "s" * 32, 0, "x"))
            waiter.cancel()
            (call,) = await core.wait_calls(1)
            assert call.method == "submit_append"
            core.answer([Outcome(call.ticket, prediction(1))])  # answered to nobody: dropped
            snap = client.snapshot("", "s" * 32)
            _, second = await core.wait_calls(2)
            core.answer([Outcome(second.ticket, b"blob")])
            assert await snap == b"blob"  # the client goes on

    run(test)


def test_completion_streams_and_closing_it_withdraws_it(tmp_path: Path) -> None:
    async def test() -> None:
        async with wired(tmp_path) as (core, client, _):
            stream = client.complete("", "s" * 32, CompletionRequest(max_chars=4))
            (call,) = await core.wait_calls(1)
            assert (call.method, call.ticketed) == ("complete", True)
            completion = SimpleNamespace(ticket=call.ticket)
            core.answer([ChunkOut(completion, CompletionChunk(0, "ab", False))])  # type: ignore[arg-type]
            assert await anext(stream) == CompletionChunk(0, "ab", False)
            await stream.aclose()
            while call.ticket not in core.cancelled:  # the core cancels the engine's completion
                await asyncio.sleep(0.01)
            # a completion that finishes ends its stream
            second = client.complete("", "s" * 32, CompletionRequest(max_chars=1))
            _, call2 = await core.wait_calls(2)
            done = SimpleNamespace(ticket=call2.ticket)
            core.answer([ChunkOut(done, CompletionChunk(0, "c", True, "length")), ChunkOut(done, None)])  # type: ignore[arg-type]
            assert [c async for c in second] == [CompletionChunk(0, "c", True, "length")]
            # a completion refused: its stream raises the error
            third = client.complete("", "s" * 32, CompletionRequest(max_chars=1))
            *_, call3 = await core.wait_calls(3)
            core.answer([Outcome(call3.ticket, None, NotFound("session not found"))])
            with pytest.raises(NotFound):
                await anext(third)

    run(test)


def test_malformed_messages_are_answered_never_run_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "cellserve.core")

    async def test() -> None:
        async with wired(tmp_path) as (core, _client, address):
            raw = dealer(address)
            bad_type = msgspec.msgpack.encode([[["Append", 1, "", "s" * 32, "0", "x", {}]]])  # offset a string
            unknown_op = msgspec.msgpack.encode([[["Shutdown", 1]]])
            for payload in (b"\xc1garbage", bad_type, unknown_op):
                await raw.send(payload)
            await raw.send_multipart([b"extra", b"frames"])
            # one good append after the bad ones: the only operation that ever runs
            good = messages.ToCore([messages.Append(7, "", "s" * 32, 0, "ok", AppendOptions())])
            await raw.send(messages.encode(good))
            (call,) = await core.wait_calls(1)
            assert call.args[:3] == ("s" * 32, 0, "ok")
            core.answer([Outcome(call.ticket, prediction(2))])
            replies: list[Any] = []
            while not any(isinstance(r, messages.Ok) for r in replies):
                replies += messages.to_frontend_decoder.decode(await raw.recv()).replies
            # the two bad messages whose call id can be read are answered, not left waiting
            errs = [r for r in replies if isinstance(r, messages.Err)]
            assert [(e.id, e.code) for e in errs] == [(1, "INVALID_ARGUMENT"), (1, "INVALID_ARGUMENT")]
            assert isinstance(messages.error_of(errs[0]), InvalidInput)
            assert [r.id for r in replies if isinstance(r, messages.Ok)] == [7]
            assert len(core.calls) == 1
            raw.close(linger=0)

    run(test)
    dropped = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(dropped) == 1  # rate-limited: one line for four bad messages


def test_frontend_health_follows_the_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cellserve.api.health import Health
    from cellserve.multiproc import processes
    from grpc_health.v1 import health_pb2

    monkeypatch.setattr(processes, "CORE_POLL_S", 0.01)
    monkeypatch.setattr(processes, "CORE_ANSWER_S", 0.2)
    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

    async def test() -> None:
        async with wired(tmp_path) as (core, client, _):
            health = Health("cellserve.v1.Ready")
            await health.serving()

            async def status_becomes(want: int) -> None:
                while True:
                    statuses = {
                        (await health.servicer.Check(health_pb2.HealthCheckRequest(service=name), None)).status
                        for name in ("", "cellserve.v1.Ready")
                    }
                    if statuses == {want}:
                        return
                    await asyncio.sleep(0.01)

            follower = asyncio.create_task(processes.follow_core(client, health))
            try:
                core.health = EngineHealth(False, 0, 0, 0, 0)  # the core drains
                await status_becomes(NOT_SERVING)
                core.health = EngineHealth(True, 0, 0, 0, 0)
                await status_becomes(SERVING)
                core.health = None  # stuck
                await status_becomes(NOT_SERVING)
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    run(test)


def test_forwarded_metric_events_keep_labels_closed(tmp_path: Path) -> None:
    from cellserve.metrics import Metrics

    metrics = Metrics(["fake"])

    async def test() -> None:
        async with wired(tmp_path, metrics) as (_, client, address):
            client.recorder.request("Append", "OK")
            client.recorder.request("Append", "OK")
            client.recorder.keystroke("fake", "append_single", 0.01)
            await client.health("")  # carries them
            raw = dealer(address)
            bad = messages.ToCore(
                [messages.Health(1, "")],
                requests=[("Evil{x}", "OK", 1), ("Append", "NOPE", 1), ("Append", "OK", -5)],
                keystrokes=[("other-model", "append_single", 0.01), ("fake", "new_kind", 0.01)],
            )
            await raw.send(messages.encode(bad))
            await raw.recv()  # the health answer: the whole message was handled
            raw.close(linger=0)

    run(test)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        if family.name in ("cellserve_requests", "cellserve_keystroke_latency_seconds")
        for s in family.samples
    }
    assert samples[("cellserve_requests_total", (("code", "OK"), ("method", "Append")))] == 2
    requests = [k for k in samples if k[0] == "cellserve_requests_total"]
    assert len(requests) == 1, requests
    counts = {k[1]: v for k, v in samples.items() if k[0] == "cellserve_keystroke_latency_seconds_count"}
    assert counts == {
        (("kind", kind), ("model", "fake")): (1.0 if kind == "append_single" else 0.0)
        for kind in ("append_single", "append_multi", "completion_first_chunk", "completion_char")
    }


def test_a_restarted_frontend_s_old_completions_are_cancelled(tmp_path: Path) -> None:
    """Same frontend index, new pid: nobody reads the old incarnation's completions any more."""

    async def test() -> None:
        async with wired(tmp_path) as (core, _, address):
            old, new, other = dealer(address, b"7:100"), dealer(address, b"7:200"), dealer(address, b"8:100")
            try:
                for sock, sid in ((old, "a" * 32), (other, "b" * 32)):
                    start = messages.ToCore([messages.Complete(1, "", sid, CompletionRequest(max_chars=4))])
                    await sock.send(messages.encode(start))
                calls = await core.wait_calls(2)  # in arrival order, which ZMQ does not fix
                tickets = {call.args[0]: call.ticket for call in calls}
                await new.send(messages.encode(messages.ToCore([messages.Health(1, "")])))
                await new.recv()  # the new incarnation was seen
                while tickets["a" * 32] not in core.cancelled:  # frontend 7's old completion is withdrawn
                    await asyncio.sleep(0.01)
                assert tickets["b" * 32] not in core.cancelled  # frontend 8's goes on
            finally:
                for sock in (old, new, other):
                    sock.close(linger=0)

    run(test)


def test_model_statistics_are_pulled_never_pushed(tmp_path: Path) -> None:
    """KServe's ModelStatistics in a frontend: the per-model sums come with ``stats`` when it
    asks; an iteration's statistics send no message to any frontend."""

    async def test() -> None:
        async with wired(tmp_path) as (core, client, address):
            raw = dealer(address)
            await raw.send(messages.encode(messages.ToCore([messages.Health(1, "")])))
            await raw.recv()  # connected
            share = ModelIteration("fake", 2, (0.001, 0.002), 0.004)
            it = IterationStats(2, (0.001, 0.002), ((Phase.STEP, 0.004),), ((Phase.STEP, 2),), (share,))
            for _ in range(3):
                core.answer([], it)
            core.stats = EngineStats(iterations=3, models=(ModelTotals("fake").plus(share),))
            got = await client.stats("")
            assert got.models == (ModelTotals("fake", 1, 2, 0.003, 2, 0.008),)
            assert not await raw.poll(200)  # nothing came unasked
            raw.close(linger=0)

    run(test)


class EchoGates:
    """Stands in for the core's gate thread: answers with the query's model name."""

    def submit(self, query: GateQuery, answer: Callable[[object, BaseException | None], None]) -> None:
        if query.model == "nope":
            answer(None, NotFound("unknown model 'nope'"))
        else:
            answer(GateReport(query.model or "default", "gru", 0, (), ()), None)


def test_inspect_gates_is_answered_by_the_core(tmp_path: Path) -> None:
    def request(model: str) -> svc.InspectGatesRequest:
        req = svc.InspectGatesRequest(model=model)
        req.input.text = "ab"
        return req

    async def test() -> None:
        async with wired(tmp_path, gates=EchoGates()) as (_, client, _addr):
            gates = CoreGates(client, Settings())
            assert (await gates.inspect(request("tiny"))).model == "tiny"
            with pytest.raises(NotFound, match="unknown model"):
                await gates.inspect(request("nope"))
            with pytest.raises(InvalidInput, match="input.text is empty"):  # checked in the frontend
                await gates.inspect(svc.InspectGatesRequest(model="tiny", input={"text": ""}))
        async with wired(tmp_path) as (_, client, _addr):  # a core without gates: UNAVAILABLE
            with pytest.raises(Unavailable, match="gate inspection"):
                await CoreGates(client, Settings()).inspect(request("tiny"))

    run(test)


def test_a_call_the_core_never_answers_fails_at_its_deadline(tmp_path: Path) -> None:
    """Every call across the socket has a deadline: one the core never answers fails
    UNAVAILABLE (retry) instead of waiting forever; answered calls are unaffected."""

    async def test() -> None:
        async with wired(tmp_path) as (core, client, _address):
            client._deadline_s = 0.2  # noqa: SLF001 (the Settings value, shortened for the test)
            answered = client.append("", "s" * 32, 0, "a")
            lost = client.append("", "s" * 32, 1, "b")
            first, _second = await core.wait_calls(2)
            core.answer([Outcome(first.ticket, prediction(1))])  # the core answers one and never the other
            assert (await answered).position == 1
            with pytest.raises(Unavailable, match="did not answer"):
                await asyncio.wait_for(lost, 5)
            assert not client._pending  # noqa: SLF001

    run(test)


def test_a_frontend_that_does_not_read_gets_its_calls_refused_not_buffered(tmp_path: Path) -> None:
    """The core's queue to each frontend is bounded (the ROUTER's high-water mark): answers a
    frontend does not take are not buffered without end; once it reads again, each of its
    calls that could not be answered is RESOURCE_EXHAUSTED with a retry hint."""
    settings = Settings(core_send_queue_messages=1)
    calls_n = 40

    async def test() -> None:
        with core_server(tmp_path, settings=settings) as (core, _server, address):
            raw = dealer(address, b"0:1", rcvhwm=1)
            for i in range(1, calls_n + 1):
                await raw.send(messages.encode(messages.ToCore([messages.Snapshot(i, "", "s" * 32)])))
            calls = await core.wait_calls(calls_n)
            for call in calls:  # one pass and message each, each a 1 MiB blob: far past every buffer
                core.answer([Outcome(call.ticket, b"x" * (1 << 20))])
                while core.has_work():
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0.01)  # the output thread sent it before the next pass
            await asyncio.sleep(1.0)  # the core meets the full queue
            outcomes: dict[int, str] = {}
            while len(outcomes) < calls_n:
                assert await raw.poll(5000), f"answered {len(outcomes)} of {calls_n}"
                for r in messages.to_frontend_decoder.decode(await raw.recv()).replies:
                    assert r.id not in outcomes  # every call is answered exactly once
                    outcomes[r.id] = "ok" if isinstance(r, messages.Ok) else r.code
            refused = [i for i, code in outcomes.items() if code == "RESOURCE_EXHAUSTED"]
            assert refused and set(outcomes.values()) == {"ok", "RESOURCE_EXHAUSTED"}
            err = messages.error_of(messages.Err(0, "RESOURCE_EXHAUSTED", "x", retry_after_s=0.2))
            assert isinstance(err, CapacityExceeded) and err.retry_after_s > 0
            raw.close(linger=0)

    run(test)


def test_a_full_queue_to_the_core_refuses_calls_with_a_retry_hint(tmp_path: Path) -> None:
    """The frontend's queue to the core is bounded: with a core that reads nothing, calls
    soon fail RESOURCE_EXHAUSTED (CapacityExceeded with a retry hint) instead of queueing
    without end; nothing is left pending for them."""

    async def test() -> None:
        address = f"ipc://{tmp_path}/stuck.sock"
        ctx = zmq.asyncio.Context()
        stuck = ctx.socket(zmq.ROUTER)  # a core that never reads
        stuck.setsockopt(zmq.LINGER, 0)
        stuck.setsockopt(zmq.RCVHWM, 1)
        stuck.bind(address)
        client = ZmqEngineClient(address, frontend=0, send_queue_messages=1)
        await client.start()
        try:
            refused: CapacityExceeded | None = None
            calls: list[Any] = []
            for i in range(20_000):  # each call its own message: the kernel buffer fills first
                call = client.append("", "s" * 32, i, "x" * 4000)
                calls.append(call)
                await asyncio.sleep(0)
                if call.done():  # type: ignore[attr-defined]
                    with pytest.raises(CapacityExceeded) as e:
                        await call
                    refused = e.value
                    break
            assert refused is not None and refused.retry_after_s > 0
            assert "not keeping up" in str(refused)
            assert len(client._pending) == len(calls) - 1  # noqa: SLF001 (only the sent ones wait)
        finally:
            await client.stop()  # the calls still queued fail UNAVAILABLE
            await asyncio.gather(*calls, return_exceptions=True)
            stuck.close(linger=0)
            ctx.term()

    run(test)


def test_answers_that_arrive_while_the_frontend_sends_are_all_read(tmp_path: Path) -> None:
    """The client watches the socket's ZMQ_FD, which signals a change once and which any
    send may consume: answers that came in during a send must still be read. A core that
    answers every message at once, and calls sent in many small batches, so that answers keep
    arriving while the next batch goes out."""
    address = f"ipc://{tmp_path}/echo.sock"
    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(address)
    stop = threading.Event()

    def core() -> None:
        while not stop.is_set():
            if not router.poll(20):
                continue
            who, data = router.recv_multipart()
            ops = messages.to_core_decoder.decode(data).ops
            replies = [
                messages.OkOut(op.id, prediction(op.offset + 1)) for op in ops if isinstance(op, messages.Append)
            ]
            router.send_multipart([who, messages.encode(messages.ToFrontendOut(replies))])

    thread = threading.Thread(target=core, daemon=True)
    thread.start()

    async def test() -> None:
        client = ZmqEngineClient(address, frontend=0)
        await client.start()
        try:
            calls = []
            for batch in range(400):
                calls += [client.append("t", "s" * 32, 5 * batch + i, "x") for i in range(5)]
                await asyncio.sleep(0)  # this batch goes out; answers to earlier ones come in
            got = await asyncio.gather(*calls)
            assert [p.position for p in got] == list(range(1, 2001))
        finally:
            await client.stop()

    try:
        run(test)
    finally:
        stop.set()
        thread.join()
        router.close(linger=0)
        ctx.term()


class _FullQueue:
    """Stands in for the client's socket when its queue to the core is full."""

    def send(self, data: bytes, flags: int = 0) -> None:
        raise zmq.Again()

    def getsockopt(self, option: int) -> int:
        return 0


def test_metric_events_a_full_queue_refuses_go_with_the_next_message(tmp_path: Path) -> None:
    """``flush_metrics`` never waits for room: refused, the events stay for the next message."""

    async def test() -> None:
        async with wired(tmp_path) as (_, client, _):
            await client.health("")
            real, client._sock = client._sock, _FullQueue()  # type: ignore[assignment]  # noqa: SLF001
            try:
                client.recorder.request("Append", "OK")
                client.recorder.keystroke("fake", "append_single", 0.25)
                client.flush_metrics()
            finally:
                client._sock = real  # noqa: SLF001
            client.recorder.request("Append", "OK")
            message = client.recorder.message([])
            assert message.requests == [("Append", "OK", 2)]
            assert message.keystrokes == [("fake", "append_single", 0.25)]

    run(test)


def test_the_health_follower_stops_when_cancelled_as_its_poll_is_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frontend's SIGTERM cancels the follower; when that lands in the same pass as the
    answer to its health poll, it must still end (on 3.11 ``asyncio.wait_for`` returned the
    answer and dropped the cancellation there: the frontend hung for the whole drain grace)."""
    from cellserve.multiproc import processes

    monkeypatch.setattr(processes, "CORE_POLL_S", 0.0)

    class Client:
        connected = True

        def __init__(self) -> None:
            self.polls: list[asyncio.Future[EngineHealth]] = []

        def flush_metrics(self) -> None:
            pass

        def health(self, owner: str) -> asyncio.Future[EngineHealth]:
            self.polls.append(asyncio.get_running_loop().create_future())
            return self.polls[-1]

    class Health:
        async def set_serving(self, serving: bool) -> None:
            pass

    async def test() -> None:
        client = Client()
        follower = asyncio.create_task(processes.follow_core(client, Health()))  # type: ignore[arg-type]
        while not client.polls:
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the follower now waits for the answer
        client.polls[-1].set_result(EngineHealth(True, 0, 0, 0, 0))  # the answer and the cancel, one pass
        follower.cancel()
        done, _ = await asyncio.wait([follower], timeout=2.0)
        assert done and follower.cancelled(), f"the follower went on after its cancel ({len(client.polls)} polls)"

    run(test)
