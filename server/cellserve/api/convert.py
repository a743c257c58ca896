"""Protobuf <-> engine dataclasses. Pure functions; no engine calls, no validation of ranges
(``validate`` does that), no gRPC status handling (``status`` does that)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from ..engine.types import CompletionChunk, GateTrace, ModelInfo, Prediction, SessionInfo, Suggestion
from .pb import types

_CELLS = {"lstm": types.CELL_LSTM, "gru": types.CELL_GRU}
_FINISH = {
    "length": types.FINISH_REASON_LENGTH,
    "stop": types.FINISH_REASON_STOP,
    "cancelled": types.FINISH_REASON_CANCELLED,
}


def timestamp(unix_s: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(unix_s * 1e9))
    return ts


def model_info(m: ModelInfo) -> types.ModelInfo:
    msg = types.ModelInfo(
        name=m.name,
        cell=_CELLS.get(m.cell, types.CELL_UNSPECIFIED),
        layers=m.layers,
        hidden=m.hidden,
        vocabulary=types.Vocabulary(characters=list(m.vocabulary)),
        weights_sha256=m.weights_sha256,
        is_default=m.is_default,
        precision=m.precision,
    )
    if m.validation_bits_per_char is not None:
        msg.validation_bits_per_char = m.validation_bits_per_char
    if m.precision_loss is not None:
        msg.precision_loss = m.precision_loss
    return msg


def session_info(s: SessionInfo) -> types.SessionInfo:
    return types.SessionInfo(
        session_id=s.session_id,
        model=s.model,
        position=s.position,
        created_at=timestamp(s.created_at),
        last_used_at=timestamp(s.last_used_at),
    )


def _gate_trace(g: GateTrace) -> types.GateTrace:
    return types.GateTrace(gates=[types.Gate(name=n, layers=list(v)) for n, v in zip(g.names, g.values, strict=True)])


def prediction(p: Prediction) -> types.Prediction:
    """A superseded answer (coalesced under only_last) is still sent, with its position and
    ``superseded`` set, so that every Append gets exactly one response."""
    msg = types.Prediction()
    fill_prediction(msg, p)
    return msg


def fill_prediction(msg: types.Prediction, p: Prediction) -> None:
    """``prediction(p)`` written into ``msg``, an empty Prediction field of a response: the
    unary Append's and Resume's answers, and a stream's when ``api/wire.py`` cannot write it
    in C (log-probs or gates, or no extension). Built in place (a message passed to a
    constructor or ``CopyFrom`` is copied) and field by field (``add()`` then attributes costs
    less than ``add`` with keywords or a generator of CharProbability objects)."""
    msg.SetInParent()  # present even when every field is at its default (position 0)
    msg.position = p.position
    if p.replayed:
        msg.replayed = True
    if p.superseded:
        msg.superseded = True
    if p.logprobs:
        msg.logprobs.extend(p.logprobs)
    if p.gates:
        msg.gates.extend(_gate_trace(g) for g in p.gates)
    if p.top_k:
        add = msg.top_characters.entries.add
        for c, q in p.top_k:
            entry = add()
            entry.character = c
            entry.probability = q


def suggestions(items: list[Suggestion]) -> list[types.Suggestion]:
    return [types.Suggestion(text=s.text, logprob=s.logprob) for s in items]


def completion_chunk(c: CompletionChunk) -> types.CompletionChunk:
    return types.CompletionChunk(
        alternative=c.alternative,
        text=c.text,
        done=c.done,
        finish_reason=_FINISH.get(c.finish_reason, types.FINISH_REASON_UNSPECIFIED),
    )
