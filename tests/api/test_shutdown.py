"""Graceful shutdown of a `cellserve serve` process with live sessions: SIGTERM to its pid;
what it has read is answered, streams then end with UNAVAILABLE, new sessions are refused with
UNAVAILABLE, and the process exits 0 within the grace period."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .conftest import start_server

StreamOutcome = tuple[list[svc.SessionResponse], grpc.StatusCode, str, float]  # answers, status, details, end
GRACE_S = 20.0
PROMPT_S = 6.0  # drained streams end once answered, long before the grace runs out
STREAMS = 4
APPENDS = 40


async def _live_stream(stub: rpc.CellserveServiceStub, started: asyncio.Event) -> StreamOutcome:
    requests: asyncio.Queue[svc.SessionRequest | None] = asyncio.Queue()

    async def request_iter():  # type: ignore[no-untyped-def]
        while (r := await requests.get()) is not None:
            yield r

    call = stub.Session(request_iter(), timeout=60)
    await requests.put(svc.SessionRequest(request_id=0, open=svc.SessionRequest.Open()))
    assert (await call.read()).WhichOneof("result") == "opened"
    for i in range(APPENDS):  # heavy pieces, all sent at once: many are in flight at SIGTERM
        piece = types.Input(text="x" * 300)
        await requests.put(
            svc.SessionRequest(request_id=i + 1, append=svc.SessionRequest.Append(offset=300 * i, input=piece))
        )
    responses = [await call.read()]
    started.set()
    try:
        while (r := await call.read()) != grpc.aio.EOF:
            responses.append(r)
    except grpc.aio.AioRpcError as e:
        return responses, e.code(), e.details() or "", time.monotonic()
    return responses, await call.code(), "", time.monotonic()


Outcome = tuple[list[StreamOutcome], list[grpc.StatusCode], float]


async def _scenario(target: str, pid: int) -> Outcome:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = rpc.CellserveServiceStub(channel)
        events = [asyncio.Event() for _ in range(STREAMS)]
        tasks = [asyncio.create_task(_live_stream(stub, e)) for e in events]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
        os.kill(pid, signal.SIGTERM)  # this test's own server process only
        sigterm_at = time.monotonic()
        refusals: list[grpc.StatusCode] = []
        for _ in range(100):  # bounded: until a new session is refused
            try:
                await stub.OpenSession(svc.OpenSessionRequest(), timeout=5)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.CANCELLED:
                    # a call that raced gRPC's own stop is cancelled by the transport, not
                    # refused by the server: try again; the refusal itself must be UNAVAILABLE
                    await asyncio.sleep(0.02)
                    continue
                refusals.append(e.code())
                break
            await asyncio.sleep(0.02)
        return await asyncio.gather(*tasks), refusals, sigterm_at


@pytest.mark.slow
@pytest.mark.parametrize("frontends", ["0", "2"], ids=["one-process", "two-frontends"])
def test_sigterm_drains_live_sessions(model_dir: Path, frontends: str) -> None:
    server = start_server(model_dir, "--drain-grace", str(GRACE_S), "--frontends", frontends)
    try:
        streams, refusals, sigterm_at = asyncio.run(_scenario(server.target, server.pid))
        assert refusals == [grpc.StatusCode.UNAVAILABLE]
        for responses, code, details, ended_at in streams:
            # every request the server read was answered, in order, with a prediction
            assert [r.request_id for r in responses] == list(range(1, len(responses) + 1))
            assert all(r.WhichOneof("result") == "prediction" for r in responses), responses[-1]
            assert [r.prediction.position for r in responses] == [300 * (i + 1) for i in range(len(responses))]
            # then the server ends the stream with UNAVAILABLE (resume elsewhere), promptly
            assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details, (code, details)
            assert ended_at - sigterm_at < PROMPT_S
        assert server.proc.wait(timeout=GRACE_S + 10) == 0
        assert time.monotonic() - sigterm_at < PROMPT_S  # within the grace, and not by waiting it out
        assert "Traceback" not in "".join(server.stderr_lines)
    finally:
        server.kill()
