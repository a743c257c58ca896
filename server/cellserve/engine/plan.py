"""The two plain dataclasses the scheduler and the runner talk through (vLLM v1 style).

``Plan`` says what one iteration does on the device for one model; ``RunResult`` is what comes
back, already on the host. Nothing here imports torch: a state handle (a checkpoint, a
snapshot's state) is opaque to the scheduler and typed ``object``; only the runner looks
inside it (a tuple of ``arity`` tensors of [layers, hidden]).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class _Zero:
    """Sentinel: the zero state (a new or reset session)."""

    def __repr__(self) -> str:
        return "ZERO"


ZERO: object = _Zero()


@dataclass(frozen=True)
class CheckpointRef:
    """A state handle in the checkpoint pool: slot ``slot`` of the model's second, slot-indexed
    pool (rewind checkpoints), owned by one session's ``RewindLog`` until it drops it."""

    slot: int


@dataclass(eq=False)
class HostState:
    """A state handle still in host bytes (a resumed snapshot's little-endian fp32 state,
    [layers, hidden] per state tensor). The runner turns it into tensors in the device worker,
    so no torch work runs on the event loop; ``device`` caches that conversion."""

    raw: tuple[bytes, ...]
    layers: int
    hidden: int
    device: object | None = None  # set by the runner: the tensors, once converted


@dataclass(frozen=True)
class SampleParams:
    """How a completion step picks its next token from the row's final distribution."""

    temperature: float  # 0: greedy (argmax)
    top_k: int  # 0: no top-k filter
    top_p: float  # 1: no nucleus filter
    uniform: float  # one U[0,1) draw from the request's seeded generator (inverse-CDF sampling)


@dataclass(slots=True)
class Row:
    """One row of the batch: a state advancing over ``tokens``.

    A row with no tokens is a "peek": it only reads the distribution the start state predicts
    (the first character of a completion comes from the session's state unchanged)."""

    tokens: list[int]  # [T] vocabulary ids
    src: int | None  # slot whose state the row starts from; None: start from ``init``
    init: object | None = None  # ZERO or a state handle when ``src`` is None
    dst: int | None = None  # slot that receives the final state; None: discard it
    ends: list[tuple[int, int]] = field(default_factory=list)  # (tokens consumed 1..T, top_k): a result point
    logprobs: bool = False  # log-prob of every token given the state before it
    gates: bool = False  # run on the reference cells and return per-token gate traces (slow path)
    sample: SampleParams | None = None  # draw the next token from the distribution at the row's end
    # multi-step decoding (a single-token sampling row only): feed each drawn token back and
    # draw again, once per entry, in the same iteration; every row of such a plan has as many
    more: list[SampleParams] = field(default_factory=list)
    checkpoint: int | None = None  # checkpoint-pool slot that receives a copy of the final state
    # the session memory as of the row's start (a ``memory.window.MemoryFork``, or the
    # ``SessionMemory`` itself; opaque here): every distribution the row serves is mixed with it
    # (the runner only predicts from it, so the row's tokens never reach the session's memory:
    # the core pushes them at commit)
    memory: object | None = None


@dataclass
class Plan:
    """The device work of one iteration for one model. Every row and every read sees the states
    as they were at the start of the iteration; the write-back of row states, then ``writes``,
    happen at the runner's ``commit()``. (The scheduler never reads a slot it writes in the
    same plan: a session contributes one row, write or read per iteration.)"""

    rows: list[Row] = field(default_factory=list)
    writes: list[tuple[int, object]] = field(default_factory=list)  # (slot, ZERO | state handle)
    reads: list[int] = field(default_factory=list)  # slots whose state is copied to the host (snapshots)
    capacity: int = 0  # slots the pool must hold (the highest slot in use + 1 at least)
    checkpoint_capacity: int = 0  # likewise for the checkpoint pool

    def is_empty(self) -> bool:
        return not (self.rows or self.writes or self.reads)


@dataclass(slots=True)
class RowResult:
    top_k: list[list[tuple[int, float]]]  # per end: (vocabulary id, probability), most probable first
    logprobs: list[float]  # per token when asked for
    gates: list[list[list[float]]]  # per token when asked for: [gate][layer] mean activation
    sampled: int | None  # the drawn token of a sampling row
    sampled_more: list[int] = field(default_factory=list)  # the tokens drawn for ``Row.more``


@dataclass
class RunResult:
    rows: list[RowResult]
    reads: list[list[bytes]]  # per read slot: raw fp32 bytes of each state tensor ([layers, hidden] each)
    # (phase, characters, seconds) for the stats: phases "step", "prefill", "completion"
    phases: list[tuple[str, int, float]] = field(default_factory=list)
