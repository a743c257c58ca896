"""Result types: frozen dataclasses built from the wire messages (never protobuf itself)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Cell(enum.Enum):
    """The recurrent cell of a model."""

    UNSPECIFIED = "unspecified"
    LSTM = "lstm"
    GRU = "gru"


class FinishReason(enum.Enum):
    """Why one alternative of a completion ended."""

    UNSPECIFIED = "unspecified"
    LENGTH = "length"  # max_chars reached
    STOP = "stop"  # the text ends with a stop string
    CANCELLED = "cancelled"  # a later append, a close or a cancelled call stopped it


@dataclass(frozen=True)
class ModelInfo:
    """A model a server has loaded."""

    name: str
    cell: Cell
    layers: int
    hidden: int
    vocabulary: tuple[str, ...]
    weights_sha256: str
    validation_bits_per_char: float | None
    is_default: bool
    # The precision the server runs its steps at ("fp32", "int8", "fp16", "bf16"); gates are
    # always fp32. precision_loss: its measured held-out bits/char loss relative to fp32.
    precision: str = "fp32"
    precision_loss: float | None = None


@dataclass(frozen=True)
class SessionInfo:
    """Where a server session stands."""

    session_id: str
    model: str
    position: int
    created_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class Gate:
    """One gate's activation for one input element, averaged over hidden units, per layer."""

    name: str
    layers: tuple[float, ...]


@dataclass(frozen=True)
class UnitGate:
    """One hidden unit's gate value, and its change since the previous character (None for the
    text's first character)."""

    unit: int
    value: float
    change: float | None


@dataclass(frozen=True)
class GateSummary:
    """One gate of one layer after one character: the mean over the units, and the units that
    changed most (largest ``|change|`` first; for the first character, those furthest from 0.5)."""

    name: str
    mean: float
    top_units: tuple[UnitGate, ...]


@dataclass(frozen=True)
class CharacterGates:
    """The gates after reading one character (``layers[layer]``: f, i, o or r, z) and the most
    probable next characters."""

    character: str
    layers: tuple[tuple[GateSummary, ...], ...]
    top: tuple[tuple[str, float], ...]

    def gate(self, layer: int, name: str) -> GateSummary:
        return next(g for g in self.layers[layer] if g.name == name)


@dataclass(frozen=True)
class TrackedUnit:
    """A unit whose state tracks something readable in the text (``feature``: "in_string",
    "in_comment", "bracket_depth", "indent" or "column"; ``label`` says it in words), found
    offline on the training corpus (Pearson's ``correlation`` there), and its state after each
    reported character (LSTM: cell state c; GRU: hidden state h)."""

    layer: int
    unit: int
    feature: str
    label: str
    correlation: float
    values: tuple[float, ...]


@dataclass(frozen=True)
class GateInspection:
    """``AsyncClient.inspect_gates``: the reported characters start at ``first_index`` of the
    text; ``tracked`` are the model's units that track the text (empty when the server has
    none stored for the model: ``cellserve units`` writes them)."""

    model: str
    cell: Cell
    first_index: int
    characters: tuple[CharacterGates, ...]
    tracked: tuple[TrackedUnit, ...] = ()


@dataclass(frozen=True)
class Prediction:
    """The model's answer after an append: the position and the most probable next characters.

    ``top`` is most probable first; the unknown-character entry shows as U+FFFD.
    """

    position: int
    top: tuple[tuple[str, float], ...] = ()
    logprobs: tuple[float, ...] = ()
    gates: tuple[tuple[Gate, ...], ...] = ()
    replayed: bool = False
    superseded: bool = False

    @property
    def best(self) -> str | None:
        """The most probable next character, or None when no distribution was asked for."""
        return self.top[0][0] if self.top else None


@dataclass(frozen=True)
class CompletionChunk:
    """A piece of one alternative of a completion, as it is generated."""

    alternative: int
    text: str
    done: bool = False
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Completion:
    """One finished alternative of a completion."""

    alternative: int
    text: str
    finish_reason: FinishReason


@dataclass(frozen=True)
class Suggestion:
    """One ranked suggestion (see ``Session.suggest``): the completion and its natural-log
    probability, counting the end that follows it (a non-word character, or the newline)."""

    text: str
    logprob: float


@dataclass(frozen=True)
class SuggestOptions:
    """What a suggest asks for (see ``Session.suggest``); None: the server default."""

    n: int = 3
    scope: str = "word"  # "word" | "line"
    max_chars: int | None = None


@dataclass(frozen=True)
class AppendOptions:
    """What a prediction carries (see ``Session.append``)."""

    top_k: int | None = None  # None: the server default (5); 0: no distribution (cheapest)
    logprobs: bool = False
    gates: bool = False
    only_last: bool = False
    memory: bool = True  # False: the model's distribution alone, without the session memory


@dataclass(frozen=True)
class CompletionOptions:
    """How a completion samples (see ``Session.complete``)."""

    max_chars: int | None = None
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_k: int = 0
    top_p: float | None = None
    seed: int | None = None
    n: int | None = None
    memory: bool = True  # False: generate from the model alone, without the session memory


@dataclass(frozen=True)
class FailoverPolicy:
    """How a session survives the loss of its server.

    A session snapshots itself every ``snapshot_every_chars`` characters and/or every
    ``snapshot_every_s`` seconds (None disables that trigger; a snapshot costs one call and
    bounds how much text a failover replays). On failover it tries the targets in turn,
    starting with the current one, at most ``max_attempts`` times, sleeping an exponentially
    growing, fully jittered delay between attempts (at least the server's retry hint, when
    it sent one). Only failures another try can fix are retried: an unreachable or draining
    server, a lost session, a model another replica has. ``enabled=False`` (or
    ``failover=None`` on the client) turns all of it off.
    """

    enabled: bool = True
    max_attempts: int = 6
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    snapshot_every_chars: int | None = 64
    snapshot_every_s: float | None = 30.0
    snapshots_kept: int = 4  # older snapshots serve rewinds that go back past the newest one
    max_append_chars: int = 4096  # the server's max_append_chars: longer text goes in pieces

    @classmethod
    def of(cls, failover: FailoverPolicy | None) -> FailoverPolicy:
        """The policy a client's ``failover`` argument names: None turns failover and every
        retry off (one attempt, errors raised as they come)."""
        return cls(enabled=False, max_attempts=1) if failover is None else failover

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_append_chars < 1:
            raise ValueError("max_append_chars must be at least 1")
        if self.snapshots_kept < 1:
            raise ValueError("snapshots_kept must be at least 1")


@dataclass
class _Snapshot:
    """A snapshot blob and the session position it captured (internal bookkeeping)."""

    position: int
    blob: bytes = field(repr=False)
