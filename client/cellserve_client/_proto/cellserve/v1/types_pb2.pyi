import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Cell(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CELL_UNSPECIFIED: _ClassVar[Cell]
    CELL_LSTM: _ClassVar[Cell]
    CELL_GRU: _ClassVar[Cell]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
CELL_UNSPECIFIED: Cell
CELL_LSTM: Cell
CELL_GRU: Cell
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_CANCELLED: FinishReason

class Vocabulary(_message.Message):
    __slots__ = ("characters",)
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    characters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, characters: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "cell", "layers", "hidden", "vocabulary", "weights_sha256", "validation_bits_per_char", "is_default", "precision", "precision_loss")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_BITS_PER_CHAR_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_LOSS_FIELD_NUMBER: _ClassVar[int]
    name: str
    cell: Cell
    layers: int
    hidden: int
    vocabulary: Vocabulary
    weights_sha256: str
    validation_bits_per_char: float
    is_default: bool
    precision: str
    precision_loss: float
    def __init__(self, name: _Optional[str] = ..., cell: _Optional[_Union[Cell, str]] = ..., layers: _Optional[int] = ..., hidden: _Optional[int] = ..., vocabulary: _Optional[_Union[Vocabulary, _Mapping]] = ..., weights_sha256: _Optional[str] = ..., validation_bits_per_char: _Optional[float] = ..., is_default: _Optional[bool] = ..., precision: _Optional[str] = ..., precision_loss: _Optional[float] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "model", "position", "created_at", "last_used_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    position: int
    created_at: _timestamp_pb2.Timestamp
    last_used_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., position: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class CharProbability(_message.Message):
    __slots__ = ("character", "probability")
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    character: str
    probability: float
    def __init__(self, character: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class TopCharacters(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[CharProbability]
    def __init__(self, entries: _Optional[_Iterable[_Union[CharProbability, _Mapping]]] = ...) -> None: ...

class Gate(_message.Message):
    __slots__ = ("name", "layers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    layers: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., layers: _Optional[_Iterable[float]] = ...) -> None: ...

class GateTrace(_message.Message):
    __slots__ = ("gates",)
    GATES_FIELD_NUMBER: _ClassVar[int]
    gates: _containers.RepeatedCompositeFieldContainer[Gate]
    def __init__(self, gates: _Optional[_Iterable[_Union[Gate, _Mapping]]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("position", "top_characters", "logprobs", "gates", "replayed", "superseded")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOP_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_FIELD_NUMBER: _ClassVar[int]
    position: int
    top_characters: TopCharacters
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    gates: _containers.RepeatedCompositeFieldContainer[GateTrace]
    replayed: bool
    superseded: bool
    def __init__(self, position: _Optional[int] = ..., top_characters: _Optional[_Union[TopCharacters, _Mapping]] = ..., logprobs: _Optional[_Iterable[float]] = ..., gates: _Optional[_Iterable[_Union[GateTrace, _Mapping]]] = ..., replayed: _Optional[bool] = ..., superseded: _Optional[bool] = ...) -> None: ...

class CompletionChunk(_message.Message):
    __slots__ = ("alternative", "text", "done", "finish_reason")
    ALTERNATIVE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    alternative: int
    text: str
    done: bool
    finish_reason: FinishReason
    def __init__(self, alternative: _Optional[int] = ..., text: _Optional[str] = ..., done: _Optional[bool] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ...) -> None: ...

class Suggestion(_message.Message):
    __slots__ = ("text", "logprob")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    text: str
    logprob: float
    def __init__(self, text: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...
