"""The engine core: one process owning the models, the device and every session, serving the
``EngineClient`` protocol to the frontends over a ZMQ ROUTER socket.

Each ``ToCore`` message is decoded (type-checked as a whole: a malformed one runs nothing, is
logged, rate-limited, and every call in it whose id can still be read is answered
INVALID_ARGUMENT, so no caller waits for an answer that will never come) and its operations are submitted to the
in-process client in the order they came, so every frontend's call order holds. Answers and
completion chunks are collected per frontend and sent as one ``ToFrontend`` per frontend per
pass of the loop (the engine resolves an iteration's results together; the flush runs after
their callbacks).

Frontend identities are ``<index>:<pid>``: when a frontend restarts (same index, new pid), the
completions its previous incarnation started are cancelled; its sessions live on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import zmq
import zmq.asyncio

from ..engine.client import CompletionStream, EngineClient
from ..engine.types import IterationStats
from . import messages as m
from .ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from ..api.servicer import Gates
    from ..metrics import Metrics

log = logging.getLogger("cellserve.core")

MALFORMED = "the request could not be decoded on the internal socket (a frontend/core version mismatch?)"
_KINDS = ("append_single", "append_multi", "completion_first_chunk", "completion_char")


def known_labels() -> tuple[frozenset[str], frozenset[str]]:
    """The method and code label values a frontend may report: the service's methods and
    ``Session.<op>`` for every op of the stream (see ``api.stream``), and grpc's code names.
    Labels are closed sets: anything else is a malformed message."""
    import grpc

    from ..api.pb import svc

    service = svc.DESCRIPTOR.services_by_name["CellserveService"]
    ops = [f.name for f in svc.SessionRequest.DESCRIPTOR.oneofs_by_name["op"].fields] + ["unset"]
    methods = frozenset([m.name for m in service.methods] + [f"Session.{op}" for op in ops])
    return methods, frozenset(c.name for c in grpc.StatusCode)


class CoreServer:
    def __init__(
        self,
        client: EngineClient,
        sock: zmq.asyncio.Socket,
        metrics: Metrics | None = None,
        gates: Gates | None = None,
    ) -> None:
        self._client = client
        self._gates = gates
        self._stats_watchers: set[bytes] = set()  # frontends that sent WatchStats
        client.add_stats_listener(self._on_iteration)
        self._sock = sock
        self._metrics = metrics
        self._models: frozenset[str] = frozenset()
        self._outboxes: dict[bytes, list[m.Reply]] = {}
        self._flush_scheduled = False
        self._completions: dict[bytes, dict[int, asyncio.Task[None]]] = {}
        self._incarnation: dict[bytes, bytes] = {}  # frontend index -> identity now
        self._bad = RateLimitedLog(log, "dropped a malformed message on the internal socket")
        self._loop = asyncio.get_running_loop()
        self._methods, self._codes = known_labels()

    async def serve(self) -> None:
        """Runs until cancelled."""
        self._models = frozenset(mi.name for mi in await self._client.models(""))
        while True:
            frames = await self._sock.recv_multipart(copy=False)
            if len(frames) != 2:
                self._bad.warning()
                continue
            identity, data = frames[0].bytes, frames[1].buffer
            try:
                message = m.to_core_decoder.decode(data)
            except msgspec.DecodeError:
                self._bad.warning()
                self._refuse_malformed(identity, data)
                continue
            self._seen(identity)
            for op in message.ops:
                self._dispatch(identity, op)
            if self._metrics is not None and (message.requests or message.keystrokes):
                self._record(message)

    def _refuse_malformed(self, who: bytes, data: Any) -> None:
        """A message that does not decode as a whole runs nothing; every call in it whose id
        can still be read is answered INVALID_ARGUMENT, so its caller is not left waiting."""
        for call_id in m.call_ids_of(data):
            self._push(who, m.Err(call_id, "invalid_input", MALFORMED))

    def _seen(self, identity: bytes) -> None:
        index = identity.split(b":", 1)[0]
        previous = self._incarnation.get(index)
        if previous == identity:
            return
        self._incarnation[index] = identity
        if previous is not None:  # that frontend restarted: nobody reads its completions
            for task in self._completions.pop(previous, {}).values():
                task.cancel()
            self._outboxes.pop(previous, None)
            self._stats_watchers.discard(previous)

    def _dispatch(self, who: bytes, op: m.Op) -> None:
        c = self._client
        if isinstance(op, m.Append):
            self._answer(who, op.id, lambda: c.append(op.owner, op.session_id, op.offset, op.text, op.options))
        elif isinstance(op, m.GetSession):
            self._answer(who, op.id, lambda: c.get_session(op.owner, op.session_id))
        elif isinstance(op, m.Complete):
            self._start_completion(who, op)
        elif isinstance(op, m.CloseCompletion):
            task = self._completions.get(who, {}).pop(op.id, None)
            if task is not None:
                task.cancel()
        elif isinstance(op, m.Open):
            self._answer(who, op.id, lambda: c.open_session(op.owner, op.model, op.memory))
        elif isinstance(op, m.Rewind):
            self._answer(who, op.id, lambda: c.rewind(op.owner, op.session_id, op.chars))
        elif isinstance(op, m.Reset):
            self._answer(who, op.id, lambda: c.reset(op.owner, op.session_id))
        elif isinstance(op, m.Snapshot):
            self._answer(who, op.id, lambda: c.snapshot(op.owner, op.session_id))
        elif isinstance(op, m.Resume):
            self._answer(who, op.id, lambda: c.resume(op.owner, op.blob, op.replay, op.options))
        elif isinstance(op, m.Suggest):
            self._answer(who, op.id, lambda: c.suggest(op.owner, op.session_id, op.request))
        elif isinstance(op, m.Close):
            self._answer(who, op.id, lambda: c.close_session(op.owner, op.session_id))
        elif isinstance(op, m.Health):
            self._answer(who, op.id, lambda: c.health(op.owner))
        elif isinstance(op, m.Stats):
            self._answer(who, op.id, lambda: c.stats(op.owner))
        elif isinstance(op, m.Models):
            self._answer(who, op.id, lambda: c.models(op.owner))
        elif isinstance(op, m.WatchStats):
            self._stats_watchers.add(who)
        elif isinstance(op, m.InspectGates):
            self._answer(who, op.id, lambda: self._inspect_gates(op.request))

    def _on_iteration(self, it: IterationStats) -> None:
        # Rides in the same flush as the answers of that iteration: no message of its own.
        if it.models:
            for who in self._stats_watchers:
                self._push(who, m.Iteration(0, list(it.models)))

    async def _inspect_gates(self, data: bytes) -> bytes:
        from ..api.pb import svc
        from ..errors import InvalidInput, Unavailable

        if self._gates is None:
            raise Unavailable("gate inspection is not served by this server process")
        try:
            request = svc.InspectGatesRequest.FromString(data)
        except Exception as e:  # noqa: BLE001 (a frontend serialized it: only a bug gets here)
            raise InvalidInput("the gate inspection request could not be read") from e
        response: svc.InspectGatesResponse = await self._gates.inspect(request)
        return bytes(response.SerializeToString())

    def _answer(self, who: bytes, call_id: int, submit: Callable[[], Awaitable[Any]]) -> None:
        try:
            fut = asyncio.ensure_future(submit())
        except Exception as e:  # noqa: BLE001 (answered to the caller)
            self._push(who, self._error(call_id, e))
            return
        fut.add_done_callback(lambda f: self._push(who, self._outcome(call_id, f)))

    def _outcome(self, call_id: int, fut: asyncio.Future[Any]) -> m.Reply:
        if fut.cancelled():
            return m.Err(call_id, "unavailable", "the operation was cancelled; retry")
        exc = fut.exception()
        if exc is not None:
            return self._error(call_id, exc)
        return m.Ok(call_id, msgspec.Raw(m.encode(fut.result())))

    @staticmethod
    def _error(call_id: int, exc: BaseException) -> m.Err:
        err = m.error_reply(call_id, exc)
        if err.code == m.INTERNAL:
            log.error("operation failed in the engine core", exc_info=exc)
        return err

    def _start_completion(self, who: bytes, op: m.Complete) -> None:
        stream = self._client.complete(op.owner, op.session_id, op.request)
        tasks = self._completions.setdefault(who, {})
        task = asyncio.create_task(self._relay(who, op.id, stream))
        tasks[op.id] = task
        task.add_done_callback(lambda _: tasks.pop(op.id, None))

    async def _relay(self, who: bytes, call_id: int, stream: CompletionStream) -> None:
        try:
            async for chunk in stream:
                self._push(who, m.Chunk(call_id, chunk.alternative, chunk.text, chunk.done, chunk.finish_reason))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 (answered in the stream)
            self._push(who, self._error(call_id, e))
        else:
            self._push(who, m.End(call_id))
        finally:
            await stream.aclose()

    def _push(self, who: bytes, reply: m.Reply) -> None:
        box = self._outboxes.get(who)
        if box is None:
            box = self._outboxes[who] = []
        box.append(reply)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # Two passes later: answers resolved together reach here over a pass or two of
            # callbacks (the engine's future, then the client's shield); wait for all of them.
            self._loop.call_soon(self._loop.call_soon, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        boxes, self._outboxes = self._outboxes, {}
        for who, replies in boxes.items():
            # The socket has no high-water mark (see processes): this never blocks; answers
            # to a frontend that is gone are dropped by the ROUTER.
            self._sock.send_multipart([who, m.encode(m.ToFrontend(replies))])

    def _record(self, message: m.ToCore) -> None:
        metrics = self._metrics
        assert metrics is not None
        for method, code, count in message.requests:
            if method in self._methods and code in self._codes and 0 < count <= 1_000_000:
                metrics.requests.labels(method, code).inc(count)
            else:
                self._bad.warning()
        for model, kind, seconds in message.keystrokes:
            if model in self._models and kind in _KINDS and 0.0 <= seconds < 1e6:
                metrics.keystroke(model, kind, seconds)
            else:
                self._bad.warning()
