"""``RoutingEngineClient``: a frontend's ``EngineClient`` over several engine-core processes.

With ``--cores K`` the sessions are partitioned among K core processes (``engine/shards.py``);
a frontend holds one ``ZmqEngineClient`` per core and this client routes each call:

- a call on a session goes to the core its id names (``core_of``), so one session's
  operations still travel in call order over one socket (ordering and exactly-once hold as
  with one core); a completion's chunks come back over that socket;
- a new session (open, resume) goes to the next core in turn; a KServe START to the core its
  sequence id names (``sequence_core``), as do the sequence table's calls; a handed-off
  session (adopt) to the core its id names;
- stream leases, the tokens file and the model list go to core 0 (one core holds every lease,
  so the stream caps stay exact); limits go to every core, each before the tenant's next
  call on it;
- health, statistics, drain, stop and handoff exports ask every core: health serves while
  every core serves, statistics are summed, exports concatenated.

The per-tenant quotas and the session cap are counted by the cores together, in the shared
admission ledger; nothing here counts anything. The API layer's metric events go with the
calls to core 0 (its client holds the frontend's recorder), which serves the one ``/metrics``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Sequence

from ..engine.admission import Limits
from ..engine.client import DEFAULT_OPTIONS
from ..engine.shards import combined_health, combined_stats, core_of, sequence_core
from ..engine.types import (
    AppendOptions,
    CompletionRequest,
    EngineHealth,
    EngineStats,
    ModelInfo,
    Prediction,
    SessionInfo,
    Suggestion,
    SuggestRequest,
)
from ..gate_report import GateQuery, GateReport
from ..handoff.record import HandoffRecord
from .client import ForwardingRecorder, ZmqEngineClient, _Completion


class RoutingEngineClient:
    """Implements ``cellserve.engine.client.EngineClient`` (and what a frontend asks of its
    ``ZmqEngineClient``) over one ``ZmqEngineClient`` per core; ``cores[0]`` carries the
    frontend's metric events."""

    def __init__(self, cores: Sequence[ZmqEngineClient]) -> None:
        if not cores:
            raise ValueError("a routing client needs at least one core")
        self.cores = list(cores)
        self.recorder: ForwardingRecorder = self.cores[0].recorder
        self._next = itertools.cycle(range(len(self.cores)))

    def _of(self, session_id: str) -> ZmqEngineClient:
        return self.cores[core_of(session_id, len(self.cores))]

    def _seq(self, owner: str, model: str, seq: str) -> ZmqEngineClient:
        return self.cores[sequence_core(owner, model, seq, len(self.cores))]

    def _any(self) -> ZmqEngineClient:
        return self.cores[next(self._next)]

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        for c in self.cores:
            await c.start()

    async def drain(self) -> None:
        await asyncio.gather(*(c.drain() for c in self.cores))

    async def stop(self) -> None:
        for c in self.cores:
            await c.stop()

    def core_lost(self) -> None:
        """A core is gone (the supervisor stops the server): every call fails UNAVAILABLE."""
        for c in self.cores:
            c.core_lost()

    @property
    def connected(self) -> bool:
        return all(c.connected for c in self.cores)

    def flush_metrics(self) -> None:
        self.cores[0].flush_metrics()

    # ---- queries ----------------------------------------------------------------------------
    def models(self, owner: str) -> Awaitable[list[ModelInfo]]:
        return self.cores[0].models(owner)

    def get_session(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        return self._of(session_id).get_session(owner, session_id)

    async def health(self, owner: str) -> EngineHealth:
        return combined_health(await asyncio.gather(*(c.health(owner) for c in self.cores)))

    async def stats(self, owner: str) -> EngineStats:
        return combined_stats(await asyncio.gather(*(c.stats(owner) for c in self.cores)))

    def tokens(self, force: bool) -> Awaitable[bytes]:
        return self.cores[0].tokens(force)

    def inspect_gates(self, query: GateQuery) -> Awaitable[GateReport]:
        return self._any().inspect_gates(query)  # every core holds the weights: spread the work

    # ---- admission --------------------------------------------------------------------------
    def set_limits(self, owner: str, limits: Limits) -> None:
        for c in self.cores:
            c.set_limits(owner, limits)

    def open_stream(self, owner: str) -> Awaitable[int]:
        return self.cores[0].open_stream(owner)

    def close_stream(self, owner: str, lease: int) -> None:
        self.cores[0].close_stream(owner, lease)

    # ---- KServe sequence ids ----------------------------------------------------------------
    def bind_sequence(self, owner: str, model: str, seq: str, session_id: str) -> Awaitable[str | None]:
        return self._seq(owner, model, seq).bind_sequence(owner, model, seq, session_id)

    def find_sequence(self, owner: str, model: str, seq: str) -> Awaitable[SessionInfo]:
        return self._seq(owner, model, seq).find_sequence(owner, model, seq)

    def forget_sequence(self, owner: str, model: str, seq: str, session_id: str) -> None:
        self._seq(owner, model, seq).forget_sequence(owner, model, seq, session_id)

    # ---- session operations -----------------------------------------------------------------
    def open_session(
        self, owner: str, model: str | None = None, memory: bool = True, sequence: str = ""
    ) -> Awaitable[SessionInfo]:
        core = self._seq(owner, model or "", sequence) if sequence else self._any()
        return core.open_session(owner, model, memory)

    def append(
        self, owner: str, session_id: str, offset: int, text: str, options: AppendOptions = DEFAULT_OPTIONS
    ) -> Awaitable[Prediction]:
        return self._of(session_id).append(owner, session_id, offset, text, options)

    def rewind(self, owner: str, session_id: str, chars: int) -> Awaitable[SessionInfo]:
        return self._of(session_id).rewind(owner, session_id, chars)

    def reset(self, owner: str, session_id: str) -> Awaitable[SessionInfo]:
        return self._of(session_id).reset(owner, session_id)

    def snapshot(self, owner: str, session_id: str) -> Awaitable[bytes]:
        return self._of(session_id).snapshot(owner, session_id)

    def resume(
        self, owner: str, blob: bytes, replay: str = "", options: AppendOptions = DEFAULT_OPTIONS
    ) -> Awaitable[tuple[SessionInfo, Prediction | None]]:
        return self._any().resume(owner, blob, replay, options)

    def complete(self, owner: str, session_id: str, request: CompletionRequest) -> _Completion:
        return self._of(session_id).complete(owner, session_id, request)

    def suggest(self, owner: str, session_id: str, request: SuggestRequest) -> Awaitable[list[Suggestion]]:
        return self._of(session_id).suggest(owner, session_id, request)

    def close_session(self, owner: str, session_id: str) -> Awaitable[None]:
        return self._of(session_id).close_session(owner, session_id)

    # ---- handoff ----------------------------------------------------------------------------
    async def export_sessions(self, idle_s: float | None, move: bool = False) -> list[HandoffRecord]:
        parts: list[list[HandoffRecord]] = await asyncio.gather(*(c.export_sessions(idle_s, move) for c in self.cores))
        return [record for part in parts for record in part]

    def adopt(self, owner: str, record: HandoffRecord) -> Awaitable[SessionInfo]:
        return self._of(record.session_id).adopt(owner, record)
