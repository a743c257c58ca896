"""One ModelStreamInfer stream: requests are submitted in the order read, responses are written
in that order, and a failed request is answered in-band (``error_message``, with the status
code and hints as response parameters) while the stream goes on.

Pipelined: the reader submits each request without waiting for earlier answers (at most
``MAX_IN_FLIGHT`` unanswered); a START waits for its session to open before the next request
is read, so later requests of the sequence find it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ...errors import Unavailable
from ..in_order import InOrder
from ..recorder import code_name
from ..status import status_of
from .infer import Inference
from .pb import kpb

MAX_IN_FLIGHT = 64  # unanswered requests per stream; bounds the memory one client can pin
_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"

Pending = tuple[kpb.ModelInferRequest, "asyncio.Future[kpb.ModelInferResponse] | Exception"]


def error_response(request: kpb.ModelInferRequest, exc: BaseException) -> kpb.ModelStreamInferResponse:
    st = status_of(exc, _METHOD)
    response = kpb.ModelStreamInferResponse(
        error_message=st.message,
        infer_response=kpb.ModelInferResponse(model_name=request.model_name, id=request.id),
    )
    params = response.infer_response.parameters
    params["error_code"].string_param = code_name(st.code)
    if st.retry_after_ms:
        params["retry_after_ms"].int64_param = st.retry_after_ms
    if st.expected_offset is not None:
        params["expected_offset"].uint64_param = st.expected_offset
    return response


class InferStream:
    def __init__(self, inference: Inference, owner: str) -> None:
        self._inference = inference
        self._owner = owner
        self._unanswered: InOrder[Pending] = InOrder(MAX_IN_FLIGHT)
        self._reader: asyncio.Task[None] | None = None
        self._awaiting_input = False
        self._stop = False
        self.stopped_by_drain = False

    def stop_reading(self) -> None:
        """Drain: read nothing more; what was read is still answered."""
        self._stop = self.stopped_by_drain = True
        if self._reader is not None and self._awaiting_input:
            self._reader.cancel()

    async def run(
        self, requests: AsyncIterator[kpb.ModelInferRequest], live: set[InferStream] | None = None
    ) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        """The stream's responses; it is in ``live`` (the server's open streams, stopped on
        drain) while it runs. Stopped by drain, it ends with UNAVAILABLE once it has answered
        what it read."""
        self._reader = asyncio.create_task(self._read(requests))
        if live is not None:
            live.add(self)
        try:
            while (item := await self._unanswered.head()) is not None:
                request, pending = item
                if isinstance(pending, Exception):
                    yield error_response(request, pending)
                else:
                    try:
                        response = await asyncio.shield(pending)  # an ended stream leaves it be
                    except Exception as exc:  # noqa: BLE001 (answered in-band; status_of logs the unexpected)
                        yield error_response(request, exc)
                    else:
                        yield kpb.ModelStreamInferResponse(infer_response=response)
                self._unanswered.pop()
            await self._reader  # re-raises a reader failure (not a clean end of input)
        finally:
            if live is not None:
                live.discard(self)
            if not self._reader.done():
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
        if self.stopped_by_drain:
            raise Unavailable("the server is shutting down; the sequences live on until they expire")

    async def _read(self, requests: AsyncIterator[kpb.ModelInferRequest]) -> None:
        it = aiter(requests)
        try:
            while not self._stop:
                self._awaiting_input = True
                try:
                    request = await anext(it)
                except StopAsyncIteration:
                    break
                finally:
                    self._awaiting_input = False
                if self._unanswered.full():
                    await self._unanswered.room()
                pending: asyncio.Future[kpb.ModelInferResponse] | Exception
                try:
                    pending = await self._inference.submit(request, self._owner)
                except Exception as exc:  # noqa: BLE001 (answered in-band, in order)
                    pending = exc
                self._unanswered.put((request, pending))
        except asyncio.CancelledError:
            if not self._stop:
                raise
        finally:
            self._unanswered.close()
