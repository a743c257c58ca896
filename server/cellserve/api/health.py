"""grpc.health.v1: liveness (service "") and readiness (``settings.readiness_service``).

Both report SERVING once the server is up; the server starts listening only after its models
are loaded, so SERVING means ready. On drain both turn NOT_SERVING for good (grpc's
``enter_graceful_shutdown``): load balancers and health-checking clients that watch either
name stop sending new work, while calls in flight are still answered.
"""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

LIVENESS = ""


class Health:
    def __init__(self, readiness_service: str) -> None:
        self.servicer = health.aio.HealthServicer()
        self._names = (LIVENESS, readiness_service)

    async def serving(self) -> None:
        for name in self._names:
            await self.servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def set_serving(self, serving: bool) -> None:
        """Follows an engine in another process (a frontend): NOT_SERVING while it does not
        answer, SERVING again when it does. Ignored once draining."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._names:
            await self.servicer.set(name, status)

    async def not_serving(self) -> None:
        await self.servicer.enter_graceful_shutdown()
