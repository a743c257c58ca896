"""Session owner: who may see a session.

With authentication on (``auth``), the owner is the caller's tenant: another tenant's session
is NOT_FOUND. With it off (a loopback-only server, or ``--insecure-no-auth``), the owner is
derived from the optional ``authorization`` metadata so that sessions opened with one
credential are invisible to calls carrying another: the first 32 hex characters of its
SHA-256 (the raw value is never stored or logged). No header: owner "" (one shared namespace).
"""

from __future__ import annotations

import hashlib
from typing import Any

from grpc import aio

from .auth import current_principal

AUTH_METADATA = "authorization"


def owner_of(context: aio.ServicerContext[Any, Any]) -> str:
    principal = current_principal()
    if principal is not None:
        return principal.tenant
    for key, value in context.invocation_metadata() or ():
        if key == AUTH_METADATA:
            raw = value.encode() if isinstance(value, str) else bytes(value)
            return hashlib.sha256(raw).hexdigest()[:32]
    return ""
