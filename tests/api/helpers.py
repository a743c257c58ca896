"""Client-side helpers for the wire tests: a synchronous stream wrapper and the offline oracle."""

from __future__ import annotations

import queue
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import torch
from cellserve.nn.checkpoint import load_model
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

STREAM_DEADLINE_S = 120.0


class SyncStream:
    """One Session stream driven from a test: ``send`` queues a request, ``recv`` reads the
    next response (the stream's deadline bounds every wait)."""

    def __init__(self, stub: rpc.CellserveServiceStub, metadata: Sequence[tuple[str, str]] | None = None) -> None:
        self._requests: queue.Queue[svc.SessionRequest | None] = queue.Queue()
        self.call = stub.Session(iter(self._requests.get, None), timeout=STREAM_DEADLINE_S, metadata=metadata)
        self._next_id = 0

    def send(self, **op: Any) -> int:
        self._next_id += 1
        self._requests.put(svc.SessionRequest(request_id=self._next_id, **op))
        return self._next_id

    def recv(self) -> svc.SessionResponse:
        return next(self.call)

    def ask(self, **op: Any) -> svc.SessionResponse:
        """Sends one request and returns its (single) response."""
        rid = self.send(**op)
        response = self.recv()
        assert response.request_id == rid
        return response

    def open(self, model: str = "") -> svc.SessionResponse.Opened:
        r = self.ask(open=svc.SessionRequest.Open(model=model))
        assert r.WhichOneof("result") == "opened", r
        return r.opened

    def append(self, offset: int, text: str, **kw: Any) -> svc.SessionResponse:
        return self.ask(append=svc.SessionRequest.Append(offset=offset, input=types.Input(text=text), **kw))

    def close(self) -> None:
        self._requests.put(None)

    def cancel(self) -> None:
        self.call.cancel()
        self._requests.put(None)


def error_of(response: svc.SessionResponse) -> tuple[grpc.StatusCode, str]:
    assert response.WhichOneof("result") == "error", response
    code = next(c for c in grpc.StatusCode if c.value[0] == response.error.code)
    return code, response.error.message


class Offline:
    """The oracle: the model's full-sequence forward over a session's whole text, in fp32."""

    def __init__(self, model_dir: Path, name: str) -> None:
        loaded = load_model(model_dir / name, "cpu")
        self.model = loaded.model.eval()
        self.vocab = loaded.vocab

    @torch.no_grad()
    def log_probs(self, text: str) -> torch.Tensor:
        """[len(text), V]: row t is the log-distribution of the character after text[: t + 1]."""
        logits, _ = self.model(self.vocab.encode_tensor(text)[None])
        return torch.log_softmax(logits[0].float(), dim=-1)

    def check_prediction(
        self, prediction: types.Prediction, log_probs: torch.Tensor, k: int, tol: float = 1e-5
    ) -> None:
        """The top-k of ``prediction`` equals the distribution ``log_probs`` [V] to ``tol``."""
        probs = log_probs.exp()
        entries = [(e.character, e.probability) for e in prediction.top_characters.entries]
        assert len(entries) == min(k, len(self.vocab))
        for ch, p in entries:
            assert abs(p - probs[self.vocab.id(ch)].item()) <= tol, (ch, p, probs[self.vocab.id(ch)].item())
        ps = [p for _, p in entries]
        assert ps == sorted(ps, reverse=True)
        assert min(ps) >= probs.topk(k).values[-1].item() - tol  # it is the top k, not any k

    def greedy(self, text: str, chars: int) -> str:
        out = ""
        for _ in range(chars):
            out += self.vocab.char(int(self.log_probs(text + out)[-1].argmax()))
        return out
