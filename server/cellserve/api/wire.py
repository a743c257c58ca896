"""A keystroke's Append read and its answer written in C (``_wire.c``), instead of protobuf
messages built and read field by field.

``session_request`` is the Session method's request deserializer: a plain Append (the shape
every keystroke has) comes back as an ``AppendRequest`` (a struct sequence of its fields), any
other message as the ``SessionRequest`` protobuf reads; what the C accepts, protobuf reads the
same (tests/api/test_wire.py), and what it does not (other operations, unusual encodings,
malformed bytes) goes to protobuf, which raises where it must.

``prediction_response`` returns the serialized ``SessionResponse`` (bytes) for the answers that
need nothing but the position, the top-k and the flags (every plain keystroke), and the message
for the rest (log-probs, gate traces), or for every answer where the extension was not built or
``CELLSERVE_NATIVE_WIRE=0``. ``serializer`` wraps a method's response serializer so that bytes
go out as they are (``CallInterceptor`` installs it for this server's own methods). The bytes
are what protobuf would write for the same message (tests/api/test_wire.py compares them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..engine.types import Prediction
from . import convert
from .pb import svc

_native: ModuleType | None
try:
    from . import _wire

    _native = None if os.environ.get("CELLSERVE_NATIVE_WIRE", "1") == "0" else _wire
except ImportError:  # pragma: no cover - a build without a C compiler
    _native = None


# The type ``session_request`` gives a plain Append (the stream checks ``type(r) is
# AppendRequest``); None without the extension, where no request is one.
AppendRequest: Any = _native.AppendRequest if _native is not None else None


def session_request(raw: bytes) -> svc.SessionRequest | Any:
    """The Session method's request deserializer: an ``AppendRequest``, or the message."""
    if _native is not None:
        append = _native.append_request(raw)
        if append is not None:
            return append
    return svc.SessionRequest.FromString(raw)


def prediction_response(request_id: int, p: Prediction) -> svc.SessionResponse | bytes:
    """The Session stream's answer to an Append (``request_id``), serialized when it can be."""
    if _native is not None and not p.logprobs and not p.gates:
        out: bytes = _native.prediction_response(request_id, p.position, p.top_k, p.replayed, p.superseded)
        return out
    response = svc.SessionResponse(request_id=request_id)
    convert.fill_prediction(response.prediction, p)
    return response


def serializer(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """``serialize`` (a method's response serializer) letting bytes through unchanged."""
    if serialize is None:
        return None

    def passing_bytes(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return passing_bytes
