"""The async frontend of the engine: futures, admission, the TTL sweep and the device thread.

``Engine`` wraps an ``EngineCore`` (``engine/core.py``), which owns the sessions, the model
runtimes and the synchronous ``step()``. What runs where:

- the event loop: submissions (validated and queued by the core under its lock, each with
  an integer ticket whose future is created here and handed to the caller alone: no shield,
  no done-callback chain), the TTL sweep, completion cancellation, and applying each
  ``StepOutput`` (tickets -> futures resolved, completion chunks queued, stats to listeners);
- the one device thread (``cellserve-device``): ``while work: core.step()``, each step's output
  handed to the loop with ONE ``call_soon_threadsafe``. A submission wakes the thread with a
  ``threading.Event``; while work remains it steps back to back without a round trip through
  the loop, so the loop never awaits the device and an idle loop costs the device nothing.

Lifecycle: ``start`` starts the thread and the sweep; ``drain`` refuses new sessions and
returns once queued work and running completions are answered; ``stop`` ends the thread after
the step in flight and fails what is still queued with ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from ..config import Settings
from ..errors import Unavailable
from ..repository import ModelRepository
from .completions import Completion, CompletionStream
from .core import ChunkOut, EngineCore, Outcome, StepOutput
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
STEP_RETRY_S = 0.05  # after a step raised: the pause before the next one


class Engine:
    def __init__(self, settings: Settings, repository: ModelRepository, core: EngineCore | None = None) -> None:
        self.settings = settings
        self.repository = repository
        self.core = core or EngineCore(settings, repository)
        self.device = self.core.device
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._kick = threading.Event()  # work was submitted (or stop was asked)
        self._stopping = False
        self._idle = asyncio.Event()
        self._sweep_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[IterationStats], None]] = []
        # tickets -> what their answers resolve (event loop only)
        self._tickets = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._chunks: dict[int, asyncio.Queue[CompletionChunk | None]] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is not None:
            return
        if self.settings.cpu_threads and self.core.device.type == "cpu":
            torch.set_num_threads(self.settings.cpu_threads)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._device_loop, name="cellserve-device", daemon=True)
        self._thread.start()
        self._sweep_task = asyncio.create_task(self._sweep(), name="cellserve-sweep")

    async def drain(self) -> None:
        """Refuses new sessions from now on; returns once queued work and running completions
        are done (their callers are answered)."""
        with self.core.lock:
            self.core.draining = True
        while self._thread is not None and self._thread.is_alive() and self.core.has_pending():
            self._idle.clear()
            self._kick.set()
            await self._idle.wait()

    async def stop(self) -> None:
        """Ends the device thread after the step in flight; what is still queued fails with
        ``Unavailable``."""
        with self.core.lock:
            self.core.draining = True
        self._stopping = True
        self._kick.set()
        if self._sweep_task is not None:
            self._sweep_task.cancel()
            try:
                await self._sweep_task
            except asyncio.CancelledError:
                pass
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        await asyncio.sleep(0)  # the last step's output, already posted, is applied first
        self.core.fail_all(Unavailable("server is stopping"))
        self._apply(self.core.take_outbox())
        self._idle.set()

    @property
    def running(self) -> bool:
        """The device thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # ---- queries -----------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return self.core.models()

    def get_session(self, session_id: str, owner: str = "") -> SessionInfo:
        return self.core.get_session(session_id, owner)

    def get_session_queued(self, session_id: str, owner: str = "") -> SessionInfo:
        return self.core.get_session_queued(session_id, owner)

    def stats(self) -> EngineStats:
        return self.core.stats()

    def health(self, owner: str = "") -> EngineHealth:
        return self.core.health(owner)

    def add_stats_listener(self, listener: Callable[[IterationStats], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # ---- sessions ----------------------------------------------------------------------------
    def open_session(self, model: str | None = None, owner: str = "") -> SessionInfo:
        info = self.core.open_session(model, owner)
        self._kick.set()  # the new session's start-state write
        return info

    async def append(
        self, session_id: str, offset: int, text: str, options: AppendOptions = _DEFAULT_OPTIONS, owner: str = ""
    ) -> Prediction:
        return await self.submit_append(session_id, offset, text, options, owner)

    def submit_append(
        self, session_id: str, offset: int, text: str, options: AppendOptions = _DEFAULT_OPTIONS, owner: str = ""
    ) -> asyncio.Future[Prediction]:
        """Queues the piece now (or raises now) and returns the future of its Prediction (see
        ``EngineCore.submit_append``). The future is the caller's alone: cancelling it drops
        the answer, never the piece (a piece accepted is applied exactly once)."""
        ticket, fut = self._ticket()
        try:
            cached = self.core.submit_append(session_id, offset, text, options, owner, ticket)
        except BaseException:
            del self._waiting[ticket]
            raise
        if cached is not None:  # a retry of a piece already applied: answered from its value
            self._apply([cached])
        else:
            self._kick.set()
        return fut

    def complete(self, session_id: str, request: CompletionRequest, owner: str = "") -> CompletionStream:
        ticket = next(self._tickets)
        chunks: asyncio.Queue[CompletionChunk | None] = asyncio.Queue()
        c = self.core.complete(session_id, request, owner, ticket)
        self._chunks[ticket] = chunks
        self._after_call()
        return CompletionStream(c, chunks, self._cancel_completion)

    async def rewind(self, session_id: str, chars: int, owner: str = "") -> SessionInfo:
        return await self.submit_rewind(session_id, chars, owner)

    def submit_rewind(self, session_id: str, chars: int, owner: str = "") -> asyncio.Future[SessionInfo]:
        return self._submitted(lambda t: self.core.submit_rewind(session_id, chars, owner, t))

    async def reset(self, session_id: str, owner: str = "") -> SessionInfo:
        return await self.submit_reset(session_id, owner)

    def submit_reset(self, session_id: str, owner: str = "") -> asyncio.Future[SessionInfo]:
        return self._submitted(lambda t: self.core.submit_reset(session_id, owner, t))

    async def snapshot(self, session_id: str, owner: str = "") -> bytes:
        return await self.submit_snapshot(session_id, owner)

    def submit_snapshot(self, session_id: str, owner: str = "") -> asyncio.Future[bytes]:
        return self._submitted(lambda t: self.core.submit_snapshot(session_id, owner, t))

    async def resume(
        self, blob: bytes, replay: str = "", options: AppendOptions = _DEFAULT_OPTIONS, owner: str = ""
    ) -> tuple[SessionInfo, Prediction | None]:
        s, fut = self.submit_resume(blob, replay, options, owner)
        pred = await fut if fut is not None else None
        return s.info(), pred

    def submit_resume(
        self, blob: bytes, replay: str = "", options: AppendOptions = _DEFAULT_OPTIONS, owner: str = ""
    ) -> tuple[Any, asyncio.Future[Prediction] | None]:
        """The new session and the future of the replay's Prediction (see
        ``EngineCore.submit_resume``)."""
        s = self.core.submit_resume(blob, replay, options, owner)
        self._kick.set()
        if not replay:
            return s, None
        return s, self.submit_append(s.session_id, s.position, replay, options, owner)

    def submit_suggest(
        self, session_id: str, request: SuggestRequest, owner: str = ""
    ) -> asyncio.Future[list[Suggestion]]:
        """Ranked suggestions (see ``EngineCore.submit_suggest``), ordered with the session's
        other operations; answered when the core's beam search ends."""
        return self._submitted(lambda t: self.core.submit_suggest(session_id, request, owner, t))

    async def close_session(self, session_id: str, owner: str = "") -> None:
        await self.submit_close(session_id, owner)

    def submit_close(self, session_id: str, owner: str = "") -> asyncio.Future[None]:
        return self._submitted(lambda t: self.core.submit_close(session_id, owner, t))

    # ---- internals ---------------------------------------------------------------------------
    def _ticket(self) -> tuple[int, asyncio.Future[Any]]:
        """A new ticket and the future its answer resolves (event loop only)."""
        ticket = next(self._tickets)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ticket] = fut
        return ticket, fut

    def _submitted(self, submit: Callable[[int], None]) -> asyncio.Future[Any]:
        ticket, fut = self._ticket()
        try:
            submit(ticket)
        except BaseException:
            del self._waiting[ticket]
            raise
        self._after_call()
        return fut

    def _after_call(self) -> None:
        """Answers what a call settled at once (a close with nothing queued) and wakes the
        device thread for what it queued."""
        out = self.core.take_outbox()
        if out:
            self._apply(out)
        self._kick.set()

    def _cancel_completion(self, c: Completion) -> None:
        self.core.cancel_completion(c)
        self._apply(self.core.take_outbox())

    async def _sweep(self) -> None:
        """Closes sessions idle longer than the TTL: one pass over the table per interval."""
        while True:
            await asyncio.sleep(self.settings.session_sweep_interval_s)
            self.core.expire_idle(time.time() - self.settings.session_idle_ttl_s)
            self._apply(self.core.take_outbox())

    def _device_loop(self) -> None:
        """The device thread: sleeps until kicked, then steps while work remains."""
        loop = self._loop
        assert loop is not None
        while not self._stopping:
            self._kick.wait()
            self._kick.clear()  # before stepping: work submitted from now on kicks again
            while not self._stopping:
                try:
                    out = self.core.step()
                except Exception:  # a bug in the core's own bookkeeping: keep serving
                    log.exception("engine step failed")
                    out = self.core.after_failed_step()
                    time.sleep(STEP_RETRY_S)  # a bug that repeats must not spin the CPU
                try:
                    loop.call_soon_threadsafe(self._on_step, out)
                except RuntimeError:  # the loop is closed: nobody is left to answer
                    return
                if out.idle:
                    break

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

    def _apply(self, deliveries: list[Outcome | ChunkOut]) -> None:
        """Tickets -> futures and chunk queues (event loop)."""
        waiting = self._waiting
        for d in deliveries:
            if isinstance(d, ChunkOut):
                ticket = d.completion.ticket
                q = self._chunks.get(ticket) if d.chunk is not None else self._chunks.pop(ticket, None)
                if q is not None:
                    q.put_nowait(d.chunk)
                continue
            fut = waiting.pop(d.ticket, None)
            if fut is None or fut.done():  # a caller that gave up
                continue
            if d.error is not None:
                fut.set_exception(d.error)
                fut.exception()  # mark retrieved: nobody may be waiting
            else:
                fut.set_result(d.value)
