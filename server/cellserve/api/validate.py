"""Request validation: protobuf request fields -> engine arguments, or ``InvalidInput`` with a
message that names the field and the limit.

The engine checks its own invariants too; checking here gives clients precise messages
before any work is queued. Functions take the request messages duck-typed: the stream's
``SessionRequest.Append`` and the unary ``AppendRequest`` share field names, and so do the two
Complete messages.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import Settings
from ..engine.types import AppendOptions, CompletionRequest
from ..errors import InvalidInput

DEFAULT_TOP_K = AppendOptions().top_k
DEFAULT_MAX_CHARS = CompletionRequest().max_chars
MAX_STOP_STRINGS = 16  # stop strings are matched after every generated character: keep it cheap
MAX_STOP_CHARS = 64  # the engine's bound too
MAX_TEMPERATURE = 100.0  # the engine's bound; far beyond any useful value (uniform sampling)
MAX_SESSION_ID_CHARS = 64  # ids are 32 hex chars; anything far longer is not an id
MAX_MODEL_NAME_CHARS = 64  # Settings.default_model has the same bound


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
    if len(text) > settings.max_append_chars:
        raise InvalidInput(
            f"{field}.text has {len(text)} characters; the limit is {settings.max_append_chars} (max_append_chars)"
        )
    return text


def append_options(msg: Any, settings: Settings, *, only_last: bool = False) -> AppendOptions:
    top_k = msg.top_k if msg.HasField("top_k") else min(DEFAULT_TOP_K, settings.max_top_k)
    if top_k > settings.max_top_k:
        raise InvalidInput(f"top_k is {top_k}; the limit is {settings.max_top_k} (max_top_k)")
    return AppendOptions(top_k=top_k, want_logprobs=msg.want_logprobs, want_gates=msg.want_gates, only_last=only_last)


def completion_request(msg: Any, settings: Settings) -> CompletionRequest:
    max_chars = msg.max_chars if msg.HasField("max_chars") else min(DEFAULT_MAX_CHARS, settings.max_completion_chars)
    if not 1 <= max_chars <= settings.max_completion_chars:
        raise InvalidInput(
            f"max_chars is {max_chars}; it must be 1..{settings.max_completion_chars} (max_completion_chars)"
        )
    n = msg.n if msg.HasField("n") else 1
    if not 1 <= n <= settings.max_completion_alternatives:
        raise InvalidInput(
            f"n is {n}; it must be 1..{settings.max_completion_alternatives} (max_completion_alternatives)"
        )
    temperature = float(msg.temperature)
    if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        raise InvalidInput(f"temperature is {temperature}; it must be in [0, {MAX_TEMPERATURE:g}]")
    if temperature < settings.min_temperature:
        # Below the floor, logits / temperature overflow float32 and sampling degenerates to
        # one repeated character; greedy decoding is what such a temperature means.
        temperature = 0.0
    if msg.top_k > settings.max_top_k:
        raise InvalidInput(f"top_k is {msg.top_k}; the limit is {settings.max_top_k} (max_top_k)")
    top_p = float(msg.top_p) if msg.HasField("top_p") else 1.0
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidInput(f"top_p is {top_p}; it must be in (0, 1]")
    stop = tuple(msg.stop)
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidInput(f"{len(stop)} stop strings; at most {MAX_STOP_STRINGS}")
    for i, s in enumerate(stop):
        if not s:
            raise InvalidInput(f"stop[{i}] is empty")
        if len(s) > MAX_STOP_CHARS:
            raise InvalidInput(f"stop[{i}] has {len(s)} characters; at most {MAX_STOP_CHARS}")
    return CompletionRequest(
        max_chars=max_chars,
        stop=stop,
        temperature=temperature,
        top_k=msg.top_k,
        top_p=top_p,
        seed=msg.seed if msg.HasField("seed") else None,
        n=n,
    )
