"""The event loop thread's CPU per keystroke in the API layer, with no gRPC transport and no
model: N Session streams in one process, closed loop (each sends one Append and awaits its
answer), through the server's real call wrapper, servicer and stream, over an engine that
answers every waiting call once per pass, as the real ones do:

- default: an in-loop engine that resolves all waiting appends in one ``call_soon`` (the single
  process's ``Engine`` hands each step's output to the loop that way);
- ``--zmq``: the frontend's ``ZmqEngineClient`` over a real ipc socket to a stand-in core
  thread that answers each ``ToCore`` with one ``ToFrontend`` (the multi-process frontend).

Each request is serialized (the driver's share, the same before and after a change) and read
by the method's request deserializer, and each response goes through its response serializer,
as grpc does on the loop's thread. Only the loop thread's CPU is counted
(``time.thread_time``), so the stand-in core costs nothing; the requests' own feeding (a queue
per stream) is counted and is the same before and after a change. An A/B tool for the per-message Python of ``api/`` and ``multiproc/client.py``;
on a shared machine compare rounds of the same run.

    .venv/bin/python scripts/frontend_cpu.py [--zmq] [--sessions 256] [--keystrokes 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import zmq
from cellserve.api import ApiServer
from cellserve.api import server as api_server
from cellserve.config import Settings
from cellserve.engine.types import ModelInfo, Prediction, SessionInfo
from cellserve.multiproc import messages as m
from cellserve.multiproc.client import ZmqEngineClient
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

sys.path.insert(0, str(Path(__file__).parent))
from call_overhead_smoke import InstantEngine, _Context, _Handlers, _intercepted  # noqa: E402

MODEL = ModelInfo("instant", "lstm", 1, 4, ("", "a", "b"), "0" * 64, None, True)
TOP = (("a", 0.5), ("b", 0.25), ("c", 0.125), ("d", 0.0625), ("", 0.0625))


class StepEngine(InstantEngine):
    """Appends wait for the next "step": one ``call_soon`` that answers every waiting append."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: list[tuple[asyncio.Future[Prediction], int]] = []

    def append(self, owner: str, session_id: str, offset: int, text: str, options: Any = None) -> Awaitable[Prediction]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Prediction] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._step)
        self._waiting.append((fut, offset + len(text)))
        return fut

    def _step(self) -> None:
        waiting, self._waiting = self._waiting, []
        for fut, position in waiting:
            fut.set_result(Prediction(position, TOP))


def stand_in_core(ctx: zmq.Context[Any], address: str, stop: threading.Event) -> None:
    """Answers each ToCore at once: sessions, leases, models, appends (a Prediction), closes."""
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(address)
    decoder = msgspec.msgpack.Decoder(m.ToCore)
    sessions = 0
    while not stop.is_set():
        if not sock.poll(50):
            continue
        who, data = sock.recv_multipart()
        replies: list[m.ReplyOut] = []
        for op in decoder.decode(data).ops:
            if isinstance(op, m.Append):
                replies.append(m.OkOut(op.id, Prediction(op.offset + len(op.text), TOP)))
            elif isinstance(op, m.Open):
                sessions += 1
                replies.append(m.OkOut(op.id, SessionInfo(f"{sessions:032x}", MODEL.name, 0, 0.0, 0.0)))
            elif isinstance(op, m.Models):
                replies.append(m.OkOut(op.id, [MODEL]))
            elif isinstance(op, m.OpenStream):
                replies.append(m.OkOut(op.id, 1))
            elif isinstance(op, m.Close):
                replies.append(m.OkOut(op.id, None))
        if replies:
            sock.send_multipart([who, m.encode(m.ToFrontendOut(replies))])
    sock.close(linger=0)


class Typist:
    """One Session stream driven like the load generator's closed loop."""

    def __init__(
        self,
        responses: AsyncIterator[svc.SessionResponse | bytes],
        queue: asyncio.Queue[Any],
        serialize: Callable[[Any], bytes],
        deserialize: Callable[[bytes], Any],
    ):
        self.responses = responses
        self.queue = queue
        self.serialize = serialize  # as grpc does with each response, on the loop's thread
        self.deserialize = deserialize
        self.rid = 1
        self.offset = 0

    async def type(self, until: list[int], counter: list[int]) -> None:
        while counter[0] < until[0]:
            self.rid += 1
            self.queue.put_nowait(  # the bytes a client sends, read by the method's deserializer as grpc does
                self.deserialize(
                    svc.SessionRequest(
                        request_id=self.rid,
                        append=svc.SessionRequest.Append(offset=self.offset, input=types.Input(text="a"), top_k=5),
                    ).SerializeToString()
                )
            )
            data = self.serialize(await anext(self.responses))
            if self.rid == 2:  # the first answer read back: a prediction (not an in-band error)
                assert svc.SessionResponse.FromString(data).WhichOneof("result") == "prediction", data
            self.offset += 1
            counter[0] += 1


async def one_round(zmq_client: bool, sessions: int, keystrokes: int) -> float:
    settings = Settings(host="127.0.0.1", port=0)
    ctx: zmq.Context[Any] = zmq.Context()
    stop = threading.Event()
    core: threading.Thread | None = None
    engine: Any
    if zmq_client:
        address = f"ipc://{tempfile.mkdtemp()}/core"
        core = threading.Thread(target=stand_in_core, args=(ctx, address, stop), daemon=True)
        core.start()
        engine = ZmqEngineClient(address, 0)
        await engine.start()
    else:
        engine = StepEngine()
    seen: dict[str, Any] = {}
    real_server = api_server.aio.server

    def capture(*args: Any, **kwargs: Any) -> Any:
        seen["interceptors"] = list(kwargs.get("interceptors") or ())
        return real_server(*args, **kwargs)

    api_server.aio.server = capture
    try:
        api = ApiServer(settings, engine)
    finally:
        api_server.aio.server = real_server
    handlers = _Handlers()
    rpc.add_CellserveServiceServicer_to_server(api.servicer, handlers)
    handler = await _intercepted(seen["interceptors"], handlers, "/cellserve.v1.CellserveService/Session", ())

    typists = []
    for _ in range(sessions):
        queue: asyncio.Queue[Any] = asyncio.Queue()  # what the deserializer read

        async def requests(q: asyncio.Queue[Any] = queue) -> AsyncIterator[Any]:
            while True:
                yield await q.get()

        responses = handler.stream_stream(requests(), _Context(()))
        queue.put_nowait(svc.SessionRequest(request_id=1, open=svc.SessionRequest.Open()))
        assert (await anext(responses)).HasField("opened")
        typists.append(Typist(responses, queue, handler.response_serializer, handler.request_deserializer))
    warm = keystrokes // 5
    counter, until = [0], [warm]
    await asyncio.gather(*(t.type(until, counter) for t in typists))  # warm-up
    counter[0], until[0] = 0, keystrokes
    started = time.thread_time()
    await asyncio.gather(*(t.type(until, counter) for t in typists))
    per_keystroke = (time.thread_time() - started) / counter[0]
    for t in typists:
        await t.responses.aclose()  # type: ignore[attr-defined]
    if zmq_client:
        await engine.stop()
    stop.set()
    if core is not None:
        core.join()
    ctx.term()
    return per_keystroke


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zmq", action="store_true", help="the frontend's ZmqEngineClient to a stand-in core")
    p.add_argument("--sessions", type=int, default=256)
    p.add_argument("--keystrokes", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    results = []
    for i in range(args.rounds):
        us = asyncio.run(one_round(args.zmq, args.sessions, args.keystrokes)) * 1e6
        results.append(us)
        print(f"round {i + 1}: {us:.1f} us loop-thread CPU per keystroke")
    print(
        f"{'zmq client' if args.zmq else 'in-loop engine'}, N={args.sessions}: "
        f"min {min(results):.1f}, median {sorted(results)[len(results) // 2]:.1f} us/keystroke"
    )


if __name__ == "__main__":
    main()
