"""The gRPC server: CellserveService, the KServe v2 GRPCInferenceService, health and reflection on
one grpc.aio server, and the drain sequence for a graceful stop."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from ..config import Settings
from ..engine.admission import Limits
from ..engine.client import EngineClient
from .admission import StreamAdmission
from .auth import Authenticator, TokensSource, TokenStore
from .calls import CallInterceptor
from .health import Health
from .kserve import KSERVE_SERVICE_NAME, KServeServicer
from .kserve.pb import kpb, krpc
from .malformed import MalformedCounter
from .pb import SERVICE_NAME, rpc, svc
from .recorder import NULL_RECORDER, Recorder
from .reflection_pool import reflection_pool
from .servicer import CellserveServicer, Gates
from .transport import server_credentials, server_options

if TYPE_CHECKING:
    from ..handoff.coordinator import Handoff
    from .gates import ModelLookup

log = logging.getLogger("cellserve.api")


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class ApiServer:
    def __init__(
        self,
        settings: Settings,
        engine: EngineClient,
        recorder: Recorder = NULL_RECORDER,
        gate_models: ModelLookup | None = None,
        *,
        reuse_port: bool = False,
        frontend: str = "",
        gates: Gates | None = None,
        handoff_writer: bool = True,
        tokens_source: TokensSource | None = None,
    ) -> None:
        """``gate_models``: the loaded models, for InspectGates (only a process that loaded them);
        ``gates``: what answers InspectGates otherwise (a frontend's forwarder to the core);
        ``reuse_port``: several frontend processes share the port (SO_REUSEPORT);
        ``frontend``: this process's frontend number, sent as ``cellserve-frontend`` metadata;
        ``handoff_writer``: with a session store, this server writes the sessions on drain and
        in the background sync (one per replica: the single process, or frontend 0); every
        server recovers missed sessions from the store;
        ``tokens_source``: where a frontend reads the tokens file (the engine core's copy)."""
        self._settings = settings
        self._engine = engine
        self.handoff: Handoff | None = None
        self._handoff_writer = handoff_writer
        self._sync: asyncio.Task[None] | None = None
        if settings.session_store is not None:
            from ..handoff.coordinator import Handoff, HandoffEngineClient
            from ..handoff.store import open_store

            store = open_store(settings)
            assert store is not None and settings.snapshot_key is not None  # Settings checks both
            self.handoff = Handoff(store, settings.snapshot_key.get_secret_value().encode(), engine)
            engine = HandoffEngineClient(engine, self.handoff)
        if gate_models is not None:
            from .gates import GateInspector  # imports torch: only where the models are loaded

            gates = GateInspector(gate_models, settings)
        self.servicer = CellserveServicer(engine, settings, recorder, gates, frontend=frontend)
        self.kserve = KServeServicer(engine, settings)
        self.health = Health(settings.readiness_service)
        # Raises TokensFileError / TlsFileError: the server does not start on a bad file.
        self.tokens = (
            TokenStore(settings.auth_tokens_file, Limits.defaults(settings), source=tokens_source)
            if settings.auth_tokens_file
            else None
        )
        self._credentials = server_credentials(settings)
        malformed = MalformedCounter(
            settings.malformed_log_interval_s,
            getattr(recorder, "malformed", lambda m: None),
            # a frontend forwards its counts to the core, which logs them for every frontend at once
            logs=not getattr(recorder, "logs_malformed_elsewhere", False),
        )
        self.admission = StreamAdmission(engine)
        calls = CallInterceptor(
            engine,
            self.admission,
            Authenticator(settings, self.tokens) if settings.auth_enabled else None,
            recorder,
            malformed,
            settings.stream_idle_timeout_s,
            services=(SERVICE_NAME, KSERVE_SERVICE_NAME),
        )
        self._server = aio.server(
            interceptors=[calls],  # the one wrapper of every call: auth, admission, request id, status
            options=server_options(settings, reuse_port=reuse_port),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        rpc.add_CellserveServiceServicer_to_server(self.servicer, self._server)
        krpc.add_GRPCInferenceServiceServicer_to_server(self.kserve, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, KSERVE_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self._server,
            pool=reflection_pool((svc.DESCRIPTOR, kpb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)),
        )
        self.port = 0

    async def start(self) -> int:
        """Binds and starts; returns the port (the chosen one when settings.port is 0)."""
        address = format_address(self._settings.host, self._settings.port)
        if self._credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, self._credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {format_address(self._settings.host, self._settings.port)}")
        await self._server.start()
        await self.health.serving()
        if self.handoff is not None and self._handoff_writer and self._settings.session_store_sync_s > 0:
            self._sync = asyncio.create_task(self.handoff.sync_forever(self._settings.session_store_sync_s))
        return self.port

    async def shutdown(self) -> None:
        """Drain, bounded by settings.drain_grace_s: health NOT_SERVING; streams stop reading;
        the engine refuses new sessions and finishes in-flight work; new calls keep being refused
        with UNAVAILABLE for drain_refusal_s; then grpc stops (calls still running after the rest
        of the grace are cancelled)."""
        deadline = time.monotonic() + self._settings.drain_grace_s
        await self.health.not_serving()
        self.admission.begin_drain()
        self.servicer.begin_drain()
        self.kserve.begin_drain()
        try:
            async with asyncio.timeout(self._settings.drain_grace_s):
                await self._engine.drain()
        except TimeoutError:
            log.warning("engine drain did not finish within drain_grace_s=%s", self._settings.drain_grace_s)
        if self._sync is not None:
            self._sync.cancel()
        if self.handoff is not None and self._handoff_writer:  # every live session, sealed, to the store
            loop = asyncio.get_running_loop()
            await self.handoff.drain(loop.time() + max(0.0, deadline - time.monotonic()))
        # New calls still get a clean UNAVAILABLE from the servicer for a moment; once gRPC is
        # stopping, a late call would see the transport's CANCELLED instead.
        await asyncio.sleep(min(self._settings.drain_refusal_s, max(0.0, deadline - time.monotonic())))
        await self._server.stop(max(0.0, deadline - time.monotonic()))
