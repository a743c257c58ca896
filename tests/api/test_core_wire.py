"""The internal wire in one process: a ``ZmqEngineClient`` talking to a ``CoreServer`` over an
``ipc://`` socket, with the fake engine behind the core (so each test decides every answer).

Call order and batching (one message each way per loop pass), errors re-raised as the same
``cellserve.errors`` classes, completions streamed and withdrawn, and malformed messages on
the internal socket dropped without running any of them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from cellserve.api.pb import svc
from cellserve.engine.types import (
    AppendOptions,
    CompletionChunk,
    CompletionRequest,
    IterationStats,
    ModelIteration,
    Phase,
    Prediction,
    SessionInfo,
)
from cellserve.errors import CapacityExceeded, InvalidInput, NotFound, OffsetConflict, Unavailable
from cellserve.multiproc import messages
from cellserve.multiproc.client import ZmqEngineClient
from cellserve.multiproc.core import CoreServer
from cellserve.multiproc.gates import CoreGates

from .fake_engine import FakeEngine

TIMEOUT_S = 20.0


class CountingDecoder:
    """Wraps a module-level decoder and counts the messages it decoded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.count = 0

    def decode(self, data: Any) -> Any:
        out = self.inner.decode(data)
        self.count += 1
        return out


@asynccontextmanager
async def wired(
    tmp_path: Path, metrics: Any = None, gates: Any = None
) -> AsyncIterator[tuple[FakeEngine, ZmqEngineClient, str]]:
    engine = FakeEngine()
    address = f"ipc://{tmp_path}/core.sock"
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    core = asyncio.create_task(CoreServer(engine, sock, metrics, gates).serve())
    client = ZmqEngineClient(address, frontend=0)
    await client.start()
    try:
        yield engine, client, address
    finally:
        await client.stop()
        core.cancel()
        await asyncio.gather(core, return_exceptions=True)
        sock.close(linger=0)
        ctx.term()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TIMEOUT_S))


def prediction(position: int) -> Prediction:
    return Prediction(position, (("a", 0.75), ("b", 0.25)))


def test_calls_cross_in_order_batched_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    to_core = CountingDecoder(messages.to_core_decoder)
    to_frontend = CountingDecoder(messages.to_frontend_decoder)
    monkeypatch.setattr(messages, "to_core_decoder", to_core)
    monkeypatch.setattr(messages, "to_frontend_decoder", to_frontend)

    async def test() -> None:
        async with wired(tmp_path) as (engine, client, _):
            await client.health("")  # connected; from here on, count
            to_core.count = to_frontend.count = 0
            opts = AppendOptions(top_k=2)
            answers = [client.append("t", "s" * 32, i, "x", opts) for i in range(3)]
            answers.append(client.rewind("t", "s" * 32, 2))
            calls = await engine.wait_calls(4)
            assert [(c.op, c.owner, c.args) for c in calls] == [
                ("append", "t", ("s" * 32, 0, "x")),
                ("append", "t", ("s" * 32, 1, "x")),
                ("append", "t", ("s" * 32, 2, "x")),
                ("rewind", "t", ("s" * 32, 2)),
            ]
            for i, c in enumerate(calls[:3]):  # the engine resolves an iteration's results together
                c.future.set_result(prediction(i + 1))
            calls[3].future.set_result(SessionInfo("s" * 32, "fake", 1, 0.0, 0.0, 1))
            got = await asyncio.gather(*answers)
            assert got[:3] == [prediction(1), prediction(2), prediction(3)]
            assert isinstance(got[3], SessionInfo) and got[3].position == 1
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
        async with wired(tmp_path) as (engine, client, _):
            answer = client.snapshot("", "s" * 32)
            (call,) = await engine.wait_calls(1)
            call.future.set_exception(error)
            with pytest.raises(Exception) as info:
                await answer
            assert check(info.value), info.value

    run(test)


def test_a_cancelled_caller_withdraws_nothing(tmp_path: Path) -> None:
    async def test() -> None:
        async with wired(tmp_path) as (engine, client, _):
            waiter = asyncio.ensure_future(client.append("", "s" * 32, 0, "x"))
            waiter.cancel()
            (call,) = await engine.wait_calls(1)
            assert call.op == "append"
            call.future.set_result(prediction(1))  # answered to nobody: dropped
            assert await client.get_session("", "s" * 32)  # the client goes on

    run(test)


def test_completion_streams_and_closing_it_withdraws_it(tmp_path: Path) -> None:
    async def test() -> None:
        async with wired(tmp_path) as (engine, client, _):
            stream = client.complete("", "s" * 32, CompletionRequest(max_chars=4))
            await engine.wait_calls(1)
            chunks = engine.chunks[0]
            chunks.queue.put_nowait(CompletionChunk(0, "ab", False))
            assert await anext(stream) == CompletionChunk(0, "ab", False)
            await stream.aclose()
            while not chunks.closed:  # the core's relay closes the engine's stream
                await asyncio.sleep(0.01)
            # a completion that finishes ends its stream
            second = client.complete("", "s" * 32, CompletionRequest(max_chars=1))
            await engine.wait_calls(2)
            engine.chunks[1].queue.put_nowait(CompletionChunk(0, "c", True, "length"))
            engine.chunks[1].queue.put_nowait(None)
            assert [c async for c in second] == [CompletionChunk(0, "c", True, "length")]

    run(test)


def test_malformed_messages_are_answered_never_run_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "cellserve.core")

    async def test() -> None:
        async with wired(tmp_path) as (engine, client, address):
            raw = zmq.asyncio.Context.instance().socket(zmq.DEALER)
            raw.setsockopt(zmq.LINGER, 0)
            raw.connect(address)
            bad_type = msgspec.msgpack.encode([[["Append", 1, "", "s" * 32, "0", "x", {}]]])  # offset a string
            unknown_op = msgspec.msgpack.encode([[["Shutdown", 1]]])
            for payload in (b"\xc1garbage", bad_type, unknown_op):
                await raw.send(payload)
            await raw.send_multipart([b"extra", b"frames"])
            # one good append after the bad ones: the only operation that ever runs
            good = messages.ToCore([messages.Append(7, "", "s" * 32, 0, "ok", AppendOptions())])
            await raw.send(messages.encode(good))
            (call,) = await engine.wait_calls(1)
            assert (call.op, call.args) == ("append", ("s" * 32, 0, "ok"))
            call.future.set_result(prediction(2))
            replies: list[Any] = []
            while not any(type(r).__name__ == "Ok" for r in replies):
                replies += messages.to_frontend_decoder.decode(await raw.recv()).replies
            # the two bad messages whose call id can be read are answered, not left waiting
            errs = [r for r in replies if isinstance(r, messages.Err)]
            assert [(e.id, e.code) for e in errs] == [(1, "invalid_input"), (1, "invalid_input")]
            assert isinstance(messages.error_of(errs[0]), InvalidInput)
            assert [r.id for r in replies if type(r).__name__ == "Ok"] == [7]
            assert len(engine.calls) == 1
            raw.close(linger=0)

    run(test)
    dropped = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(dropped) == 1  # rate-limited: one line for four bad messages


def test_frontend_health_follows_the_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cellserve.api.health import Health
    from cellserve.engine.types import EngineHealth
    from cellserve.multiproc import processes
    from grpc_health.v1 import health_pb2

    monkeypatch.setattr(processes, "CORE_POLL_S", 0.01)
    monkeypatch.setattr(processes, "CORE_ANSWER_S", 0.2)
    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

    async def test() -> None:
        async with wired(tmp_path) as (engine, client, _):
            health = Health("cellserve.v1.Ready")
            await health.serving()
            core: dict[str, Any] = {"answer": EngineHealth(True, 0, 0, 0, 0)}

            def answer(owner: str) -> asyncio.Future[EngineHealth]:
                fut: asyncio.Future[EngineHealth] = asyncio.get_running_loop().create_future()
                if core["answer"] is not None:  # None: the core does not answer
                    fut.set_result(core["answer"])
                return fut

            engine.health = answer  # type: ignore[method-assign]

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
                core["answer"] = EngineHealth(False, 0, 0, 0, 0)  # the core drains
                await status_becomes(NOT_SERVING)
                core["answer"] = EngineHealth(True, 0, 0, 0, 0)
                await status_becomes(SERVING)
                core["answer"] = None  # stuck
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
            raw = zmq.asyncio.Context.instance().socket(zmq.DEALER)
            raw.setsockopt(zmq.LINGER, 0)
            raw.connect(address)
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

    def dealer(address: str, identity: bytes) -> zmq.asyncio.Socket:
        sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        return sock

    async def test() -> None:
        async with wired(tmp_path) as (engine, _, address):
            old, new, other = dealer(address, b"7:100"), dealer(address, b"7:200"), dealer(address, b"8:100")
            try:
                for sock, sid in ((old, "a" * 32), (other, "b" * 32)):
                    start = messages.ToCore([messages.Complete(1, "", sid, CompletionRequest(max_chars=4))])
                    await sock.send(messages.encode(start))
                calls = await engine.wait_calls(2)  # in arrival order, which ZMQ does not fix
                chunks = {call.args[0]: c for call, c in zip(calls, engine.chunks, strict=True)}
                await new.send(messages.encode(messages.ToCore([messages.Health(1, "")])))
                await new.recv()  # the new incarnation was seen
                while not chunks["a" * 32].closed:  # frontend 7's old completion is withdrawn
                    await asyncio.sleep(0.01)
                assert not chunks["b" * 32].closed  # frontend 8's goes on
            finally:
                for sock in (old, new, other):
                    sock.close(linger=0)

    run(test)


def test_iteration_statistics_reach_a_frontends_listeners(tmp_path: Path) -> None:
    """KServe's ModelStatistics in a frontend: the core forwards each iteration's per-model
    share to frontends that listen (and to no one else)."""

    async def test() -> None:
        async with wired(tmp_path) as (engine, client, _):
            got: list[IterationStats] = []
            arrived = asyncio.Event()

            def listener(it: IterationStats) -> None:
                got.append(it)
                arrived.set()

            client.add_stats_listener(listener)
            await client.health("")  # the WatchStats went out before this call
            (core_listener,) = engine.stats_listeners
            core_listener(IterationStats(1, (0.5,), (), (), ()))  # no model ran: nothing sent
            share = ModelIteration("fake", 2, (0.001, 0.002), 0.004)
            core_listener(IterationStats(2, (0.001, 0.002), ((Phase.STEP, 0.004),), ((Phase.STEP, 2),), (share,)))
            await arrived.wait()
            assert [it.models for it in got] == [(share,)] and got[0].rows == 2

    run(test)


class EchoGates:
    """Stands in for GateInspector in the core: answers with the request's model name."""

    async def inspect(self, request: svc.InspectGatesRequest) -> svc.InspectGatesResponse:
        if request.model == "nope":
            raise NotFound("unknown model 'nope'")
        return svc.InspectGatesResponse(model=request.model)


def test_inspect_gates_is_answered_by_the_core(tmp_path: Path) -> None:
    async def test() -> None:
        async with wired(tmp_path, gates=EchoGates()) as (_, client, _addr):
            gates = CoreGates(client)
            assert (await gates.inspect(svc.InspectGatesRequest(model="tiny"))).model == "tiny"
            with pytest.raises(NotFound, match="unknown model"):
                await gates.inspect(svc.InspectGatesRequest(model="nope"))
        async with wired(tmp_path) as (_, client, _addr):  # a core without gates: UNAVAILABLE
            with pytest.raises(Unavailable, match="gate inspection"):
                await CoreGates(client).inspect(svc.InspectGatesRequest(model="tiny"))

    run(test)


def test_a_call_the_core_never_answers_fails_at_its_deadline(tmp_path: Path) -> None:
    """Every call across the socket has a deadline: one the core never answers fails
    UNAVAILABLE (retry) instead of waiting forever; answered calls are unaffected."""

    async def test() -> None:
        async with wired(tmp_path) as (engine, client, _address):
            client._deadline_s = 0.2  # noqa: SLF001 (the Settings value, shortened for the test)
            answered = client.append("", "s" * 32, 0, "a")
            lost = client.append("", "s" * 32, 1, "b")
            first, _second = await engine.wait_calls(2)
            first.future.set_result(prediction(1))  # the core answers one and never the other
            assert (await answered).position == 1
            with pytest.raises(Unavailable, match="did not answer"):
                await asyncio.wait_for(lost, 5)
            assert not client._pending  # noqa: SLF001

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
