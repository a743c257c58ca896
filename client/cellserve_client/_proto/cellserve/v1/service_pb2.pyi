from cellserve_client._proto.cellserve.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SuggestScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUGGEST_SCOPE_UNSPECIFIED: _ClassVar[SuggestScope]
    SUGGEST_SCOPE_WORD: _ClassVar[SuggestScope]
    SUGGEST_SCOPE_LINE: _ClassVar[SuggestScope]
SUGGEST_SCOPE_UNSPECIFIED: SuggestScope
SUGGEST_SCOPE_WORD: SuggestScope
SUGGEST_SCOPE_LINE: SuggestScope

class SessionRequest(_message.Message):
    __slots__ = ("request_id", "open", "attach", "append", "complete", "rewind", "snapshot", "reset", "close", "suggest")
    class Open(_message.Message):
        __slots__ = ("model", "no_memory")
        MODEL_FIELD_NUMBER: _ClassVar[int]
        NO_MEMORY_FIELD_NUMBER: _ClassVar[int]
        model: str
        no_memory: bool
        def __init__(self, model: _Optional[str] = ..., no_memory: _Optional[bool] = ...) -> None: ...
    class Attach(_message.Message):
        __slots__ = ("session_id",)
        SESSION_ID_FIELD_NUMBER: _ClassVar[int]
        session_id: str
        def __init__(self, session_id: _Optional[str] = ...) -> None: ...
    class Append(_message.Message):
        __slots__ = ("offset", "input", "top_k", "want_logprobs", "want_gates", "only_last", "no_memory")
        OFFSET_FIELD_NUMBER: _ClassVar[int]
        INPUT_FIELD_NUMBER: _ClassVar[int]
        TOP_K_FIELD_NUMBER: _ClassVar[int]
        WANT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
        WANT_GATES_FIELD_NUMBER: _ClassVar[int]
        ONLY_LAST_FIELD_NUMBER: _ClassVar[int]
        NO_MEMORY_FIELD_NUMBER: _ClassVar[int]
        offset: int
        input: _types_pb2.Input
        top_k: int
        want_logprobs: bool
        want_gates: bool
        only_last: bool
        no_memory: bool
        def __init__(self, offset: _Optional[int] = ..., input: _Optional[_Union[_types_pb2.Input, _Mapping]] = ..., top_k: _Optional[int] = ..., want_logprobs: _Optional[bool] = ..., want_gates: _Optional[bool] = ..., only_last: _Optional[bool] = ..., no_memory: _Optional[bool] = ...) -> None: ...
    class Complete(_message.Message):
        __slots__ = ("max_chars", "stop", "temperature", "top_k", "top_p", "seed", "n", "no_memory")
        MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
        STOP_FIELD_NUMBER: _ClassVar[int]
        TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
        TOP_K_FIELD_NUMBER: _ClassVar[int]
        TOP_P_FIELD_NUMBER: _ClassVar[int]
        SEED_FIELD_NUMBER: _ClassVar[int]
        N_FIELD_NUMBER: _ClassVar[int]
        NO_MEMORY_FIELD_NUMBER: _ClassVar[int]
        max_chars: int
        stop: _containers.RepeatedScalarFieldContainer[str]
        temperature: float
        top_k: int
        top_p: float
        seed: int
        n: int
        no_memory: bool
        def __init__(self, max_chars: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., n: _Optional[int] = ..., no_memory: _Optional[bool] = ...) -> None: ...
    class Suggest(_message.Message):
        __slots__ = ("n", "scope", "max_chars")
        N_FIELD_NUMBER: _ClassVar[int]
        SCOPE_FIELD_NUMBER: _ClassVar[int]
        MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
        n: int
        scope: SuggestScope
        max_chars: int
        def __init__(self, n: _Optional[int] = ..., scope: _Optional[_Union[SuggestScope, str]] = ..., max_chars: _Optional[int] = ...) -> None: ...
    class Rewind(_message.Message):
        __slots__ = ("chars",)
        CHARS_FIELD_NUMBER: _ClassVar[int]
        chars: int
        def __init__(self, chars: _Optional[int] = ...) -> None: ...
    class Snapshot(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class Reset(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class Close(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    REWIND_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    SUGGEST_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    open: SessionRequest.Open
    attach: SessionRequest.Attach
    append: SessionRequest.Append
    complete: SessionRequest.Complete
    rewind: SessionRequest.Rewind
    snapshot: SessionRequest.Snapshot
    reset: SessionRequest.Reset
    close: SessionRequest.Close
    suggest: SessionRequest.Suggest
    def __init__(self, request_id: _Optional[int] = ..., open: _Optional[_Union[SessionRequest.Open, _Mapping]] = ..., attach: _Optional[_Union[SessionRequest.Attach, _Mapping]] = ..., append: _Optional[_Union[SessionRequest.Append, _Mapping]] = ..., complete: _Optional[_Union[SessionRequest.Complete, _Mapping]] = ..., rewind: _Optional[_Union[SessionRequest.Rewind, _Mapping]] = ..., snapshot: _Optional[_Union[SessionRequest.Snapshot, _Mapping]] = ..., reset: _Optional[_Union[SessionRequest.Reset, _Mapping]] = ..., close: _Optional[_Union[SessionRequest.Close, _Mapping]] = ..., suggest: _Optional[_Union[SessionRequest.Suggest, _Mapping]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("request_id", "opened", "prediction", "completion_chunk", "snapshot", "rewound", "reset", "closed", "error", "suggestions")
    class Suggestions(_message.Message):
        __slots__ = ("suggestions",)
        SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
        suggestions: _containers.RepeatedCompositeFieldContainer[_types_pb2.Suggestion]
        def __init__(self, suggestions: _Optional[_Iterable[_Union[_types_pb2.Suggestion, _Mapping]]] = ...) -> None: ...
    class Opened(_message.Message):
        __slots__ = ("session", "model")
        SESSION_FIELD_NUMBER: _ClassVar[int]
        MODEL_FIELD_NUMBER: _ClassVar[int]
        session: _types_pb2.SessionInfo
        model: _types_pb2.ModelInfo
        def __init__(self, session: _Optional[_Union[_types_pb2.SessionInfo, _Mapping]] = ..., model: _Optional[_Union[_types_pb2.ModelInfo, _Mapping]] = ...) -> None: ...
    class Snapshot(_message.Message):
        __slots__ = ("blob",)
        BLOB_FIELD_NUMBER: _ClassVar[int]
        blob: bytes
        def __init__(self, blob: _Optional[bytes] = ...) -> None: ...
    class Rewound(_message.Message):
        __slots__ = ("position",)
        POSITION_FIELD_NUMBER: _ClassVar[int]
        position: int
        def __init__(self, position: _Optional[int] = ...) -> None: ...
    class Reset(_message.Message):
        __slots__ = ("position",)
        POSITION_FIELD_NUMBER: _ClassVar[int]
        position: int
        def __init__(self, position: _Optional[int] = ...) -> None: ...
    class Closed(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class Error(_message.Message):
        __slots__ = ("code", "message", "expected_offset", "retry_after_ms")
        CODE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        EXPECTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
        RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
        code: int
        message: str
        expected_offset: int
        retry_after_ms: int
        def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., expected_offset: _Optional[int] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    REWOUND_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    opened: SessionResponse.Opened
    prediction: _types_pb2.Prediction
    completion_chunk: _types_pb2.CompletionChunk
    snapshot: SessionResponse.Snapshot
    rewound: SessionResponse.Rewound
    reset: SessionResponse.Reset
    closed: SessionResponse.Closed
    error: SessionResponse.Error
    suggestions: SessionResponse.Suggestions
    def __init__(self, request_id: _Optional[int] = ..., opened: _Optional[_Union[SessionResponse.Opened, _Mapping]] = ..., prediction: _Optional[_Union[_types_pb2.Prediction, _Mapping]] = ..., completion_chunk: _Optional[_Union[_types_pb2.CompletionChunk, _Mapping]] = ..., snapshot: _Optional[_Union[SessionResponse.Snapshot, _Mapping]] = ..., rewound: _Optional[_Union[SessionResponse.Rewound, _Mapping]] = ..., reset: _Optional[_Union[SessionResponse.Reset, _Mapping]] = ..., closed: _Optional[_Union[SessionResponse.Closed, _Mapping]] = ..., error: _Optional[_Union[SessionResponse.Error, _Mapping]] = ..., suggestions: _Optional[_Union[SessionResponse.Suggestions, _Mapping]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("model", "no_memory")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NO_MEMORY_FIELD_NUMBER: _ClassVar[int]
    model: str
    no_memory: bool
    def __init__(self, model: _Optional[str] = ..., no_memory: _Optional[bool] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session", "model")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    session: _types_pb2.SessionInfo
    model: _types_pb2.ModelInfo
    def __init__(self, session: _Optional[_Union[_types_pb2.SessionInfo, _Mapping]] = ..., model: _Optional[_Union[_types_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: _types_pb2.SessionInfo
    def __init__(self, session: _Optional[_Union[_types_pb2.SessionInfo, _Mapping]] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("session_id", "offset", "input", "top_k", "want_logprobs", "want_gates", "no_memory")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    WANT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    WANT_GATES_FIELD_NUMBER: _ClassVar[int]
    NO_MEMORY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    offset: int
    input: _types_pb2.Input
    top_k: int
    want_logprobs: bool
    want_gates: bool
    no_memory: bool
    def __init__(self, session_id: _Optional[str] = ..., offset: _Optional[int] = ..., input: _Optional[_Union[_types_pb2.Input, _Mapping]] = ..., top_k: _Optional[int] = ..., want_logprobs: _Optional[bool] = ..., want_gates: _Optional[bool] = ..., no_memory: _Optional[bool] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("prediction",)
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    prediction: _types_pb2.Prediction
    def __init__(self, prediction: _Optional[_Union[_types_pb2.Prediction, _Mapping]] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("session_id", "max_chars", "stop", "temperature", "top_k", "top_p", "seed", "n", "no_memory")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    NO_MEMORY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    max_chars: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    n: int
    no_memory: bool
    def __init__(self, session_id: _Optional[str] = ..., max_chars: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., n: _Optional[int] = ..., no_memory: _Optional[bool] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: _types_pb2.CompletionChunk
    def __init__(self, chunk: _Optional[_Union[_types_pb2.CompletionChunk, _Mapping]] = ...) -> None: ...

class SuggestRequest(_message.Message):
    __slots__ = ("session_id", "n", "scope", "max_chars")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    n: int
    scope: SuggestScope
    max_chars: int
    def __init__(self, session_id: _Optional[str] = ..., n: _Optional[int] = ..., scope: _Optional[_Union[SuggestScope, str]] = ..., max_chars: _Optional[int] = ...) -> None: ...

class SuggestResponse(_message.Message):
    __slots__ = ("suggestions",)
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    suggestions: _containers.RepeatedCompositeFieldContainer[_types_pb2.Suggestion]
    def __init__(self, suggestions: _Optional[_Iterable[_Union[_types_pb2.Suggestion, _Mapping]]] = ...) -> None: ...

class RewindRequest(_message.Message):
    __slots__ = ("session_id", "chars")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHARS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    chars: int
    def __init__(self, session_id: _Optional[str] = ..., chars: _Optional[int] = ...) -> None: ...

class RewindResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: _types_pb2.SessionInfo
    def __init__(self, session: _Optional[_Union[_types_pb2.SessionInfo, _Mapping]] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: _types_pb2.SessionInfo
    def __init__(self, session: _Optional[_Union[_types_pb2.SessionInfo, _Mapping]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("blob",)
    BLOB_FIELD_NUMBER: _ClassVar[int]
    blob: bytes
    def __init__(self, blob: _Optional[bytes] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("blob", "replay", "top_k", "want_logprobs", "want_gates")
    BLOB_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    WANT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    WANT_GATES_FIELD_NUMBER: _ClassVar[int]
    blob: bytes
    replay: _types_pb2.Input
    top_k: int
    want_logprobs: bool
    want_gates: bool
    def __init__(self, blob: _Optional[bytes] = ..., replay: _Optional[_Union[_types_pb2.Input, _Mapping]] = ..., top_k: _Optional[int] = ..., want_logprobs: _Optional[bool] = ..., want_gates: _Optional[bool] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("session", "model", "prediction")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    session: _types_pb2.SessionInfo
    model: _types_pb2.ModelInfo
    prediction: _types_pb2.Prediction
    def __init__(self, session: _Optional[_Union[_types_pb2.SessionInfo, _Mapping]] = ..., model: _Optional[_Union[_types_pb2.ModelInfo, _Mapping]] = ..., prediction: _Optional[_Union[_types_pb2.Prediction, _Mapping]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_types_pb2.ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[_types_pb2.ModelInfo, _Mapping]]] = ...) -> None: ...

class InspectGatesRequest(_message.Message):
    __slots__ = ("model", "input", "last_chars", "top_units", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LAST_CHARS_FIELD_NUMBER: _ClassVar[int]
    TOP_UNITS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    input: _types_pb2.Input
    last_chars: int
    top_units: int
    top_k: int
    def __init__(self, model: _Optional[str] = ..., input: _Optional[_Union[_types_pb2.Input, _Mapping]] = ..., last_chars: _Optional[int] = ..., top_units: _Optional[int] = ..., top_k: _Optional[int] = ...) -> None: ...

class InspectGatesResponse(_message.Message):
    __slots__ = ("model", "cell", "first_index", "characters", "tracked_units")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    TRACKED_UNITS_FIELD_NUMBER: _ClassVar[int]
    model: str
    cell: _types_pb2.Cell
    first_index: int
    characters: _containers.RepeatedCompositeFieldContainer[CharacterGates]
    tracked_units: _containers.RepeatedCompositeFieldContainer[TrackedUnit]
    def __init__(self, model: _Optional[str] = ..., cell: _Optional[_Union[_types_pb2.Cell, str]] = ..., first_index: _Optional[int] = ..., characters: _Optional[_Iterable[_Union[CharacterGates, _Mapping]]] = ..., tracked_units: _Optional[_Iterable[_Union[TrackedUnit, _Mapping]]] = ...) -> None: ...

class TrackedUnit(_message.Message):
    __slots__ = ("layer", "unit", "feature", "label", "correlation", "values")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    layer: int
    unit: int
    feature: str
    label: str
    correlation: float
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, layer: _Optional[int] = ..., unit: _Optional[int] = ..., feature: _Optional[str] = ..., label: _Optional[str] = ..., correlation: _Optional[float] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class CharacterGates(_message.Message):
    __slots__ = ("character", "layers", "next")
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    character: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerGates]
    next: _types_pb2.TopCharacters
    def __init__(self, character: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerGates, _Mapping]]] = ..., next: _Optional[_Union[_types_pb2.TopCharacters, _Mapping]] = ...) -> None: ...

class LayerGates(_message.Message):
    __slots__ = ("gates",)
    GATES_FIELD_NUMBER: _ClassVar[int]
    gates: _containers.RepeatedCompositeFieldContainer[GateSummary]
    def __init__(self, gates: _Optional[_Iterable[_Union[GateSummary, _Mapping]]] = ...) -> None: ...

class GateSummary(_message.Message):
    __slots__ = ("name", "mean", "top_units")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    TOP_UNITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    mean: float
    top_units: _containers.RepeatedCompositeFieldContainer[UnitGate]
    def __init__(self, name: _Optional[str] = ..., mean: _Optional[float] = ..., top_units: _Optional[_Iterable[_Union[UnitGate, _Mapping]]] = ...) -> None: ...

class UnitGate(_message.Message):
    __slots__ = ("unit", "value", "change")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    unit: int
    value: float
    change: float
    def __init__(self, unit: _Optional[int] = ..., value: _Optional[float] = ..., change: _Optional[float] = ...) -> None: ...
