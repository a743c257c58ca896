"""Authentication: who is calling, decided once per call before any handler runs.

One server interceptor (``AuthInterceptor``) wraps every method except the health service
(probes carry no credentials). A call proves its tenant by

1. ``authorization: Bearer <token>``, a token of the tokens file (``tokens``), or else
2. with mTLS (``tls_client_ca``), its client certificate: the tenant is the certificate
   subject's Common Name (CN). Quota overrides apply when the tokens file has a tenant of
   that name.

A call with neither, or with an unknown token, ends with UNAUTHENTICATED before any session is
looked up. The tenant is then this call's ``Principal`` (a context variable, inherited by the
tasks the call starts) and the owner of every session and snapshot it creates: another tenant's
session is NOT_FOUND, exactly like one that does not exist.

The tenant's quotas (from the tokens file) are sent to the engine core with each call
(``EngineClient.set_limits``), which counts them for every API and every frontend in one place
(``engine/admission.py``).

A stream is authenticated once when it opens and its token is checked again at every message:
once the token is revoked (the tokens file changed), the next message ends the stream with
UNAUTHENTICATED. The stream's session is kept; a valid token of the same tenant may attach.

The tokens file is re-read when it changes (checked at most once per ``RELOAD_CHECK_S`` on the
call path) and on SIGHUP (``TokenStore.reload``); a file that no longer parses is reported in
the log and the previous tenants stay in force.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from ..config import Settings
from ..engine.admission import Limits
from ..engine.client import EngineClient
from ..errors import CellserveError, Unauthenticated
from ..tokens import Tenant, TokensFile, TokensFileError, TokenTable, file_stamp, parse
from .recorder import NULL_RECORDER, Recorder

log = logging.getLogger("cellserve.auth")

RELOAD_CHECK_S = 1.0
HEALTH_PREFIX = "/grpc.health.v1.Health/"
SERVICE_PREFIX = "/cellserve.v1.CellserveService/"
STREAMS_OF_REQUESTS = frozenset({"Session", "ModelStreamInfer"})  # long-lived: revocation is checked per message
MISSING = "missing credentials: send the metadata 'authorization: Bearer <token>'"
UNKNOWN = "unknown or revoked token"
REVOKED = "the token of this stream was revoked; open a new stream with a valid token (the session is kept)"
BAD_SCHEME = "the authorization metadata must be 'Bearer <token>'"


@dataclass(frozen=True)
class Principal:
    tenant: str
    limits: Limits
    token: str | None = None  # the bearer token it proved itself with (None: a client certificate)


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("cellserve_principal", default=None)


def current_principal() -> Principal | None:
    """The authenticated caller of the running call (None: authentication is off)."""
    return _principal.get()


TokensSource = Callable[[bool], Awaitable[bytes]]
"""With several frontends: the tokens file as the engine core last read it with success
(``TokensFile`` JSON; ``True``: re-read it now), so every frontend loads the same version."""


class TokenStore:
    """The tokens file's current table; re-read on change (stat at most once a second, by
    ``refresh``) and on ``reload()`` (SIGHUP). With a ``source`` (several frontends) the file is
    read by the engine core and every frontend takes the core's version: a revocation followed
    at once by a broken file leaves the same tenants in force on every frontend."""

    def __init__(
        self,
        path: Path,
        defaults: Limits,
        clock: Callable[[], float] = time.monotonic,
        source: TokensSource | None = None,
    ) -> None:
        self.path = path
        self._defaults = defaults
        self._clock = clock
        self._source = source
        self._stamp = file_stamp(path)
        self.table = TokenTable(parse(path), defaults)  # raises TokensFileError: the server does not start
        self._checked = clock()
        self._refreshing: set[asyncio.Task[None]] = set()

    def reload(self) -> bool:
        """Re-reads the file now; False (and the old table kept) if it cannot be used. With a
        source, asks the core to re-read it and takes its version (soon after this returns)."""
        if self._source is not None:
            task = asyncio.get_running_loop().create_task(self.refresh(force=True))
            self._refreshing.add(task)
            task.add_done_callback(self._refreshing.discard)
            return True
        self._stamp = file_stamp(self.path)
        try:
            self.table = TokenTable(parse(self.path), self._defaults)
        except TokensFileError as e:
            log.error("tokens file not reloaded, the previous tenants stay in force: %s", e)
            return False
        log.info("tokens file reloaded: %d tenants, %d tokens", len(self.table.tenants), len(self.table))
        return True

    async def refresh(self, force: bool = False) -> None:
        """Re-reads the file if it changed (checked at most once per ``RELOAD_CHECK_S``)."""
        now = self._clock()
        if not force and now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        stamp = file_stamp(self.path)
        if not force and stamp == self._stamp:
            return
        if self._source is None:
            self.reload()
            return
        self._stamp = stamp
        try:
            data = await self._source(force)
        except CellserveError as e:  # the core cannot read it either: the tenants in force stay
            log.warning("tokens file not reloaded from the engine core: %s", e)
            return
        self.table = TokenTable(TokensFile.model_validate_json(data), self._defaults)


def _tenant_from_cert(context: aio.ServicerContext[Any, Any]) -> str | None:
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or ()
    for raw in names:
        name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if name:
            return name
    return None


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        settings: Settings,
        store: TokenStore | None,
        engine: EngineClient,
        recorder: Recorder = NULL_RECORDER,
    ) -> None:
        self._store = store
        self._mtls = settings.tls_client_ca is not None
        self._defaults = Limits.defaults(settings)
        self._engine = engine
        self._recorder = recorder

    def authenticate(self, context: aio.ServicerContext[Any, Any]) -> Principal | str:
        """The caller, or the message of an UNAUTHENTICATED refusal."""
        header = next((v for k, v in (context.invocation_metadata() or ()) if k == "authorization"), None)
        if header is not None and self._store is not None:
            value = header.decode("utf-8", "replace") if isinstance(header, bytes) else str(header)
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return BAD_SCHEME
            tenant = self._store.table.lookup(token.strip())
            if tenant is None:
                return UNKNOWN
            return Principal(tenant.name, tenant.limits, token.strip())
        if self._mtls and (name := _tenant_from_cert(context)) is not None:
            known = self._store.table.tenants.get(name) if self._store is not None else None
            t = known or Tenant(name, self._defaults)
            return Principal(t.name, t.limits)
        return MISSING

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        name = method.rsplit("/", 1)[-1]
        ours = method.startswith(SERVICE_PREFIX)
        kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, name, ours), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(handler.unary_stream, name, ours), **kw)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(self._streaming(handler.stream_stream, name, ours), **kw)
        return handler

    async def _admit(self, context: aio.ServicerContext[Any, Any], name: str, ours: bool) -> Principal:
        await self.refresh()
        who = self.authenticate(context)
        if isinstance(who, str):
            if ours:
                self._recorder.request(name, "UNAUTHENTICATED")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, who)
            raise AssertionError("unreachable: abort raises")
        _principal.set(who)  # each call runs in a task of its own: nothing leaks to other calls
        # Before the call's own operations (submitted in order): the core counts with these.
        self._engine.set_limits(who.tenant, who.limits)
        return who

    async def refresh(self) -> None:
        if self._store is not None:
            await self._store.refresh()

    def still_valid(self, p: Principal) -> bool:
        """The token ``p`` proved itself with is still in the tokens file (re-read if it changed)."""
        if p.token is None or self._store is None:
            return True
        t = self._store.table.lookup(p.token)
        return t is not None and t.name == p.tenant

    def _unary(self, behavior: Callable[..., Awaitable[Any]], name: str, ours: bool) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await self._admit(context, name, ours)
            return await behavior(request, context)

        return wrapped

    def _streaming(
        self, behavior: Callable[..., AsyncIterator[Any]], name: str, ours: bool
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            p = await self._admit(context, name, ours)
            if name in STREAMS_OF_REQUESTS:
                request = self._revocable(request, p)
            async for response in behavior(request, context):
                yield response

        return wrapped

    async def _revocable(self, requests: AsyncIterator[Any], p: Principal) -> AsyncIterator[Any]:
        """The stream's requests, while its token is valid: the first one after a revocation
        ends the stream with UNAUTHENTICATED (the session lives on)."""
        async for req in requests:
            await self.refresh()
            if not self.still_valid(p):
                raise Unauthenticated(REVOKED)
            yield req
