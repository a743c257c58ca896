"""Sessions partitioned among several engine-core processes (``cellserve serve --cores K``).

A session lives on one core for its whole life, and its id names that core: ``core_of(id)``
is a stable hash (blake2b, not Python's salted ``hash``, so every process agrees; not crc32,
whose linearity sent the twelve similar KServe keys of tests/engine/test_shards.py to two of
four cores) modulo the
number of cores, and a core mints only ids that hash to itself (``mint_id``: about K tries of
``token_hex``, 128 random bits each). So a frontend routes every call on a session with no
lookup and no directory shared between processes, and a session handed off between replicas
(which keeps its id) lands on the core its id names.

A KServe sequence id names a core too (``sequence_core``, from owner, model and id): the
sequence's START opens its session there, so the id table entry and the session it names
are on one core, as the table's liveness check needs.

What the cores report is combined here for the frontends and the metrics endpoint:
``combined_stats`` sums counters and gauges (per-model totals by model), and
``combined_health`` serves only while every core does.

What the cores count together (quotas, the session cap) is not here: it is the shared
admission ledger (``engine/ledger.py``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from .types import EngineHealth, EngineStats, ModelTotals


@dataclass(frozen=True)
class Shard:
    """Which of the server's core processes this is: ``index`` of ``cores``."""

    index: int = 0
    cores: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.cores:
            raise ValueError(f"core index {self.index} is not one of {self.cores} cores")

    def mint_id(self) -> str:
        """A new random session id that ``core_of`` maps to this core."""
        while True:
            sid = secrets.token_hex(16)
            if self.cores == 1 or core_of(sid, self.cores) == self.index:
                return sid


ONE = Shard()


def core_of(session_id: str, cores: int) -> int:
    """The core a session id lives on (any string: an unknown id is answered NotFound there)."""
    if cores == 1:
        return 0
    return _hash(session_id) % cores


def sequence_core(owner: str, model: str, seq: str, cores: int) -> int:
    """The core that holds a KServe sequence id's entry, and opens the session it names."""
    if cores == 1:
        return 0
    return _hash("\x00".join((owner, model, seq))) % cores


def _hash(key: str) -> int:
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def combined_stats(readings: Sequence[EngineStats]) -> EngineStats:
    """Every core's statistics as one engine's: counters and gauges summed, per-model totals
    summed by model."""
    if len(readings) == 1:
        return readings[0]
    out = EngineStats()
    models: dict[str, ModelTotals] = {}
    for st in readings:
        out.active_sessions += st.active_sessions
        out.slots_capacity += st.slots_capacity
        out.slots_max += st.slots_max
        out.slots_used += st.slots_used
        out.state_bytes += st.state_bytes
        out.memory_bytes += st.memory_bytes
        out.running_completions += st.running_completions
        out.iterations += st.iterations
        for target, source in (
            (out.chars_processed, st.chars_processed),
            (out.session_events, st.session_events),
            (out.speculation, st.speculation),
        ):
            for key, n in source.items():
                target[key] = target.get(key, 0) + n
        for mt in st.models:
            had = models.get(mt.model)
            models[mt.model] = mt if had is None else _plus(had, mt)
    out.models = tuple(models[name] for name in sorted(models))
    return out


def _plus(a: ModelTotals, b: ModelTotals) -> ModelTotals:
    return ModelTotals(
        a.model,
        a.executions + b.executions,
        a.started + b.started,
        a.queue_wait_s + b.queue_wait_s,
        a.rows + b.rows,
        a.row_device_s + b.row_device_s,
    )


def combined_health(readings: Sequence[EngineHealth]) -> EngineHealth:
    """Serving while every core serves; gauges summed. ``owner_sessions`` comes from the
    shared ledger, so every core reads the same number: the largest reading is the latest."""
    if len(readings) == 1:
        return readings[0]
    return EngineHealth(
        serving=all(h.serving for h in readings),
        active_sessions=sum(h.active_sessions for h in readings),
        slots_used=sum(h.slots_used for h in readings),
        slots_max=sum(h.slots_max for h in readings),
        running_completions=sum(h.running_completions for h in readings),
        owner_sessions=max(h.owner_sessions for h in readings),
    )
