"""The page <-> backend messages: parsing and checking what the page sends.

Every message is one JSON object in a WebSocket text frame with a ``type``. What the page
sends (``parse``), what the backend answers, and the error codes are listed in the package
docstring (``cellserve_client.web``). A message that cannot be understood raises
``ProtocolError``: the backend answers it with an ``error`` message and goes on reading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_TEXT_CHARS = 20_000  # the whole text travels with every edit: keep a page's text bounded
MAX_MODEL_NAME_CHARS = 64  # the server's bound too
MAX_SEQ = 2**53 - 1  # the largest integer a JavaScript number holds exactly


class ProtocolError(Exception):
    """A message the backend cannot act on; ``code`` is one of the documented error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Open:
    """Opens (or re-opens, on another model) the tab's session, holding ``text``."""

    seq: int
    model: str | None
    text: str


@dataclass(frozen=True)
class Edit:
    """The whole text after an edit."""

    seq: int
    text: str


@dataclass(frozen=True)
class Ranked:
    """Asks for the ranked suggestions at the end of the text."""

    seq: int


Message = Open | Edit | Ranked
TYPES = ("open", "edit", "ranked")


def parse(data: str) -> Message:
    try:
        msg = json.loads(data)
    except ValueError as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", "a message is a JSON object with a 'type' field")
    kind = msg.get("type")
    if kind not in TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}; known types: {', '.join(TYPES)}")
    seq = _seq(msg)
    if kind == "open":
        model = msg.get("model")
        if model is not None and not isinstance(model, str):
            raise ProtocolError("bad_field", "'model' must be a string or null")
        if model is not None and len(model) > MAX_MODEL_NAME_CHARS:
            raise ProtocolError("bad_field", f"'model' is longer than {MAX_MODEL_NAME_CHARS} characters")
        return Open(seq, model or None, _text(msg, required=False))
    if kind == "edit":
        return Edit(seq, _text(msg, required=True))
    return Ranked(seq)


def _seq(msg: dict[str, Any]) -> int:
    seq = msg.get("seq")
    # bool is an int in Python; true/false is not a sequence number.
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise ProtocolError("bad_field", f"'seq' must be an integer from 0 to {MAX_SEQ}")
    return seq


def _text(msg: dict[str, Any], *, required: bool) -> str:
    if "text" not in msg and not required:
        return ""
    text = msg.get("text")
    if not isinstance(text, str):
        raise ProtocolError("bad_field", "'text' must be a string")
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError(
            "too_long", f"the text has {len(text)} characters; this page handles at most {MAX_TEXT_CHARS}"
        )
    try:
        text.encode("utf-8")  # lone surrogates ("\\ud800" in JSON) are no text to send on
    except UnicodeEncodeError:
        raise ProtocolError("bad_field", "'text' holds an unpaired UTF-16 surrogate") from None
    return text
