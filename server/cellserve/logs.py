"""Logging: plain text or one JSON object per line, each line tagged with the id of the request
it belongs to, and user text kept out unless ``log_user_text`` is set.

The request id lives in a context variable set by the API interceptor at the start of every
call (the client's ``x-request-id`` metadata when it sends a sane one, else a random id).
grpc.aio runs each call in a task of its own, and tasks copy the context they are created in,
so every log line of a call, including those of a stream's worker tasks, carries its id.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
from contextvars import ContextVar

from .config import Settings

REQUEST_ID_MD = "x-request-id"
_request_id: ContextVar[str] = ContextVar("cellserve_request_id", default="")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # never echo arbitrary client bytes into logs


def new_request_id(client_supplied: str | None = None) -> str:
    if client_supplied and _SANE_ID.match(client_supplied):
        return client_supplied
    return secrets.token_hex(8)


def set_request_id(request_id: str) -> None:
    """Tags the current task's log lines (no reset needed: each call runs in its own task)."""
    _request_id.set(request_id)


def current_request_id() -> str:
    return _request_id.get()


def user_text(text: str, settings: Settings) -> str:
    """What a log line may say about ``text``: the text itself only when the operator opted in
    (``log_user_text``, a debugging aid); otherwise only its length."""
    return repr(text) if settings.log_user_text else f"<{len(text)} chars>"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "-")
        if rid != "-":
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if settings.log_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # grpc and the HTTP endpoint log at debug with details we do not vouch for (peer data).
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
