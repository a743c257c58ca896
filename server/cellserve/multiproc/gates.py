"""InspectGates in a frontend: checked here, run by the engine core, which holds the weights (a
frontend imports no torch). Errors come back as the core's own ``cellserve.errors``."""

from __future__ import annotations

from ..api.gates import query_of, response_of
from ..api.pb import svc
from ..config import Settings
from .client import ZmqEngineClient
from .routing import RoutingEngineClient


class CoreGates:
    def __init__(self, client: ZmqEngineClient | RoutingEngineClient, settings: Settings) -> None:
        self._client = client
        self._settings = settings

    async def inspect(self, request: svc.InspectGatesRequest) -> svc.InspectGatesResponse:
        report = await self._client.inspect_gates(query_of(request, self._settings))
        return response_of(report)
