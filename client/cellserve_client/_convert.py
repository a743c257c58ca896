"""Wire messages -> result dataclasses, and options -> request messages. The only module
besides the transports that touches protobuf types."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from ._proto.cellserve.v1 import service_pb2 as svc
from ._proto.cellserve.v1 import types_pb2 as types
from ._types import (
    AppendOptions,
    Cell,
    CharacterGates,
    CompletionChunk,
    CompletionOptions,
    FinishReason,
    Gate,
    GateInspection,
    GateSummary,
    ModelInfo,
    Prediction,
    SessionInfo,
    Suggestion,
    SuggestOptions,
    TrackedUnit,
    UnitGate,
)

UNKNOWN_CHARACTER = "\ufffd"  # how the vocabulary's entry 0 ("" on the wire) is shown

_CELLS = {types.CELL_LSTM: Cell.LSTM, types.CELL_GRU: Cell.GRU}
_FINISH = {
    types.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    types.FINISH_REASON_STOP: FinishReason.STOP,
    types.FINISH_REASON_CANCELLED: FinishReason.CANCELLED,
}


def _time(ts: Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def model_info(m: types.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=m.name,
        cell=_CELLS.get(m.cell, Cell.UNSPECIFIED),
        layers=m.layers,
        hidden=m.hidden,
        vocabulary=tuple(m.vocabulary.characters) if m.HasField("vocabulary") else (),
        weights_sha256=m.weights_sha256,
        validation_bits_per_char=m.validation_bits_per_char if m.HasField("validation_bits_per_char") else None,
        is_default=m.is_default,
        precision=m.precision or "fp32",
        precision_loss=m.precision_loss if m.HasField("precision_loss") else None,
    )


def session_info(s: types.SessionInfo) -> SessionInfo:
    return SessionInfo(
        session_id=s.session_id,
        model=s.model,
        position=s.position,
        created_at=_time(s.created_at, s.HasField("created_at")),
        last_used_at=_time(s.last_used_at, s.HasField("last_used_at")),
    )


def _top(t: types.TopCharacters) -> tuple[tuple[str, float], ...]:
    return tuple((e.character or UNKNOWN_CHARACTER, e.probability) for e in t.entries)


def gate_inspection(r: svc.InspectGatesResponse) -> GateInspection:
    return GateInspection(
        model=r.model,
        cell=_CELLS.get(r.cell, Cell.UNSPECIFIED),
        first_index=r.first_index,
        characters=tuple(
            CharacterGates(
                character=c.character,
                layers=tuple(
                    tuple(
                        GateSummary(
                            g.name,
                            g.mean,
                            tuple(
                                UnitGate(u.unit, u.value, u.change if u.HasField("change") else None)
                                for u in g.top_units
                            ),
                        )
                        for g in layer.gates
                    )
                    for layer in c.layers
                ),
                top=_top(c.next),
            )
            for c in r.characters
        ),
        tracked=tuple(
            TrackedUnit(u.layer, u.unit, u.feature, u.label, u.correlation, tuple(u.values)) for u in r.tracked_units
        ),
    )


def inspect_gates_request(
    text: str, model: str | None, last_chars: int | None, top_units: int | None, top_k: int | None
) -> svc.InspectGatesRequest:
    msg = svc.InspectGatesRequest(model=model or "", input=types.Input(text=text))
    if last_chars is not None:
        msg.last_chars = last_chars
    if top_units is not None:
        msg.top_units = top_units
    if top_k is not None:
        msg.top_k = top_k
    return msg


def prediction(p: types.Prediction) -> Prediction:
    top: tuple[tuple[str, float], ...] = ()
    if p.HasField("top_characters"):
        top = _top(p.top_characters)
    return Prediction(
        position=p.position,
        top=top,
        logprobs=tuple(p.logprobs),
        gates=tuple(tuple(Gate(g.name, tuple(g.layers)) for g in trace.gates) for trace in p.gates),
        replayed=p.replayed,
        superseded=p.superseded,
    )


def completion_chunk(c: types.CompletionChunk) -> CompletionChunk:
    return CompletionChunk(
        alternative=c.alternative,
        text=c.text,
        done=c.done,
        finish_reason=_FINISH.get(c.finish_reason) if c.done else None,
    )


def stream_append(offset: int, text: str, opts: AppendOptions) -> svc.SessionRequest.Append:
    msg = svc.SessionRequest.Append(
        offset=offset,
        input=types.Input(text=text),
        want_logprobs=opts.logprobs,
        want_gates=opts.gates,
        only_last=opts.only_last,
        no_memory=not opts.memory,
    )
    if opts.top_k is not None:
        msg.top_k = opts.top_k
    return msg


def unary_append(session_id: str, offset: int, text: str, opts: AppendOptions) -> svc.AppendRequest:
    msg = svc.AppendRequest(
        session_id=session_id,
        offset=offset,
        input=types.Input(text=text),
        want_logprobs=opts.logprobs,
        want_gates=opts.gates,
        no_memory=not opts.memory,
    )
    if opts.top_k is not None:
        msg.top_k = opts.top_k
    return msg


def _fill_completion(msg: svc.SessionRequest.Complete | svc.CompleteRequest, opts: CompletionOptions) -> None:
    msg.stop.extend(opts.stop)
    msg.no_memory = not opts.memory
    msg.temperature = opts.temperature
    msg.top_k = opts.top_k
    if opts.max_chars is not None:
        msg.max_chars = opts.max_chars
    if opts.top_p is not None:
        msg.top_p = opts.top_p
    if opts.seed is not None:
        msg.seed = opts.seed
    if opts.n is not None:
        msg.n = opts.n


def stream_complete(opts: CompletionOptions) -> svc.SessionRequest.Complete:
    msg = svc.SessionRequest.Complete()
    _fill_completion(msg, opts)
    return msg


def unary_complete(session_id: str, opts: CompletionOptions) -> svc.CompleteRequest:
    msg = svc.CompleteRequest(session_id=session_id)
    _fill_completion(msg, opts)
    return msg


SUGGEST_SCOPES = {"word": svc.SUGGEST_SCOPE_WORD, "line": svc.SUGGEST_SCOPE_LINE}


def _fill_suggest(msg: svc.SessionRequest.Suggest | svc.SuggestRequest, opts: SuggestOptions) -> None:
    msg.scope = SUGGEST_SCOPES[opts.scope]  # checked by Session.suggest
    msg.n = opts.n
    if opts.max_chars is not None:
        msg.max_chars = opts.max_chars


def stream_suggest(opts: SuggestOptions) -> svc.SessionRequest.Suggest:
    msg = svc.SessionRequest.Suggest()
    _fill_suggest(msg, opts)
    return msg


def unary_suggest(session_id: str, opts: SuggestOptions) -> svc.SuggestRequest:
    msg = svc.SuggestRequest(session_id=session_id)
    _fill_suggest(msg, opts)
    return msg


def suggestions(items: Iterable[types.Suggestion]) -> list[Suggestion]:
    return [Suggestion(s.text, s.logprob) for s in items]
