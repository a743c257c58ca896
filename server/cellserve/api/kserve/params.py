"""Request parameters of ``ModelInferRequest``: the sequence (Triton's ``sequence_id``,
``sequence_start``, ``sequence_end``), ``top_k``, and a completion (``complete_chars``,
``complete_n``, ``temperature``, ``stop``). Parameters this server does not read (a client's
``priority`` or ``timeout``, say) are ignored, as Triton does."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ...config import Settings
from ...engine.limits import MAX_STOP_CHARS, MAX_TEMPERATURE
from ...engine.types import CompletionRequest
from ...errors import InvalidInput
from ..validate import DEFAULT_TOP_K
from .pb import kpb

SequenceKey = tuple[str, int | str]  # ("u", 7) for integer ids, ("s", "abc") for string ids
MAX_STRING_ID_CHARS = 128


@dataclass(frozen=True)
class Params:
    sequence: SequenceKey
    start: bool
    end: bool
    top_k: int
    completion: CompletionRequest | None

    @property
    def sequence_name(self) -> str:
        kind, value = self.sequence
        return str(value) if kind == "u" else repr(value)


def _int(params: Mapping[str, kpb.InferParameter], name: str) -> int | None:
    if name not in params:
        return None
    p = params[name]
    kind = p.WhichOneof("parameter_choice")
    if kind == "int64_param":
        return int(p.int64_param)
    if kind == "uint64_param":
        return int(p.uint64_param)
    raise InvalidInput(f"parameter {name} must be an integer (int64_param or uint64_param), not {kind or 'unset'}")


def _bool(params: Mapping[str, kpb.InferParameter], name: str) -> bool:
    if name not in params:
        return False
    p = params[name]
    if p.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidInput(f"parameter {name} must be a bool_param")
    return bool(p.bool_param)


def _sequence(params: Mapping[str, kpb.InferParameter]) -> SequenceKey:
    p = params.get("sequence_id")
    kind = p.WhichOneof("parameter_choice") if p is not None else None
    if kind == "string_param" and p is not None:
        if not p.string_param or len(p.string_param) > MAX_STRING_ID_CHARS:
            raise InvalidInput(f"parameter sequence_id must be 1..{MAX_STRING_ID_CHARS} characters")
        return ("s", p.string_param)
    value = _int(params, "sequence_id") if kind is not None else None
    if not value or value < 0:
        raise InvalidInput(
            "cellserve models are stateful: every request must carry the parameter sequence_id "
            "(a non-zero integer or a non-empty string) and the first request of a sequence must "
            "specify the START flag (sequence_start)"
        )
    return ("u", value)


def _completion(params: Mapping[str, kpb.InferParameter], settings: Settings) -> CompletionRequest | None:
    chars = _int(params, "complete_chars")
    if chars is None:
        for name in ("complete_n", "temperature", "stop"):
            if name in params:
                raise InvalidInput(f"parameter {name} needs the parameter complete_chars")
        return None
    if not 1 <= chars <= settings.max_completion_chars:
        raise InvalidInput(
            f"parameter complete_chars is {chars}; it must be 1..{settings.max_completion_chars} (max_completion_chars)"
        )
    n = _int(params, "complete_n")
    n = 1 if n is None else n
    if not 1 <= n <= settings.max_completion_alternatives:
        raise InvalidInput(
            f"parameter complete_n is {n}; it must be 1..{settings.max_completion_alternatives} "
            "(max_completion_alternatives)"
        )
    temperature = 0.0
    if "temperature" in params:
        t = params["temperature"]
        kind = t.WhichOneof("parameter_choice")
        if kind not in ("double_param", "int64_param", "uint64_param"):
            raise InvalidInput(f"parameter temperature must be a number (double_param), not {kind or 'unset'}")
        temperature = float(getattr(t, kind))
        if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
            raise InvalidInput(f"parameter temperature is {temperature}; it must be in [0, {MAX_TEMPERATURE:g}]")
    stop: tuple[str, ...] = ()
    if "stop" in params:
        s = params["stop"]
        if s.WhichOneof("parameter_choice") != "string_param" or not 1 <= len(s.string_param) <= MAX_STOP_CHARS:
            raise InvalidInput(f"parameter stop must be a string_param of 1..{MAX_STOP_CHARS} characters")
        stop = (s.string_param,)
    return CompletionRequest(max_chars=chars, stop=stop, temperature=temperature, n=n)


def parse(params: Mapping[str, kpb.InferParameter], settings: Settings) -> Params:
    top_k = _int(params, "top_k")
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, settings.max_top_k)
    if not 0 <= top_k <= settings.max_top_k:
        raise InvalidInput(f"parameter top_k is {top_k}; it must be 0..{settings.max_top_k} (max_top_k)")
    return Params(
        sequence=_sequence(params),
        start=_bool(params, "sequence_start"),
        end=_bool(params, "sequence_end"),
        top_k=top_k,
        completion=_completion(params, settings),
    )
