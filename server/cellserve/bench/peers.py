"""The two peer servers, grpc.aio servicers of the same ``CellserveService.Session`` stream as
cellserve (open, append, complete, close), so the load generator cannot tell them apart:

- ``echo``: answers every append with one fixed Prediction and every completion with fixed
  one-character chunks. No model: the transport limit of grpc.aio with this message shape.
- ``naive``: what tutorials do. A dict of per-session state tensors, and a batch-1 model step
  per request run inside the event loop (blocking it), PyTorch defaults (threads, oneDNN).

``python -m cellserve.bench.peers echo|naive --port 0`` prints ``peer listening on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

_FIXED_TOP = [(" ", 0.31), ("e", 0.12), ("t", 0.08), ("a", 0.07), ("o", 0.06)]
_UNIMPLEMENTED = 12


def _error(request_id: int, message: str) -> svc.SessionResponse:
    return svc.SessionResponse(
        request_id=request_id, error=svc.SessionResponse.Error(code=_UNIMPLEMENTED, message=message)
    )


def _opened(request_id: int, session_id: str, model: str) -> svc.SessionResponse:
    return svc.SessionResponse(
        request_id=request_id,
        opened=svc.SessionResponse.Opened(
            session=types.SessionInfo(session_id=session_id, model=model), model=types.ModelInfo(name=model)
        ),
    )


def _prediction(request_id: int, position: int, top: list[tuple[str, float]]) -> svc.SessionResponse:
    return svc.SessionResponse(
        request_id=request_id,
        prediction=types.Prediction(
            position=position,
            top_characters=types.TopCharacters(
                entries=[types.CharProbability(character=c, probability=p) for c, p in top]
            ),
        ),
    )


def _chunk(request_id: int, text: str, done: bool) -> svc.SessionResponse:
    return svc.SessionResponse(
        request_id=request_id,
        completion_chunk=types.CompletionChunk(
            alternative=0, text=text, done=done, finish_reason=types.FINISH_REASON_LENGTH if done else 0
        ),
    )


def _max_chars(c: svc.SessionRequest.Complete) -> int:
    return c.max_chars if c.HasField("max_chars") else 32


class EchoServicer(rpc.CellserveServiceServicer):  # type: ignore[misc]
    async def Session(
        self, requests: AsyncIterator[svc.SessionRequest], context: Any
    ) -> AsyncIterator[svc.SessionResponse]:
        sid = secrets.token_hex(16)
        async for r in requests:
            op = r.WhichOneof("op")
            if op == "append":
                k = r.append.top_k if r.append.HasField("top_k") else 5
                yield _prediction(r.request_id, r.append.offset + len(r.append.input.text), _FIXED_TOP[:k])
            elif op in ("open", "attach"):
                yield _opened(r.request_id, sid, "echo")
            elif op == "complete":
                n = _max_chars(r.complete)
                for i in range(n):
                    yield _chunk(r.request_id, "e", i == n - 1)
            elif op == "close":
                yield svc.SessionResponse(request_id=r.request_id, closed=svc.SessionResponse.Closed())
            else:
                yield _error(r.request_id, f"{op} is not implemented by the echo peer")


class NaiveServicer(rpc.CellserveServiceServicer):  # type: ignore[misc]
    """Per-session tensors in a dict; one batch-1 step per request, inside the event loop."""

    def __init__(self, model_folder: Path, device: str) -> None:
        import torch

        from ..nn.checkpoint import load_model

        lm = load_model(model_folder)
        self.torch = torch
        self.device = torch.device(device)
        self.model = lm.model.to(self.device).eval()
        self.vocab = lm.vocab
        self.name = lm.spec.name
        self.states: dict[str, Any] = {}  # session id -> (h, c) of [layers, 1, hidden]
        self.last: dict[str, Any] = {}  # session id -> the latest next-character distribution

    def _step(self, sid: str, text: str) -> Any:
        torch = self.torch
        with torch.no_grad():
            x = torch.tensor([self.vocab.encode(text)], device=self.device)
            logits, self.states[sid] = self.model(x, self.states[sid])
            self.last[sid] = torch.softmax(logits[0, -1], dim=-1)
            return self.last[sid]

    async def Session(
        self, requests: AsyncIterator[svc.SessionRequest], context: Any
    ) -> AsyncIterator[svc.SessionResponse]:
        sid = ""
        position = 0
        async for r in requests:
            op = r.WhichOneof("op")
            if op == "open":
                sid = secrets.token_hex(16)
                self.states[sid] = self.model.init_state(1, self.device)
                yield _opened(r.request_id, sid, self.name)
            elif op == "append" and sid:
                text = r.append.input.text
                probs = self._step(sid, text)
                position += len(text)
                k = r.append.top_k if r.append.HasField("top_k") else 5
                vals, idx = probs.topk(k)
                top = [(self.vocab.char(i) or "\ufffd", p) for i, p in zip(idx.tolist(), vals.tolist(), strict=True)]
                yield _prediction(r.request_id, position, top)
            elif op == "complete" and sid:
                n = _max_chars(r.complete)
                saved = self.states[sid], self.last.get(sid)
                probs = self.last.get(sid)
                tok = int(probs.argmax()) if probs is not None else 1
                for i in range(n):  # greedy, batch 1, one step per character; the session is restored after
                    ch = self.vocab.char(tok) or "\ufffd"
                    tok = int(self._step(sid, ch).argmax())
                    yield _chunk(r.request_id, ch, i == n - 1)
                self.states[sid], self.last[sid] = saved
            elif op == "close":
                self.states.pop(sid, None)
                self.last.pop(sid, None)
                sid = ""
                yield svc.SessionResponse(request_id=r.request_id, closed=svc.SessionResponse.Closed())
            else:
                yield _error(r.request_id, f"{op} is not implemented by the naive peer")
        self.states.pop(sid, None)
        self.last.pop(sid, None)


async def _serve(
    kind: str, host: str, port: int, model_folder: Path | None, device: str, reuse_port: bool = False
) -> None:
    # reuse_port: several peer processes share one port (the bench's multi-process echo)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    if kind == "echo":
        servicer: rpc.CellserveServiceServicer = EchoServicer()
    else:
        assert model_folder is not None
        servicer = NaiveServicer(model_folder, device)
    rpc.add_CellserveServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"{kind} peer listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cellserve.bench.peers", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["echo", "naive"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reuse-port", action="store_true", help="share the port with other processes (SO_REUSEPORT)")
    a = p.parse_args(argv)
    folder = a.model_dir / a.model if a.model_dir and a.model else None
    if a.kind == "naive" and folder is None:
        p.error("naive needs --model-dir and --model")
    asyncio.run(_serve(a.kind, a.host, a.port, folder, a.device, a.reuse_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
