"""Session owner: who may see a session.

With authentication on (``auth``), the owner is the caller's tenant: another tenant's session
is NOT_FOUND. With it off (a loopback-only server, or ``--insecure-no-auth``), the owner is
derived from the optional ``authorization`` metadata so that sessions opened with one
credential are invisible to calls carrying another: the first 32 hex characters of its
SHA-256 (the raw value is never stored or logged). No header: owner "" (one shared namespace).

The call wrapper (``api.calls``) decides the owner once per call (``set_owner``); the
servicers read it with ``owner_of``.
"""

from __future__ import annotations

import contextvars
import hashlib
from typing import Any

from grpc import aio

from .auth import Principal, current_principal

AUTH_METADATA = "authorization"

_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar("cellserve_owner", default=None)


def owner_from(principal: Principal | None, authorization: str | bytes | None) -> str:
    """The owner of a call by ``principal`` (None: authentication is off) carrying
    ``authorization`` (its first such metadata value, or None)."""
    if principal is not None:
        return principal.tenant
    if authorization is not None:
        raw = authorization.encode() if isinstance(authorization, str) else bytes(authorization)
        return hashlib.sha256(raw).hexdigest()[:32]
    return ""


def set_owner(owner: str) -> None:
    """The running call's owner (each call runs in a task of its own: nothing leaks)."""
    _owner.set(owner)


def owner_of(context: aio.ServicerContext[Any, Any]) -> str:
    owner = _owner.get()
    if owner is not None:
        return owner
    # not under the call wrapper: decided here from the context
    header = next((v for k, v in (context.invocation_metadata() or ()) if k == AUTH_METADATA), None)
    return owner_from(current_principal(), header)
