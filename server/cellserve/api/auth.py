"""Authentication: who is calling, decided once per call before any handler runs.

The call wrapper (``api.calls``) asks the ``Authenticator`` once per call, for every method
except the health service (probes carry no credentials). A call proves its tenant by

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

A stream is authenticated once when it opens and its token is checked again at every message
(``StreamToken``: a clock read, and a lookup only when the tokens changed): once the token is
revoked (the tokens file changed), the next message ends the stream with UNAUTHENTICATED. The
stream's session is kept; a valid token of the same tenant may attach.

The tokens file is re-read when it changes (checked at most once per ``RELOAD_CHECK_S`` on the
call path) and on SIGHUP (``TokenStore.reload``); a file that no longer parses is reported in
the log and the previous tenants stay in force.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc import aio

from ..config import Settings
from ..engine.admission import Limits
from ..errors import CellserveError, Unauthenticated
from ..tokens import Tenant, TokensFile, TokensFileError, TokenTable, file_stamp, parse

log = logging.getLogger("cellserve.auth")

RELOAD_CHECK_S = 1.0
HEALTH_PREFIX = "/grpc.health.v1.Health/"
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

    def due(self) -> bool:
        """``refresh`` would look at the file now (once per ``RELOAD_CHECK_S``)."""
        return self._clock() - self._checked >= RELOAD_CHECK_S

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


class Authenticator:
    """Decides who is calling; the call wrapper (``api.calls``) asks it once per call."""

    def __init__(self, settings: Settings, store: TokenStore | None) -> None:
        self.store = store
        self._mtls = settings.tls_client_ca is not None
        self._defaults = Limits.defaults(settings)

    def authenticate(self, header: str | bytes | None, context: aio.ServicerContext[Any, Any]) -> Principal | str:
        """The caller, or the message of an UNAUTHENTICATED refusal. ``header``: the call's
        first ``authorization`` metadata value."""
        if header is not None and self.store is not None:
            value = header.decode("utf-8", "replace") if isinstance(header, bytes) else str(header)
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return BAD_SCHEME
            tenant = self.store.table.lookup(token.strip())
            if tenant is None:
                return UNKNOWN
            return Principal(tenant.name, tenant.limits, token.strip())
        if self._mtls and (name := _tenant_from_cert(context)) is not None:
            known = self.store.table.tenants.get(name) if self.store is not None else None
            t = known or Tenant(name, self._defaults)
            return Principal(t.name, t.limits)
        return MISSING

    def due(self) -> bool:
        """The tokens file is due for a look (``refresh``); a clock read, no await."""
        return self.store is not None and self.store.due()

    async def refresh(self) -> None:
        if self.store is not None:
            await self.store.refresh()

    def still_valid(self, p: Principal) -> bool:
        """The token ``p`` proved itself with is still in the tokens file (as last read)."""
        if p.token is None or self.store is None:
            return True
        t = self.store.table.lookup(p.token)
        return t is not None and t.name == p.tenant


def admit(p: Principal) -> None:
    """Makes ``p`` the running call's caller: a context variable, and each call runs in a task
    of its own, so nothing leaks to other calls (the tasks it starts inherit it)."""
    _principal.set(p)


class StreamToken:
    """A stream's credential, checked before each of its requests (``stream_guard.TokenCheck``):
    the tokens file is looked at when due, and the token looked up only when the table
    changed since the last lookup, so a request costs a clock read."""

    __slots__ = ("_auth", "_principal", "_table")

    def __init__(self, auth: Authenticator, principal: Principal) -> None:
        self._auth = auth
        self._principal = principal
        self._table = auth.store.table if auth.store is not None else None

    def due(self) -> bool:
        store = self._auth.store
        return store is not None and (store.table is not self._table or store.due())

    async def check(self) -> None:
        """Raises ``Unauthenticated`` once the stream's token was revoked (the session lives on)."""
        await self._auth.refresh()
        store = self._auth.store
        if store is not None and store.table is not self._table:
            self._table = store.table
            if not self._auth.still_valid(self._principal):
                raise Unauthenticated(REVOKED)
