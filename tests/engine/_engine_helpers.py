"""Helpers shared by the engine tests: engines on the random test models and offline references."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from cellserve.config import Settings
from cellserve.engine.engine import Engine
from cellserve.engine.types import Prediction
from cellserve.nn.checkpoint import LoadedModel
from cellserve.repository import ModelRepository

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Runs an async test body on a fresh loop (no pytest-asyncio needed)."""

    async def main() -> T:
        return await fn()

    return asyncio.run(main())


def make_settings(model_dir: Path, **kw: Any) -> Settings:
    return Settings(model_dir=model_dir, device=kw.pop("device", "cpu"), **kw)


@asynccontextmanager
async def engine(model_dir: Path, **kw: Any) -> AsyncIterator[Engine]:
    st = make_settings(model_dir, **kw)
    eng = Engine(st, ModelRepository.load(st))
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()


@torch.inference_mode()
def offline_probs(lm: LoadedModel, text: str) -> torch.Tensor:
    """[len(text), V] next-character probabilities after each prefix, from ONE full-sequence
    forward of the whole text from the zero state (the oracle)."""
    tokens = lm.vocab.encode_tensor(text).to(lm.model.head.weight.device)
    logits, _ = lm.model(tokens[None])
    return logits[0].double().softmax(-1).cpu()


def char_id(lm: LoadedModel, ch: str) -> int:
    return lm.vocab.id(ch)  # "\ufffd" (the unknown entry as printed) is not in the vocabulary: 0


def assert_prediction_matches(
    lm: LoadedModel, pred: Prediction, probs_at: torch.Tensor, k: int, tol: float = 1e-5
) -> None:
    """pred.top_k equals the offline top-k at that position: same probabilities (sorted) and each
    reported character carries its offline probability."""
    assert len(pred.top_k) == k
    want = probs_at.topk(k).values.tolist()
    got = [p for _, p in pred.top_k]
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < tol, (got, want)
    for ch, p in pred.top_k:
        assert abs(probs_at[char_id(lm, ch)].item() - p) < tol


@torch.inference_mode()
def offline_greedy(lm: LoadedModel, text: str, n: int) -> str:
    """Greedy decoding by repeated full forwards of the growing token list."""
    ids = lm.vocab.encode(text)
    out = []
    for _ in range(n):
        logits, _ = lm.model(torch.tensor(ids)[None])
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        out.append(lm.vocab.char(nxt))
    return "".join(out)


class GatedRunner:
    """Slows the device worker down at will: while ``closed``, every ``ModelRunner.execute``
    call waits for a permit, and each call announces itself, so a test can act while an
    iteration is running (no sleeps: it waits for the announcements)."""

    def __init__(self) -> None:
        self._permits = threading.Semaphore(0)
        self._entered = threading.Semaphore(0)
        self.closed = True

    def install(self, monkeypatch: Any) -> None:
        from cellserve.engine.runner import ModelRunner

        real = ModelRunner.execute

        def execute(runner: ModelRunner, plan: Any) -> Any:
            if self.closed:
                self._entered.release()
                if not self._permits.acquire(timeout=60):
                    raise RuntimeError("the test never let this iteration run")
            return real(runner, plan)

        monkeypatch.setattr(ModelRunner, "execute", execute)

    async def running(self) -> None:
        """Returns once an iteration is waiting in the device worker."""
        if not await asyncio.to_thread(self._entered.acquire, True, 60):
            raise TimeoutError("no iteration reached the device worker")

    def release(self) -> None:
        self._permits.release()

    def open(self) -> None:
        self.closed = False
        for _ in range(64):
            self._permits.release()
