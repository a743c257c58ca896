"""Server CPU per message of the API layer alone, over an engine that answers every operation
at once, so the figure is the path of one keystroke with no model behind it.

    .venv/bin/python scripts/call_overhead_smoke.py [--wire] [--messages 3000] [--rounds 5] [--auth]

Default (in process): the server's interceptors and servicer handlers, taken from a real
``ApiServer`` and called the way grpc.aio calls them (interceptor chain, then the handler with
a request iterator and a stand-in context), on one thread with no transport: the CPU of the
call wrapper, the servicer and the Session stream per streamed Append, and per unary Append.

``--wire``: a real server on a loopback port driven by a client in another process; the
server process's CPU seconds (all threads, grpc's poller included) per streamed Append
(lockstep: one in flight, so each crosses the whole path alone) and per unary Append call.

On a shared machine either is a smoke, not a benchmark: compare before/after in the same
session, several rounds, and say so with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from cellserve.api import ApiServer
from cellserve.api import server as api_server
from cellserve.config import Settings
from cellserve.engine.admission import Limits
from cellserve.engine.types import ModelInfo, Prediction, SessionInfo
from cellserve.tokens import new_token
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

MODEL = ModelInfo("instant", "lstm", 1, 4, ("", "a", "b"), "0" * 64, None, True)
SID = "f" * 32
TOP = (("a", 0.5), ("b", 0.25), ("", 0.25))


def _now(value: Any) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


class InstantEngine:
    """The ``EngineClient`` calls the smoke makes, each answered at once; counts appends and
    marks the CPU clock when the measured window starts and ends."""

    def __init__(self) -> None:
        self.appends = 0
        self.marks: dict[int, float] = {}
        self.mark_at: set[int] = set()

    def _count(self) -> None:
        self.appends += 1
        if self.appends in self.mark_at:
            self.marks[self.appends] = time.process_time()

    async def start(self) -> None:
        pass

    async def drain(self) -> None:
        pass

    def set_limits(self, owner: str, limits: Limits) -> None:
        pass

    def open_stream(self, owner: str) -> Awaitable[int]:
        return _now(1)

    def close_stream(self, owner: str, lease: int) -> None:
        pass

    def models(self, owner: str) -> Awaitable[list[ModelInfo]]:
        return _now([MODEL])

    def open_session(self, owner: str, model: str | None = None, memory: bool = True) -> Awaitable[SessionInfo]:
        return _now(SessionInfo(SID, MODEL.name, 0, 0.0, 0.0))

    def get_session(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        return _now(SessionInfo(SID, MODEL.name, 0, 0.0, 0.0))

    def append(self, owner: str, session_id: str, offset: int, text: str, options: Any = None) -> Awaitable[Prediction]:
        self._count()
        return _now(Prediction(offset + len(text), TOP))


CLIENT = r"""
import queue, sys, grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc, service_pb2_grpc as rpc, types_pb2 as types
target, n, warm, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
md = (("authorization", "Bearer " + token),) if token else ()
with grpc.insecure_channel(target) as ch:
    stub = rpc.CellserveServiceStub(ch)
    for count in (warm, n):  # a warm-up stream, then the measured one
        q = queue.Queue()  # lockstep: the next request is queued once the previous answer came
        q.put(svc.SessionRequest(request_id=1, open=svc.SessionRequest.Open()))
        call = stub.Session(iter(q.get, None), metadata=md)
        next(call)
        for i in range(count):
            q.put(svc.SessionRequest(request_id=i + 2, append=svc.SessionRequest.Append(offset=i, input=types.Input(text="a"))))
            r = next(call)
            assert r.WhichOneof("result") == "prediction", r
        q.put(None)
        for _ in call:
            pass
    for i in range(warm + n):  # unary Appends: warm-up, then measured
        stub.Append(svc.AppendRequest(session_id="f" * 32, offset=i, input=types.Input(text="a")), metadata=md)
"""


def _settings(auth: bool) -> tuple[Settings, str]:
    token, stored = new_token()
    update: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
    if auth:
        path = Path(tempfile.mkdtemp()) / "tokens.json"
        path.write_text(json.dumps({"tenants": [{"name": "smoke", "tokens": [stored]}]}))
        update["auth_tokens_file"] = path
    return Settings(**update), token


class _Context:
    """What the server's wrappers and servicers read of a grpc.aio ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, Any]:
        return {}

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, message: str, trailing: Any = ()) -> None:
        raise RuntimeError(f"the smoke call ended with {code.name}: {message}")

    def code(self) -> None:
        return None


class _Handlers:
    """Stands in for the grpc server while the servicer registers: keeps its method handlers."""

    def __init__(self) -> None:
        self.methods: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.methods.update({f"/{service}/{name}": h for name, h in handlers.items()})


class _Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


async def _intercepted(
    interceptors: list[Any], handlers: _Handlers, method: str, md: tuple[tuple[str, str], ...]
) -> grpc.RpcMethodHandler:
    """The handler grpc.aio would run for ``method``: its interceptors in order, then the lookup."""

    async def run(i: int, details: _Details) -> grpc.RpcMethodHandler:
        if i == len(interceptors):
            return handlers.methods[details.method]
        return await interceptors[i].intercept_service(lambda d: run(i + 1, d), details)

    return await run(0, _Details(method, md))


async def in_process_round(messages: int, warm: int, auth: bool) -> tuple[float, float]:
    settings, token = _settings(auth)
    md = (("authorization", f"Bearer {token}"),) if auth else ()
    seen: dict[str, Any] = {}
    real_server: Callable[..., Any] = api_server.aio.server

    def capture(*args: Any, **kwargs: Any) -> Any:
        seen["interceptors"] = list(kwargs.get("interceptors") or ())
        return real_server(*args, **kwargs)

    api_server.aio.server = capture
    try:
        api = ApiServer(settings, InstantEngine())  # answers the calls the smoke makes
    finally:
        api_server.aio.server = real_server
    handlers = _Handlers()
    rpc.add_CellserveServiceServicer_to_server(api.servicer, handlers)
    interceptors = seen["interceptors"]
    service = "/cellserve.v1.CellserveService/"

    # the stream: one open, then appends in lockstep (each answered before the next is read)
    queue: asyncio.Queue[svc.SessionRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[svc.SessionRequest]:
        while True:
            yield await queue.get()

    handler = await _intercepted(interceptors, handlers, service + "Session", md)
    responses = handler.stream_stream(requests(), _Context(md))
    queue.put_nowait(svc.SessionRequest(request_id=1, open=svc.SessionRequest.Open()))
    await anext(responses)
    started = 0.0
    for i in range(warm + messages):
        if i == warm:
            started = time.process_time()
        queue.put_nowait(
            svc.SessionRequest(
                request_id=i + 2, append=svc.SessionRequest.Append(offset=i, input=types.Input(text="a"))
            )
        )
        data = handler.response_serializer(await anext(responses))  # as grpc does with each response
        if i == 0:  # the first answer read back: a prediction (not an in-band error)
            assert svc.SessionResponse.FromString(data).WhichOneof("result") == "prediction", data
    stream = (time.process_time() - started) / messages
    await responses.aclose()

    # unary Append: a call each (interceptor chain and handler), as grpc.aio makes one per call
    for i in range(warm + messages):
        if i == warm:
            started = time.process_time()
        h = await _intercepted(interceptors, handlers, service + "Append", md)
        await h.unary_unary(svc.AppendRequest(session_id=SID, offset=i, input=types.Input(text="a")), _Context(md))
    unary = (time.process_time() - started) / messages
    return stream, unary


async def wire_round(messages: int, warm: int, auth: bool) -> tuple[float, float]:
    settings, token = _settings(auth)
    engine = InstantEngine()
    # stream: appends warm+1 .. warm+messages; unary: the same after both streams
    stream_start, stream_end = warm, warm + messages
    unary_start, unary_end = stream_end + warm, stream_end + warm + messages
    engine.mark_at = {stream_start, stream_end, unary_start, unary_end}
    api = ApiServer(settings, engine)  # answers the calls the smoke makes
    port = await api.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, f"127.0.0.1:{port}", str(messages), str(warm), token if auth else ""
        )
        rc = await proc.wait()
        if rc != 0:
            raise SystemExit(f"client failed: {rc}")
    finally:
        await api.shutdown()
    m = engine.marks
    return (m[stream_end] - m[stream_start]) / messages, (m[unary_end] - m[unary_start]) / messages


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--warm", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--auth", action="store_true", help="with a tokens file (authentication on)")
    p.add_argument("--wire", action="store_true", help="a real server and a client process (grpc included)")
    args = p.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    streams, unaries = [], []
    measure = wire_round if args.wire else in_process_round
    for i in range(args.rounds):
        s, u = asyncio.run(measure(args.messages, args.warm, args.auth))
        streams.append(s)
        unaries.append(u)
        print(f"round {i + 1}: stream Append {s * 1e6:.0f} us CPU/msg, unary Append {u * 1e6:.0f} us CPU/call")
    mid = len(streams) // 2
    print(
        f"of {args.rounds} rounds, min / median: stream {min(streams) * 1e6:.0f} / {sorted(streams)[mid] * 1e6:.0f} "
        f"us/msg, unary {min(unaries) * 1e6:.0f} / {sorted(unaries)[mid] * 1e6:.0f} us/call "
        f"(auth {'on' if args.auth else 'off'}, {'wire' if args.wire else 'in process'})"
    )


if __name__ == "__main__":
    main()
