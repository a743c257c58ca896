"""One ModelInfer request, for the unary call and the stream alike.

``submit`` runs in request order (a stream's reader calls it for each request before reading
the next): it checks the request, starts or finds the sequence, and submits the engine calls,
so the engine applies a sequence's requests in the order they were sent. It returns an
awaitable of the response; the rest (waiting for the prediction and any completion, closing
an ended sequence) runs in a task, so a stream's requests of other sequences do not wait.

An END's close is submitted with the request's append: the engine applies a session's
operations in call order, so it closes after the append is answered. Only with a completion
does the close wait for the completion's text (a close cancels a running completion).

Nothing changes unless a request succeeds: bad tensors or parameters are refused before any
session is touched, and a START whose first append fails closes its new session again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from ...config import Settings
from ...engine.client import EngineClient
from ...engine.types import AppendOptions, CompletionRequest, ModelInfo, Prediction
from ...errors import InvalidInput, NotFound
from .params import Params, parse
from .pb import kpb
from .sequences import Sequence, SequenceTable, not_live
from .statistics import Statistics
from .tensors import add_outputs, decode_inputs, requested_outputs

VERSION = "1"  # each model has one version; "" selects it too


class Inference:
    def __init__(self, engine: EngineClient, settings: Settings, statistics: Statistics) -> None:
        self._engine = engine
        self._settings = settings
        self.statistics = statistics
        self.sequences = SequenceTable(engine)
        self._models: dict[str, ModelInfo] = {}
        self._tasks: set[asyncio.Task[kpb.ModelInferResponse]] = set()

    async def models(self) -> dict[str, ModelInfo]:
        """The served models by name (the set never changes while the server runs)."""
        if not self._models:
            self._models = {m.name: m for m in await self._engine.models("")}
        return self._models

    async def model(self, name: str, version: str) -> ModelInfo:
        if not name:
            raise InvalidInput("model_name is required (ListModels or RepositoryIndex names the models)")
        info = (await self.models()).get(name)
        if info is None:
            raise NotFound(f"unknown model '{name}'")
        if version not in ("", VERSION):
            raise NotFound(f"model '{name}' has no version '{version}'; it has version {VERSION} only")
        return info

    async def submit(self, request: kpb.ModelInferRequest, owner: str) -> asyncio.Future[kpb.ModelInferResponse]:
        started = time.perf_counter_ns()
        model = await self.model(request.model_name, request.model_version)
        try:
            params = parse(request.parameters, self._settings)
            inputs = decode_inputs(request, self._settings.max_append_chars)
            outputs = requested_outputs(request, params.completion is not None)
            seq = await self._sequence(owner, model.name, params)
            offset = inputs.offset if inputs.offset is not None else seq.next_offset
            pred: Awaitable[Prediction] | None = None
            try:
                pred = self._engine.append(
                    owner, seq.session_id, offset, inputs.text, AppendOptions(top_k=params.top_k)
                )
                seq.submitted(offset, inputs.text)
                # Submitted now, so the completion forks the state right after this append.
                texts = self._complete(owner, seq.session_id, params.completion) if params.completion else None
            except Exception as exc:
                if pred is not None:  # the append went in but the completion was refused
                    asyncio.ensure_future(pred).add_done_callback(_retrieve)
                raise await self._failed(owner, model.name, seq, params, exc) from None
            closed: Awaitable[None] | None = None
            if params.end:
                self.sequences.forget(seq)  # the id may START again at once
                if texts is None:
                    closed = self.sequences.close(owner, seq)
        except Exception:
            self.statistics.fail(model.name, started)
            raise
        task = asyncio.create_task(
            self._finish(request, owner, model.name, seq, params, outputs, (pred, texts, closed), started)
        )
        self._tasks.add(task)  # held until done: an ended stream does not cancel an END's close
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[kpb.ModelInferResponse]) -> None:
        self._tasks.discard(task)
        _retrieve(task)  # a stream that ended early never reads it

    async def _sequence(self, owner: str, model: str, params: Params) -> Sequence:
        if params.start:
            return await self.sequences.start(owner, model, params.sequence, params.sequence_name)
        return await self.sequences.get(owner, model, params.sequence, params.sequence_name)

    async def _failed(self, owner: str, model: str, seq: Sequence, params: Params, exc: Exception) -> Exception:
        """The error to answer for a failed request of ``seq``, undoing a START."""
        if params.start:
            await self.sequences.abandon(owner, seq)
        elif isinstance(exc, NotFound):  # the session expired or was closed: the id is unknown now
            self.sequences.forget(seq)
            return not_live(model, params.sequence_name)
        return exc

    async def _finish(
        self,
        request: kpb.ModelInferRequest,
        owner: str,
        model: str,
        seq: Sequence,
        params: Params,
        outputs: list[str],
        answers: tuple[Awaitable[Prediction], Awaitable[list[str]] | None, Awaitable[None] | None],
        started: int,
    ) -> kpb.ModelInferResponse:
        pred, texts, closed = answers
        try:
            try:
                prediction = await pred
                completions = await texts if texts is not None else []
            except Exception as exc:
                raise await self._failed(owner, model, seq, params, exc) from None
            finally:
                if closed is not None:
                    await closed
                elif params.end:  # after the completion: a close would cancel it
                    await self.sequences.close(owner, seq)
        except Exception:
            self.statistics.fail(model, started)
            raise
        self.statistics.success(model, started)
        response = kpb.ModelInferResponse(model_name=model, model_version=VERSION, id=request.id)
        add_outputs(response, outputs, prediction, completions)
        return response

    def _complete(self, owner: str, session_id: str, req: CompletionRequest) -> Awaitable[list[str]]:
        chunks = self._engine.complete(owner, session_id, req)

        async def collect() -> list[str]:
            texts = [""] * req.n
            try:
                async for chunk in chunks:
                    texts[chunk.alternative] += chunk.text
            finally:
                await chunks.aclose()
            return texts

        return asyncio.ensure_future(collect())


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Marks an outcome nobody will read as read (asyncio would log it as never retrieved)."""
    if not fut.cancelled():
        fut.exception()
