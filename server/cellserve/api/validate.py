"""Request validation: protobuf request fields -> engine arguments, or ``InvalidInput`` with a
message that names the field and the limit.

The engine checks its own invariants too; checking here gives clients precise messages
before any work is queued. Functions take the request messages duck-typed: the stream's
``SessionRequest.Append`` and the unary ``AppendRequest`` share field names, and so do the two
Complete messages.
"""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..engine import limits
from ..engine.limits import MAX_MODEL_NAME_CHARS, MAX_SESSION_ID_CHARS
from ..engine.types import AppendOptions, CompletionRequest, SuggestRequest
from ..errors import InvalidInput

DEFAULT_TOP_K = AppendOptions().top_k
DEFAULT_MAX_CHARS = CompletionRequest().max_chars


def session_id(value: str) -> str:
    if not value:
        raise InvalidInput("session_id is required")
    if len(value) > MAX_SESSION_ID_CHARS:
        raise InvalidInput(f"session_id is too long ({len(value)} characters)")
    return value


def model_name(value: str) -> str | None:
    """Empty means the server's default model."""
    if len(value) > MAX_MODEL_NAME_CHARS:
        raise InvalidInput(f"model name is too long ({len(value)} characters; at most {MAX_MODEL_NAME_CHARS})")
    return value or None


def input_text(msg: Any, field: str, settings: Settings, *, allow_empty: bool = False) -> str:
    """The text of an ``Input`` message (the only kind so far)."""
    kind = msg.WhichOneof("kind") if msg is not None else None
    if kind is None:
        if allow_empty:
            return ""
        raise InvalidInput(f"{field} is required (set {field}.text)")
    if kind != "text":  # a kind added to the proto that this server does not serve yet
        raise InvalidInput(f"{field}.{kind} is not supported by this server")
    text: str = msg.text
    if not text and not allow_empty:
        raise InvalidInput(f"{field}.text is empty")
    return text_within_limit(text, field, settings)


def text_within_limit(text: str, field: str, settings: Settings) -> str:
    """``text`` (the ``text`` of the Input at ``field``) when it is not too long."""
    if len(text) > settings.max_append_chars:
        raise InvalidInput(
            f"{field}.text has {len(text)} characters; the limit is {settings.max_append_chars} (max_append_chars)"
        )
    return text


# Every keystroke has its options: one shared (frozen) object per distinct set, at most
# (max_top_k + 1) * 16 of them, instead of a new dataclass per request.
_OPTIONS: dict[tuple[int, bool, bool, bool, bool], AppendOptions] = {}


def append_options(msg: Any, settings: Settings, *, only_last: bool = False) -> AppendOptions:
    return options_of(
        msg.top_k if msg.HasField("top_k") else None,
        msg.want_logprobs,
        msg.want_gates,
        only_last,
        not getattr(msg, "no_memory", False),  # a Resume's replay: as the session's memory
        settings,
    )


def options_of(
    top_k: int | None, logprobs: bool, gates: bool, only_last: bool, memory: bool, settings: Settings
) -> AppendOptions:
    """An Append's options from its fields (``top_k`` None: unset)."""
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, settings.max_top_k)
    elif top_k > settings.max_top_k:
        raise InvalidInput(f"top_k is {top_k}; the limit is {settings.max_top_k} (max_top_k)")
    key = (top_k, logprobs, gates, only_last, memory)
    options = _OPTIONS.get(key)
    if options is None:
        options = _OPTIONS[key] = AppendOptions(
            top_k=top_k, want_logprobs=logprobs, want_gates=gates, only_last=only_last, memory=memory
        )
    return options


def completion_request(msg: Any, settings: Settings) -> CompletionRequest:
    req = CompletionRequest(
        max_chars=msg.max_chars if msg.HasField("max_chars") else min(DEFAULT_MAX_CHARS, settings.max_completion_chars),
        stop=tuple(msg.stop),
        temperature=float(msg.temperature),
        top_k=msg.top_k,
        top_p=float(msg.top_p) if msg.HasField("top_p") else 1.0,
        seed=msg.seed if msg.HasField("seed") else None,
        n=msg.n if msg.HasField("n") else 1,
        memory=not msg.no_memory,
    )
    return limits.completion_checked(req, settings)


_SCOPES = {0: "word", 1: "word", 2: "line"}  # SuggestScope: unspecified, word, line


def suggest_request(msg: Any) -> SuggestRequest:
    """A SuggestRequest (or the stream's Suggest) -> the engine's request, checked."""
    scope = _SCOPES.get(msg.scope)
    if scope is None:
        raise InvalidInput(f"scope is {msg.scope}; it must be SUGGEST_SCOPE_WORD or SUGGEST_SCOPE_LINE")
    req = SuggestRequest(
        n=msg.n if msg.HasField("n") else 3,
        scope=scope,
        max_chars=msg.max_chars if msg.HasField("max_chars") else 32,
    )
    limits.check_suggest(req)
    return req
