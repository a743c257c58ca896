"""Session owner: who may see a session.

Authentication is out of scope for now; the owner is derived from the optional
``authorization`` request metadata so that sessions opened with one credential are invisible
(NOT_FOUND) to calls carrying another. The raw value is never stored or logged: the owner is
the first 32 hex characters of its SHA-256. No header: owner "" (one shared namespace).
"""

from __future__ import annotations

import hashlib
from typing import Any

from grpc import aio

AUTH_METADATA = "authorization"


def owner_of(context: aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == AUTH_METADATA:
            raw = value.encode() if isinstance(value, str) else bytes(value)
            return hashlib.sha256(raw).hexdigest()[:32]
    return ""
