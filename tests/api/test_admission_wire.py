"""Caps over the wire (a server with small limits): each gives its documented code and a retry
hint, and other sessions are unaffected; idle sessions expire to NOT_FOUND."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .conftest import open_session, rpc_error, start_server, trailing
from .helpers import SyncStream

MAX_SESSIONS = 3
MAX_STREAMS = 2
IDLE_TTL_S = 3.0
MAX_COMPLETIONS = 2  # alternatives decoding at once


@pytest.fixture(scope="module")
def small(model_dir: Path) -> Iterator[rpc.CellserveServiceStub]:
    s = start_server(
        model_dir,
        "--max-sessions", str(MAX_SESSIONS),
        "--max-concurrent-streams", str(MAX_STREAMS),
        "--session-idle-ttl", str(IDLE_TTL_S),
        "--set", "max_top_k=8",
        "--set", "max_append_chars=100",
        "--set", "session_sweep_interval_s=0.5",
        "--set", f"max_running_completions={MAX_COMPLETIONS}",
        "--set", "max_completion_chars=100000",
    )  # fmt: skip
    try:
        with grpc.insecure_channel(s.target) as ch:
            yield rpc.CellserveServiceStub(ch)
    finally:
        s.terminate()


def _close_all(stub: rpc.CellserveServiceStub, ids: list[str]) -> None:
    for sid in ids:
        stub.CloseSession(svc.CloseSessionRequest(session_id=sid), timeout=10)


def test_session_cap(small: rpc.CellserveServiceStub) -> None:
    ids = [open_session(small) for _ in range(MAX_SESSIONS)]
    try:
        err = rpc_error(small.OpenSession, svc.OpenSessionRequest(), timeout=10)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ms = int(trailing(err)["retry-after-ms"])
        assert ms > 0 and f"retry after {ms} ms" in err.details()
        p = small.Append(svc.AppendRequest(session_id=ids[0], offset=0, input=types.Input(text="ok")), timeout=10)
        assert p.prediction.position == 2  # the others are unaffected
    finally:
        _close_all(small, ids)
    _close_all(small, [open_session(small)])  # closing frees the slots


def test_stream_cap(small: rpc.CellserveServiceStub) -> None:
    streams = [SyncStream(small) for _ in range(MAX_STREAMS)]
    ids = [s.open().session.session_id for s in streams]  # both admitted and running
    extra = SyncStream(small)
    try:
        with pytest.raises(grpc.RpcError) as info:
            extra.open()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(trailing(info.value)["retry-after-ms"]) > 0
        assert streams[0].append(0, "still fine").prediction.position == 10
    finally:
        for s in (*streams, extra):
            s.cancel()
        _close_all(small, ids)
    deadline = time.monotonic() + 10  # the server notices the cancelled streams shortly
    while True:
        s = SyncStream(small)
        try:
            _close_all(small, [s.open().session.session_id])
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.1)
        finally:
            s.cancel()


def test_configured_input_limits(small: rpc.CellserveServiceStub) -> None:
    sid = open_session(small)
    try:
        for req, needle in (
            (svc.AppendRequest(session_id=sid, input=types.Input(text="a" * 101)), "101 characters"),
            (svc.AppendRequest(session_id=sid, input=types.Input(text="a"), top_k=9), "top_k is 9"),
        ):
            err = rpc_error(small.Append, req, timeout=10)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.details()
    finally:
        _close_all(small, [sid])


def test_idle_session_expires(small: rpc.CellserveServiceStub) -> None:
    sid = open_session(small)
    deadline = time.monotonic() + IDLE_TTL_S + 20
    while time.monotonic() < deadline:
        try:
            small.GetSession(svc.GetSessionRequest(session_id=sid), timeout=10)  # reads; does not refresh
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
            return
        time.sleep(0.5)
    pytest.fail("the idle session did not expire")


def _complete(stub: rpc.CellserveServiceStub, sid: str, max_chars: int, n: int = 1) -> grpc.Future:
    return stub.Complete(svc.CompleteRequest(session_id=sid, max_chars=max_chars, n=n), timeout=120)


def _wait_admitted(stub: rpc.CellserveServiceStub, sid: str) -> None:
    """A short completion is admitted again within a bound (the long ones were cancelled)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            assert len(list(_complete(stub, sid, 1))) == 1
            return
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.1)


def test_cancelling_a_call_cancels_its_completions(small: rpc.CellserveServiceStub) -> None:
    sid = open_session(small)
    try:
        # a completion that would run for minutes, over the stream; both scratch slots taken
        s = SyncStream(small)
        s.ask(attach=svc.SessionRequest.Attach(session_id=sid))
        s.send(complete=svc.SessionRequest.Complete(max_chars=100_000, n=MAX_COMPLETIONS))
        assert s.recv().WhichOneof("result") == "completion_chunk"
        err = rpc_error(lambda: list(_complete(small, sid, 1)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry-after-ms" in trailing(err)
        s.cancel()  # the stream goes away: its completion must stop and free its slots
        _wait_admitted(small, sid)

        # the same over the unary server-streaming call
        call = _complete(small, sid, 100_000, n=MAX_COMPLETIONS)
        next(call)
        assert rpc_error(lambda: list(_complete(small, sid, 1))).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        call.cancel()
        _wait_admitted(small, sid)
    finally:
        _close_all(small, [sid])


def test_calls_in_progress_are_capped_by_grpc(model_dir: Path) -> None:
    """``max_concurrent_rpcs``: gRPC itself refuses calls beyond the cap (RESOURCE_EXHAUSTED)
    before any servicer runs; a call that ends makes room again."""
    s = start_server(model_dir, "--set", "max_concurrent_rpcs=2")
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = rpc.CellserveServiceStub(ch)
            streams = [SyncStream(stub) for _ in range(2)]
            for st in streams:
                st.open()
            err = rpc_error(stub.ListModels, svc.ListModelsRequest(), timeout=10)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            streams[0].close()
            for _ in range(100):  # the ended stream's slot comes back
                try:
                    assert stub.ListModels(svc.ListModelsRequest(), timeout=10).models
                    break
                except grpc.RpcError:
                    time.sleep(0.05)
            else:
                pytest.fail("the cap never made room again")
            streams[1].close()
    finally:
        s.terminate()
