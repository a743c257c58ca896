"""The engine's public data: what the API layer passes in and gets back. Plain dataclasses.

Nothing here imports grpc or torch. The gRPC layer (``cellserve.api``) translates protobuf
messages to and from these; the engine (``cellserve.engine.engine.Engine``) consumes and
produces them. ``EngineStats`` is what the metrics module exports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    """What kind of device work a character went through (the ``phase`` metric label)."""

    STEP = "step"  # one character of a session's keystroke, batched with others
    PREFILL = "prefill"  # a chunk of a multi-character piece (or a rewind replay)
    COMPLETION = "completion"  # a completion's decoding step


class SessionEvent(StrEnum):
    """Engine events counted in ``EngineStats.session_events`` (the ``reason`` metric label
    is the value; ``metrics`` maps the two rejections to their own series)."""

    OPENED = "opened"
    RESUMED = "resumed"
    CLOSED = "closed"  # by the client
    EXPIRED = "expired"  # idle longer than session_idle_ttl_s
    REJECTED_SESSIONS = "rejected_sessions"  # max_sessions reached
    REJECTED_COMPLETION = "rejected_completion"  # max_running_completions reached
    HANDED_OUT = "handed_out"  # written to the session store on drain and left this replica
    HANDED_IN = "handed_in"  # taken from the session store after a miss (another replica's)
    SYNCED = "synced"  # written to the session store by the background sync (stays here)


class FinishReason(StrEnum):
    LENGTH = "length"
    STOP = "stop"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    cell: str  # "lstm" | "gru"
    layers: int
    hidden: int
    vocabulary: tuple[str, ...]  # entry 0 is "" (unknown)
    weights_sha256: str
    validation_bits_per_char: float | None
    is_default: bool
    precision: str = "fp32"  # what steps run at: fp32 | int8 | fp16 | bf16 (gates: always fp32)
    precision_loss: float | None = None  # its recorded bits/char loss relative to fp32 (worst package)


@dataclass(frozen=True)
class SessionInfo:
    session_id: str  # 32 hex chars: 128 random bits
    model: str
    position: int  # characters applied so far (the offset the next Append must carry)
    created_at: float  # unix seconds
    last_used_at: float
    rewindable: int = 0  # characters Rewind can reach back right now (<= settings.rewind_window)


@dataclass(frozen=True)
class AppendOptions:
    top_k: int = 5  # 0: no distribution (cheapest); capped by settings.max_top_k
    want_logprobs: bool = False  # log-prob of each appended character given what preceded it
    want_gates: bool = False  # per-character gate activations (slow path: reference cells)
    only_last: bool = False  # when coalesced, answer only the last of the pieces? (see Engine.append)
    memory: bool = True  # mix the session memory in (when the session has one); False: the model alone


@dataclass(frozen=True)
class GateTrace:
    """Gate activations for one appended character, per layer, averaged over hidden units
    (full vectors would be [layers, hidden] floats per character per gate).

    LSTM: names ("f", "i", "g", "o", "c"); GRU: ("r", "z", "n"). values[gate][layer]."""

    names: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Prediction:
    """The model's answer after an Append: the distribution of the next character."""

    position: int  # session position after this piece
    top_k: tuple[tuple[str, float], ...]  # (character, probability), most probable first;
    # the unknown entry appears as "\ufffd"
    logprobs: tuple[float, ...] = ()  # natural-log probability of each appended character
    gates: tuple[GateTrace, ...] = ()  # one per appended character when asked for
    replayed: bool = False  # True when answered from the exactly-once cache
    superseded: bool = False  # coalesced with a later piece under only_last: no top_k; the API skips it


_new = object.__new__


def plain_prediction(position: int, top_k: tuple[tuple[str, float], ...]) -> Prediction:
    """``Prediction(position, top_k)``, its other fields at their defaults (a keystroke's
    answer), made without the frozen dataclass's ``__init__``: that sets each field through
    ``object.__setattr__``, about 0.8 us against 0.25 here, once per keystroke. The object is
    the same in every way (equal, hashable, frozen); tests/engine/test_plain_prediction.py
    holds it to the constructor, new fields included."""
    p = _new(Prediction)
    d = p.__dict__
    d["position"] = position
    d["top_k"] = top_k
    d["logprobs"] = ()
    d["gates"] = ()
    d["replayed"] = False
    d["superseded"] = False
    return p


@dataclass(frozen=True)
class CompletionRequest:
    max_chars: int = 32
    stop: tuple[str, ...] = ()  # generation of an alternative ends when its text ends with one
    temperature: float = 0.0  # 0: greedy (deterministic)
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # nucleus sampling; 1: off
    seed: int | None = None  # with the same seed and state, sampling repeats exactly
    n: int = 1  # alternatives, each from the session's state
    memory: bool = True  # mix the session memory in (when the session has one); generated text
    # advances each alternative's own fork of it, never the session's


@dataclass(frozen=True)
class SuggestRequest:
    """Ranked suggestions: the ``n`` most probable completions of the current word
    (``scope="word"``) or of the line (``"line"``), at most ``max_chars`` characters each."""

    n: int = 3
    scope: str = "word"  # "word" | "line" (limits.SUGGEST_SCOPES)
    max_chars: int = 32


@dataclass(frozen=True)
class Suggestion:
    text: str
    logprob: float  # natural log: its characters plus the end that follows them (see engine/beam.py)


@dataclass(frozen=True)
class CompletionChunk:
    alternative: int  # 0..n-1
    text: str  # new characters since the previous chunk of this alternative
    done: bool  # last chunk of this alternative
    finish_reason: str = ""  # when done: "length" | "stop" | "cancelled"


@dataclass(frozen=True)
class ModelIteration:
    """One model's share of an iteration: the iteration runs at most one batch per model."""

    model: str
    rows: int  # rows (sessions and completion alternatives) in the model's batch
    queue_wait_s: tuple[float, ...]  # per operation started: seconds since it was submitted
    device_s: float  # device seconds of the model's batch, all phases


@dataclass(frozen=True)
class IterationStats:
    """What one engine iteration did; pushed to stats listeners once per iteration."""

    rows: int  # rows (sessions and completion alternatives) in the iteration's batches
    queue_wait_s: tuple[float, ...]  # per operation started: seconds since it was submitted
    step_time_s: tuple[tuple[Phase, float], ...]  # device seconds per phase that ran
    chars: tuple[tuple[Phase, int], ...]  # characters run through the model per phase
    models: tuple[ModelIteration, ...] = ()  # the same iteration per model (batches that ran)


@dataclass(frozen=True)
class ModelTotals:
    """One model's ``ModelIteration``s summed since start (KServe's ModelStatistics reads them
    with ``EngineStats``, on request)."""

    model: str
    executions: int = 0  # iterations that ran a batch of the model
    started: int = 0  # operations started
    queue_wait_s: float = 0.0  # their summed wait from submission to their iteration
    rows: int = 0
    row_device_s: float = 0.0  # each row charged its batch's device seconds

    def plus(self, it: ModelIteration) -> ModelTotals:
        return ModelTotals(
            self.model,
            self.executions + 1,
            self.started + len(it.queue_wait_s),
            self.queue_wait_s + sum(it.queue_wait_s),
            self.rows + it.rows,
            self.row_device_s + it.device_s * it.rows,
        )


@dataclass(frozen=True)
class EngineHealth:
    serving: bool  # False once draining or stopped: new sessions are refused
    active_sessions: int
    slots_used: int
    slots_max: int
    running_completions: int
    owner_sessions: int = 0  # live sessions of the owner that asked (its session quota)


@dataclass
class EngineStats:
    """Cumulative counters and gauges for the metrics module; reading them changes nothing.
    Per-iteration observations (queue waits, step times, batch sizes) are pushed as
    ``IterationStats`` instead."""

    active_sessions: int = 0
    slots_capacity: int = 0  # allocated slots (grows in chunks)
    slots_max: int = 0
    slots_used: int = 0
    state_bytes: int = 0  # bytes of the state pool tensors, the rewind checkpoints and the session memories held
    memory_bytes: int = 0  # of which the session memories (hash tables, chains, kept text)
    running_completions: int = 0
    iterations: int = 0
    chars_processed: dict[str, int] = field(default_factory=dict)  # Phase -> chars
    session_events: dict[str, int] = field(default_factory=dict)  # SessionEvent -> count
    models: tuple[ModelTotals, ...] = ()  # per model that ran a batch, summed since start
    # speculative keystrokes (engine/speculation.py), all models: hits, misses, unguessed
    # (keystrokes), rows, wasted_rows (cumulative), slots (scratch slots held now)
    speculation: dict[str, int] = field(default_factory=dict)
