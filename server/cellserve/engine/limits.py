"""Validation limits, defined once: the API layer (``cellserve.api.validate``, which names the
request fields in its messages) and the engine (which checks its own invariants for any
``EngineClient`` caller) both use these. Plain Python: no torch, no grpc."""

from __future__ import annotations

import math
from dataclasses import replace

from ..config import Settings
from ..errors import InvalidInput
from .types import CompletionRequest

MAX_STOP_STRINGS = 16  # stop strings are matched after every generated character: keep it cheap
MAX_STOP_CHARS = 64
MAX_TEMPERATURE = 100.0  # far beyond any useful value (uniform sampling)
MAX_SESSION_ID_CHARS = 64  # ids are 32 hex chars; anything far longer is not an id
MAX_MODEL_NAME_CHARS = 64  # Settings.default_model has the same bound


def check_completion(r: CompletionRequest, settings: Settings) -> None:
    """Raises ``InvalidInput`` naming the first field out of its bounds."""
    if not 1 <= r.max_chars <= settings.max_completion_chars:
        raise InvalidInput(
            f"max_chars is {r.max_chars}; it must be 1..{settings.max_completion_chars} (max_completion_chars)"
        )
    if not 1 <= r.n <= settings.max_completion_alternatives:
        raise InvalidInput(
            f"n is {r.n}; it must be 1..{settings.max_completion_alternatives} (max_completion_alternatives)"
        )
    if not (math.isfinite(r.temperature) and 0 <= r.temperature <= MAX_TEMPERATURE):
        raise InvalidInput(f"temperature is {r.temperature}; it must be in [0, {MAX_TEMPERATURE:g}]")
    if not 0 <= r.top_k <= settings.max_top_k:
        raise InvalidInput(f"top_k is {r.top_k}; it must be 0..{settings.max_top_k} (max_top_k)")
    if not (math.isfinite(r.top_p) and 0 < r.top_p <= 1):
        raise InvalidInput(f"top_p is {r.top_p}; it must be in (0, 1]")
    if len(r.stop) > MAX_STOP_STRINGS:
        raise InvalidInput(f"{len(r.stop)} stop strings; at most {MAX_STOP_STRINGS}")
    for i, s in enumerate(r.stop):
        if not s:
            raise InvalidInput(f"stop[{i}] is empty")
        if len(s) > MAX_STOP_CHARS:
            raise InvalidInput(f"stop[{i}] has {len(s)} characters; at most {MAX_STOP_CHARS}")


def completion_checked(r: CompletionRequest, settings: Settings) -> CompletionRequest:
    """``r`` checked (``check_completion``), with a temperature below ``min_temperature``
    made greedy (0): below the floor, logits / temperature overflow float32 and sampling
    degenerates to one repeated character; greedy decoding is what such a temperature means."""
    check_completion(r, settings)
    if 0 < r.temperature < settings.min_temperature:
        return replace(r, temperature=0.0)
    return r
