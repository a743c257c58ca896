"""The async frontend of the engine: tickets -> futures, the TTL sweep, the core thread.

``Engine`` wraps an ``EngineCore`` (``engine/core.py``: the session table, the model runtimes,
the synchronous ``step()``), which only the core thread (``engine/loop.py``) touches. What runs
where:

- the event loop: every call becomes a ``Call`` with a new integer ticket, posted to the core
  thread's inbox; its future (the caller's alone: no shield, no done-callback chain) waits
  in a dict by ticket. Each ``StepOutput`` arrives with ONE ``call_soon_threadsafe`` and is
  applied here: tickets -> futures resolved, completion chunks queued, stats to listeners;
- the core thread: drains the inbox into the core (a refusal is an answer like any other),
  steps while there is work, hands on one output per pass. The loop never waits on the core
  and never takes a lock; the core never sees a future.

Lifecycle: ``start`` starts the thread and the sweep; ``drain`` refuses new sessions and
returns once queued work and running completions are answered; ``stop`` ends the thread after
the pass in flight and fails what is still queued with ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from ..config import Settings
from ..errors import Unavailable
from ..handoff.record import HandoffRecord
from ..repository import ModelRepository
from .admission import Limits
from .completion_stream import CompletionStream
from .core import EngineCore
from .core_io import Call, ChunkOut, Delivery, Outcome, StepOutput
from .loop import CoreLoop
from .types import (
    AppendOptions,
    CompletionChunk,
    CompletionRequest,
    EngineHealth,
    EngineStats,
    IterationStats,
    ModelInfo,
    Prediction,
    SessionInfo,
    Suggestion,
    SuggestRequest,
)

log = logging.getLogger(__name__)

_DEFAULT_OPTIONS = AppendOptions()  # frozen: safe to share as a default


class Engine:
    def __init__(self, settings: Settings, repository: ModelRepository, core: EngineCore | None = None) -> None:
        self.settings = settings
        self.repository = repository
        self.core = core or EngineCore(settings, repository)
        self.device = self.core.device
        self._loop: asyncio.AbstractEventLoop | None = None
        self._core_loop = CoreLoop(self.core, self._hand_off, self.settings.speculation_delay_s)
        self._started = False
        self._stopped = False
        self._idle = asyncio.Event()
        self._sweep_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[IterationStats], None]] = []
        # tickets -> what their answers resolve (event loop only)
        self._tickets = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._chunks: dict[int, asyncio.Queue[CompletionChunk | BaseException | None]] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        if self.settings.cpu_threads and self.core.device.type == "cpu":
            torch.set_num_threads(self.settings.cpu_threads)
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._core_loop.start()
        self._sweep_task = asyncio.create_task(self._sweep(), name="cellserve-sweep")

    async def drain(self) -> None:
        """Refuses new sessions from now on; returns once queued work and running completions
        are done (their callers are answered)."""
        self._core_loop.post(Call(0, "start_draining"))
        while self._core_loop.alive:
            self._idle.clear()  # before asking: an idle pass after the answer sets it again
            if not await self._ask("has_work"):
                return
            await self._idle.wait()

    async def stop(self) -> None:
        """Ends the core thread after the pass in flight; what is still queued fails with
        ``Unavailable``."""
        self._core_loop.post(Call(0, "start_draining"))
        if self._sweep_task is not None:
            self._sweep_task.cancel()
            try:
                await self._sweep_task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self._core_loop.stop)
        await asyncio.sleep(0)  # the last pass's output, already posted, is applied first
        self._stopped = True  # from now on calls run here, on the core directly
        self._core_loop.drain_inbox()
        self.core.fail_all(Unavailable("server is stopping"))
        self._apply(self.core.take_deliveries())
        for ticket in list(self._waiting):  # nothing is left to answer them
            self._apply([Outcome(ticket, None, Unavailable("server is stopping"))])
        self._idle.set()

    @property
    def running(self) -> bool:
        """The core thread is alive."""
        return self._core_loop.alive

    # ---- queries -----------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return self.core.models()  # fixed at start: read from any thread

    def get_session(self, session_id: str, owner: str = "") -> asyncio.Future[SessionInfo]:
        return self._ask("get_session", session_id, owner)

    def get_session_queued(self, session_id: str, owner: str = "") -> asyncio.Future[SessionInfo]:
        return self._ask("get_session_queued", session_id, owner)

    def stats(self) -> asyncio.Future[EngineStats]:
        return self._ask("stats")

    def health(self, owner: str = "") -> asyncio.Future[EngineHealth]:
        return self._ask("health", owner)

    def add_stats_listener(self, listener: Callable[[IterationStats], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # ---- admission (engine/admission.py) -------------------------------------------------------
    def set_limits(self, owner: str, limits: Limits) -> None:
        """``owner``'s quotas from now on (in call order: before the calls that follow)."""
        self._call(Call(0, "set_limits", (owner, limits)))

    def open_stream(self, owner: str) -> asyncio.Future[int]:
        """A stream lease (per-tenant quota and ``max_concurrent_streams``), or CapacityExceeded."""
        return self._ask("open_stream", owner)

    def close_stream(self, lease: int) -> None:
        self._call(Call(0, "close_stream", (lease,)))

    # ---- KServe sequence ids (see EngineCore.bind_sequence) ------------------------------------
    def bind_sequence(self, owner: str, model: str, seq: str, session_id: str) -> asyncio.Future[str | None]:
        return self._ask("bind_sequence", owner, model, seq, session_id)

    def find_sequence(self, owner: str, model: str, seq: str) -> asyncio.Future[SessionInfo]:
        return self._ask("find_sequence", owner, model, seq)

    def forget_sequence(self, owner: str, model: str, seq: str, session_id: str) -> None:
        self._call(Call(0, "forget_sequence", (owner, model, seq, session_id)))

    # ---- sessions ----------------------------------------------------------------------------
    def open_session(
        self, model: str | None = None, owner: str = "", memory: bool = True
    ) -> asyncio.Future[SessionInfo]:
        """A new session; ``memory`` False: no session memory (see ``EngineCore.open_session``)."""
        return self._ask("open_session", model, owner, memory)

    async def append(
        self, session_id: str, offset: int, text: str, options: AppendOptions = _DEFAULT_OPTIONS, owner: str = ""
    ) -> Prediction:
        return await self.submit_append(session_id, offset, text, options, owner)

    def submit_append(
        self, session_id: str, offset: int, text: str, options: AppendOptions = _DEFAULT_OPTIONS, owner: str = ""
    ) -> asyncio.Future[Prediction]:
        """The future of the piece's Prediction (see ``EngineCore.submit_append``); a refusal
        is its exception. The future is the caller's alone: cancelling it drops the answer,
        never the piece (a piece accepted is applied exactly once)."""
        return self._submit("submit_append", session_id, offset, text, options, owner)

    def complete(self, session_id: str, request: CompletionRequest, owner: str = "") -> CompletionStream:
        """The completion's chunks; a refusal is raised by the stream's first ``__anext__``."""
        ticket = next(self._tickets)
        chunks: asyncio.Queue[CompletionChunk | BaseException | None] = asyncio.Queue()
        self._chunks[ticket] = chunks
        self._call(Call(ticket, "complete", (session_id, request, owner), ticketed=True))
        return CompletionStream(ticket, chunks, self._cancel_completion)

    async def rewind(self, session_id: str, chars: int, owner: str = "") -> SessionInfo:
        return await self.submit_rewind(session_id, chars, owner)

    def submit_rewind(self, session_id: str, chars: int, owner: str = "") -> asyncio.Future[SessionInfo]:
        return self._submit("submit_rewind", session_id, chars, owner)

    async def reset(self, session_id: str, owner: str = "") -> SessionInfo:
        return await self.submit_reset(session_id, owner)

    def submit_reset(self, session_id: str, owner: str = "") -> asyncio.Future[SessionInfo]:
        return self._submit("submit_reset", session_id, owner)

    async def snapshot(self, session_id: str, owner: str = "") -> bytes:
        return await self.submit_snapshot(session_id, owner)

    def submit_snapshot(self, session_id: str, owner: str = "") -> asyncio.Future[bytes]:
        return self._submit("submit_snapshot", session_id, owner)

    def resume(
        self, blob: bytes, replay: str = "", options: AppendOptions = _DEFAULT_OPTIONS, owner: str = ""
    ) -> asyncio.Future[tuple[SessionInfo, Prediction | None]]:
        """A new session from a snapshot, ``replay`` appended (see ``EngineCore.resume``)."""
        return self._submit("resume", blob, replay, options, owner)

    def submit_suggest(
        self, session_id: str, request: SuggestRequest, owner: str = ""
    ) -> asyncio.Future[list[Suggestion]]:
        """Ranked suggestions (see ``EngineCore.submit_suggest``), ordered with the session's
        other operations; answered when the core's beam search ends."""
        return self._submit("submit_suggest", session_id, request, owner)

    async def close_session(self, session_id: str, owner: str = "") -> None:
        await self.submit_close(session_id, owner)

    def submit_close(self, session_id: str, owner: str = "") -> asyncio.Future[None]:
        return self._submit("submit_close", session_id, owner)

    # ---- handoff between replicas (cellserve.handoff) -----------------------------------------
    def export_sessions(self, idle_s: float | None = None, move: bool = False) -> asyncio.Future[list[HandoffRecord]]:
        """Idle sessions as handoff records (see ``EngineCore.export_sessions``)."""
        return self._ask("export_sessions", idle_s, move)

    def adopt(self, owner: str, record: HandoffRecord) -> asyncio.Future[SessionInfo]:
        """The record's session, here, under its own id (see ``EngineCore.adopt``)."""
        return self._ask("adopt", owner, record)

    # ---- internals ---------------------------------------------------------------------------
    def _post(self, method: str, args: tuple[Any, ...], ticketed: bool) -> asyncio.Future[Any]:
        """A new ticket, its future, and the call posted to the core thread (event loop)."""
        ticket = next(self._tickets)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ticket] = fut
        self._call(Call(ticket, method, args, ticketed))
        return fut

    def _call(self, call: Call) -> None:
        if not self._stopped:
            self._core_loop.post(call)
            return
        self.core.add(call)  # stopped: the core is the event loop's now (a last stats read)
        self._apply(self.core.take_deliveries())

    def _ask(self, method: str, *args: Any) -> asyncio.Future[Any]:
        """A query or an immediate operation: answered by the core thread's next pass."""
        return self._post(method, args, False)

    def _submit(self, method: str, *args: Any) -> asyncio.Future[Any]:
        """A queued operation: answered when the core applies it (or refuses it)."""
        return self._post(method, args, True)

    def _cancel_completion(self, ticket: int) -> None:
        self._call(Call(0, "cancel_completion", (ticket,)))

    async def _sweep(self) -> None:
        """Closes sessions idle longer than the TTL, once per interval."""
        while True:
            await asyncio.sleep(self.settings.session_sweep_interval_s)
            self._core_loop.post(Call(0, "expire_idle", (time.time() - self.settings.session_idle_ttl_s,)))

    def _hand_off(self, out: StepOutput) -> bool:
        """Core thread: one pass's output to the event loop, in one wake-up."""
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._on_step, out)
        except RuntimeError:  # the loop is closed: nobody is left to answer
            return False
        return True

    def _on_step(self, out: StepOutput) -> None:
        self._apply(out.deliveries)
        if out.stats is not None:
            for listener in list(self._listeners):
                try:
                    listener(out.stats)
                except Exception:
                    log.exception("a statistics listener failed")
        if out.idle:
            self._idle.set()

    def _apply(self, deliveries: list[Delivery]) -> None:
        """Tickets -> futures and chunk queues (event loop)."""
        waiting, streams = self._waiting, self._chunks
        for d in deliveries:
            if isinstance(d, ChunkOut):
                ticket = d.completion.ticket
                q = streams.get(ticket) if d.chunk is not None else streams.pop(ticket, None)
                if q is not None:
                    q.put_nowait(d.chunk)
                continue
            fut = waiting.pop(d.ticket, None)
            if fut is None:
                if d.error is not None and (q := streams.pop(d.ticket, None)) is not None:
                    q.put_nowait(d.error)  # a completion refused: its stream raises it
                continue
            if fut.done():  # a caller that gave up
                continue
            if d.error is not None:
                fut.set_exception(d.error)
                fut.exception()  # mark retrieved: nobody may be waiting
            else:
                fut.set_result(d.value)
