"""InspectGates in a frontend: forwarded to the engine core, which holds the weights (a
frontend imports no torch). Errors come back as the core's own ``cellserve.errors``."""

from __future__ import annotations

from ..api.pb import svc
from .client import ZmqEngineClient


class CoreGates:
    def __init__(self, client: ZmqEngineClient) -> None:
        self._client = client

    async def inspect(self, request: svc.InspectGatesRequest) -> svc.InspectGatesResponse:
        data = await self._client.inspect_gates(request.SerializeToString())
        response: svc.InspectGatesResponse = svc.InspectGatesResponse.FromString(data)
        return response
