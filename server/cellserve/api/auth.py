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

The interceptor also enforces the per-tenant quotas that can be decided from a request alone
(sessions on open/resume, characters per second on append, open streams, completions on
unary Complete); see ``quota``. On a Session stream a refused request is answered in-band and
the stream goes on (``RejectedRequest``).

The tokens file is re-read when it changes (checked at most once per ``RELOAD_CHECK_S`` on the
call path) and on SIGHUP (``TokenStore.reload``); a file that no longer parses is reported in
the log and the previous tenants stay in force.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from ..config import Settings
from ..errors import CapacityExceeded
from .malformed import RejectedRequest
from .quota import Lease, Limits, Quotas
from .recorder import NULL_RECORDER, Recorder
from .tokens import Tenant, TokensFileError, TokenTable, parse

log = logging.getLogger("cellserve.auth")

RELOAD_CHECK_S = 1.0
HEALTH_PREFIX = "/grpc.health.v1.Health/"
SERVICE_PREFIX = "/cellserve.v1.CellserveService/"
MISSING = "missing credentials: send the metadata 'authorization: Bearer <token>'"
UNKNOWN = "unknown or revoked token"
BAD_SCHEME = "the authorization metadata must be 'Bearer <token>'"


@dataclass(frozen=True)
class Principal:
    tenant: str
    limits: Limits
    quotas: Quotas


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("cellserve_principal", default=None)


def current_principal() -> Principal | None:
    """The authenticated caller of the running call (None: authentication is off)."""
    return _principal.get()


def completion_lease(n: int) -> Lease:
    """Holds ``n`` of the caller's completion alternatives (raises CapacityExceeded)."""
    p = _principal.get()
    if p is None:
        return Lease(lambda: None)
    return p.quotas.acquire_completions(p.tenant, p.limits, n)


class TokenStore:
    """The tokens file's current table; re-read on change (stat at most once a second) and on
    ``reload()`` (SIGHUP)."""

    def __init__(self, path: Path, defaults: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._defaults = defaults
        self._clock = clock
        self._stamp = self._stat()
        self.table = TokenTable(parse(path), defaults)  # raises TokensFileError: the server does not start
        self._checked = clock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> bool:
        """Re-reads the file now; False (and the old table kept) if it cannot be used."""
        self._stamp = self._stat()
        try:
            self.table = TokenTable(parse(self.path), self._defaults)
        except TokensFileError as e:
            log.error("tokens file not reloaded, the previous tenants stay in force: %s", e)
            return False
        log.info("tokens file reloaded: %d tenants, %d tokens", len(self.table.tenants), len(self.table))
        return True

    def maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        if self._stat() != self._stamp:
            self.reload()


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
        quotas: Quotas,
        recorder: Recorder = NULL_RECORDER,
    ) -> None:
        self._store = store
        self._mtls = settings.tls_client_ca is not None
        self._defaults = Limits.defaults(settings)
        self._quotas = quotas
        self._recorder = recorder

    def authenticate(self, context: aio.ServicerContext[Any, Any]) -> Principal | str:
        """The caller, or the message of an UNAUTHENTICATED refusal."""
        header = next((v for k, v in (context.invocation_metadata() or ()) if k == "authorization"), None)
        if header is not None and self._store is not None:
            value = header.decode("utf-8", "replace") if isinstance(header, bytes) else str(header)
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return BAD_SCHEME
            self._store.maybe_reload()
            tenant = self._store.table.lookup(token.strip())
            if tenant is None:
                return UNKNOWN
            return Principal(tenant.name, tenant.limits, self._quotas)
        if self._mtls and (name := _tenant_from_cert(context)) is not None:
            known = self._store.table.tenants.get(name) if self._store is not None else None
            t = known or Tenant(name, self._defaults)
            return Principal(t.name, t.limits, self._quotas)
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
        who = self.authenticate(context)
        if isinstance(who, str):
            if ours:
                self._recorder.request(name, "UNAUTHENTICATED")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, who)
            raise AssertionError("unreachable: abort raises")
        _principal.set(who)  # each call runs in a task of its own: nothing leaks to other calls
        return who

    async def _refuse(self, context: aio.ServicerContext[Any, Any], name: str, exc: CapacityExceeded) -> None:
        from .status import status_of

        st = status_of(exc)
        self._recorder.request(name, "RESOURCE_EXHAUSTED")
        await context.abort(st.code, st.message, st.trailing_metadata())

    def _unary(self, behavior: Callable[..., Awaitable[Any]], name: str, ours: bool) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            p = await self._admit(context, name, ours)
            try:
                if name in ("OpenSession", "Resume"):
                    await self._quotas.check_session(p.tenant, p.limits)
                if name == "Append" and not isinstance(request, RejectedRequest) and request.HasField("input"):
                    self._quotas.take_chars(p.tenant, p.limits, len(request.input.text))
            except CapacityExceeded as exc:
                await self._refuse(context, name, exc)
            return await behavior(request, context)

        return wrapped

    def _streaming(
        self, behavior: Callable[..., AsyncIterator[Any]], name: str, ours: bool
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            p = await self._admit(context, name, ours)
            lease: Lease | None = None
            try:
                if name == "Session":
                    lease = self._quotas.acquire_stream(p.tenant, p.limits)
                    request = self._metered(request, p)
                elif name == "Complete" and not isinstance(request, RejectedRequest):
                    lease = self._quotas.acquire_completions(p.tenant, p.limits, request.n or 1)
            except CapacityExceeded as exc:
                await self._refuse(context, name, exc)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                if lease is not None:
                    lease.release()

        return wrapped

    async def _metered(self, requests: AsyncIterator[Any], p: Principal) -> AsyncIterator[Any]:
        """The stream's requests; one over a quota becomes a ``RejectedRequest`` answered
        in-band by the stream."""
        async for req in requests:
            if isinstance(req, RejectedRequest):
                yield req
                continue
            op = req.WhichOneof("op")
            try:
                if op == "open":
                    await self._quotas.check_session(p.tenant, p.limits)
                elif op == "append" and req.append.HasField("input"):
                    self._quotas.take_chars(p.tenant, p.limits, len(req.append.input.text))
            except CapacityExceeded as exc:
                yield RejectedRequest(exc, req.request_id, op)
                continue
            yield req
