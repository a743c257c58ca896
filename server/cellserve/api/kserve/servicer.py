"""``inference.GRPCInferenceService``: the KServe v2 / Triton surface, on the same server and
port as ``cellserve.v1``.

Errors are raised as ``cellserve.errors`` and become gRPC statuses in the shared interceptor
(``api.status``), like the native service's; on the stream they are answered in-band.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

from grpc import aio

from ... import __version__
from ...config import Settings
from ...engine.client import EngineClient
from ...engine.types import ModelInfo
from ...errors import NotFound, Unavailable
from ..owner import owner_of
from .infer import VERSION, Inference
from .pb import kpb, krpc, mc
from .statistics import Statistics
from .stream import InferStream
from .tensors import CONFIG_TYPES, INPUTS, OFFSET, OUTPUTS

Context: TypeAlias = aio.ServicerContext[Any, Any]
SERVER_NAME = "cellserve"
EXTENSIONS = ["model_configuration", "sequence", "statistics"]


def caller(context: Context) -> str:
    """The owner of the caller's sequences: the one place to take it from authentication."""
    return owner_of(context)


def platform(m: ModelInfo) -> str:
    return f"cellserve_{m.cell}"


class KServeServicer(krpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, engine: EngineClient, settings: Settings) -> None:
        self._settings = settings
        self._engine = engine
        self.inference = Inference(engine, settings, Statistics())
        self._streams: set[InferStream] = set()
        self._draining = False

    def begin_drain(self) -> None:
        """Not ready from now on; streams stop reading and answer what they have read."""
        self._draining = True
        for stream in list(self._streams):
            stream.stop_reading()

    def _check_serving(self) -> None:
        if self._draining:
            raise Unavailable("the server is shutting down; connect to another replica")

    # --- health and metadata ---------------------------------------------------------------

    async def ServerLive(self, request: kpb.ServerLiveRequest, context: Context) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: kpb.ServerReadyRequest, context: Context) -> kpb.ServerReadyResponse:
        return kpb.ServerReadyResponse(ready=not self._draining)

    async def ModelReady(self, request: kpb.ModelReadyRequest, context: Context) -> kpb.ModelReadyResponse:
        try:
            await self.inference.model(request.name, request.version)
        except NotFound:
            return kpb.ModelReadyResponse(ready=False)
        return kpb.ModelReadyResponse(ready=not self._draining)

    async def ServerMetadata(self, request: kpb.ServerMetadataRequest, context: Context) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: kpb.ModelMetadataRequest, context: Context) -> kpb.ModelMetadataResponse:
        m = await self.inference.model(request.name, request.version)
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        return kpb.ModelMetadataResponse(
            name=m.name,
            versions=[VERSION],
            platform=platform(m),
            inputs=[tensor(name=n, datatype=t, shape=[1]) for n, t in INPUTS.items()],
            outputs=[tensor(name=n, datatype=t, shape=[d]) for n, (t, d) in OUTPUTS.items()],
        )

    async def ModelConfig(self, request: kpb.ModelConfigRequest, context: Context) -> kpb.ModelConfigResponse:
        m = await self.inference.model(request.name, request.version)
        config = mc.ModelConfig(
            name=m.name,
            platform=platform(m),
            backend=SERVER_NAME,
            max_batch_size=0,
            input=[
                mc.ModelInput(name=n, data_type=CONFIG_TYPES[t], dims=[1], optional=n == OFFSET)
                for n, t in INPUTS.items()
            ],
            output=[mc.ModelOutput(name=n, data_type=CONFIG_TYPES[t], dims=[d]) for n, (t, d) in OUTPUTS.items()],
            sequence_batching=mc.ModelSequenceBatching(
                max_sequence_idle_microseconds=int(self._settings.session_idle_ttl_s * 1_000_000),
                direct=mc.ModelSequenceBatching.StrategyDirect(),
            ),
            model_transaction_policy=mc.ModelTransactionPolicy(decoupled=False),
        )
        return kpb.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: kpb.ModelStatisticsRequest, context: Context
    ) -> kpb.ModelStatisticsResponse:
        if request.name:
            names = [(await self.inference.model(request.name, request.version)).name]
        else:
            names = list(await self.inference.models())
        engine = {t.model: t for t in (await self._engine.stats(caller(context))).models}  # one query
        stats = self.inference.statistics
        return kpb.ModelStatisticsResponse(model_stats=[stats.message(n, VERSION, engine.get(n)) for n in names])

    async def RepositoryIndex(
        self, request: kpb.RepositoryIndexRequest, context: Context
    ) -> kpb.RepositoryIndexResponse:
        state = "UNAVAILABLE" if self._draining else "READY"
        if request.ready and self._draining:
            return kpb.RepositoryIndexResponse()
        index = kpb.RepositoryIndexResponse.ModelIndex
        models = await self.inference.models()
        return kpb.RepositoryIndexResponse(models=[index(name=n, version=VERSION, state=state) for n in models])

    # --- inference -------------------------------------------------------------------------

    async def ModelInfer(self, request: kpb.ModelInferRequest, context: Context) -> kpb.ModelInferResponse:
        self._check_serving()
        # Shielded: a cancelled call must not cancel the request's task (an END still closes).
        return await asyncio.shield(await self.inference.submit(request, caller(context)))

    def ModelStreamInfer(
        self, requests: AsyncIterator[kpb.ModelInferRequest], context: Context
    ) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        # Not a generator of its own: the call wrapper (api.calls), which admitted the stream
        # (its lease), iterates the stream's writer directly.
        return InferStream(self.inference, caller(context)).run(requests, live=self._streams)
