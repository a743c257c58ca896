"""``AsyncSession``: one server session, kept alive across server failures.

Every call becomes an op in the session's queue; one driver task feeds the queue to the
current connection (see ``_connection``). Appends are given their offsets when they are
queued, so appends from concurrent tasks are pipelined on a stream, in call order.

Failover: when the connection reports that the session moved (``_failover.moves_session``),
the driver rebuilds the session from its journal on the same or the next target (Resume of
the newest snapshot plus a replay of the text since, or Open plus a replay of everything), then
sends the unanswered ops again at the same offsets. The callers awaiting those ops get the
answers an uninterrupted session would have given, and no error.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Literal

from . import _convert, _errors
from ._aio import within
from ._connection import Connection, StreamConnection, UnaryConnection
from ._failover import Journal, another_try_can_fix, backoff_delays, moves_session, pieces, retry_hint
from ._ops import Op, OpKind, OpQueue
from ._pool import Pool
from ._proto.cellserve.v1 import service_pb2 as svc
from ._types import (
    AppendOptions,
    Completion,
    CompletionChunk,
    CompletionOptions,
    FailoverPolicy,
    ModelInfo,
    Prediction,
    SessionInfo,
    Suggestion,
    SuggestOptions,
)

log = logging.getLogger("cellserve_client")

Transport = Literal["stream", "unary"]
_SEED_BITS = 63  # a client-chosen seed makes a completion re-sent after a failover repeat exactly


class AsyncSession:
    """A session on a cellserve server (make one with ``AsyncClient.open`` or ``.resume``)."""

    def __init__(
        self,
        pool: Pool,
        *,
        transport: Transport,
        policy: FailoverPolicy,
        routing_key: str,
        journal: Journal,
        model: ModelInfo,
        connection: Connection,
        target_index: int,
        last_prediction: Prediction | None = None,
    ) -> None:
        self._pool = pool
        self._transport: Transport = transport
        self._policy = policy
        self._key = routing_key
        self._md = pool.metadata(routing_key)
        self._journal = journal
        self._model = model
        self._conn: Connection | None = connection
        self._target = target_index
        self._queue = OpQueue()
        self._inflight: collections.deque[Op] = collections.deque()
        self._lock = asyncio.Lock()
        self._next_offset = journal.position
        self._snapshot_queued = False
        self._driver: asyncio.Task[None] | None = None
        self._lost: _errors.CellserveError | None = None
        # the server session id last connected: a failover tries it first on the new target
        self._moving_id = connection.session_id
        self._closed = False
        self.failovers = 0
        """How many times this session moved to a new server session."""
        self.last_prediction = last_prediction
        """The prediction of the latest answered append (or of the replay of ``resume``)."""

    # --- construction ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, pool: Pool, model: str | None, *, transport: Transport, policy: FailoverPolicy, memory: bool = True
    ) -> AsyncSession:
        key = secrets.token_hex(16)
        md = pool.metadata(key)
        request = svc.OpenSessionRequest(model=model or "", no_memory=not memory)

        async def build(index: int) -> tuple[Connection, svc.OpenSessionResponse]:
            resp = await pool.channel(index).open_session(request, md, pool.timeout)
            return await _connect(pool, index, md, resp.session.session_id, transport), resp

        (conn, resp), index = await _with_failover(pool, policy, 0, build)
        journal = Journal(policy, resp.session.model)
        journal.memory = memory
        return cls(
            pool,
            transport=transport,
            policy=policy,
            routing_key=key,
            journal=journal,
            model=_convert.model_info(resp.model),
            connection=conn,
            target_index=index,
        )

    @classmethod
    async def resume(
        cls,
        pool: Pool,
        blob: bytes,
        replay: str,
        *,
        transport: Transport,
        policy: FailoverPolicy,
        append: AppendOptions,
    ) -> AsyncSession:
        key = secrets.token_hex(16)
        md = pool.metadata(key)
        chunks = pieces(replay, policy.max_append_chars) if replay else []

        async def build(index: int) -> tuple[Connection, svc.ResumeResponse, Prediction | None]:
            ch = pool.channel(index)
            # The caller's options apply to the last piece of the replay; earlier pieces ask for
            # nothing (top_k 0) since their answers are not returned.
            first = AppendOptions(0, append.logprobs, append.gates) if len(chunks) > 1 else append
            req = svc.ResumeRequest(blob=blob, want_logprobs=first.logprobs, want_gates=first.gates)
            if first.top_k is not None:
                req.top_k = first.top_k
            if chunks:
                req.replay.text = chunks[0]
            resp = await ch.resume(req, md, pool.timeout)
            sid, pos = resp.session.session_id, resp.session.position
            pred = _convert.prediction(resp.prediction) if resp.HasField("prediction") else None
            for i, chunk in enumerate(chunks[1:], start=2):
                opts = append if i == len(chunks) else AppendOptions(0, append.logprobs, append.gates)
                r = await ch.append(_convert.unary_append(sid, pos, chunk, opts), md, pool.timeout)
                pred = _convert.prediction(r.prediction)
                pos = pred.position
            return await _connect(pool, index, md, sid, transport), resp, pred

        (conn, resp, pred), index = await _with_failover(pool, policy, 0, build)
        start = resp.session.position - (len(chunks[0]) if chunks else 0)
        journal = Journal(policy, resp.session.model, position=start, blob=blob)
        for chunk in chunks:
            journal.appended(chunk, journal.position + len(chunk))
        return cls(
            pool,
            transport=transport,
            policy=policy,
            routing_key=key,
            journal=journal,
            model=_convert.model_info(resp.model),
            connection=conn,
            target_index=index,
            last_prediction=pred,
        )

    # --- public API --------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """The server's id of the session; a new one after every failover."""
        return self._conn.session_id if self._conn is not None else ""

    @property
    def routing_key(self) -> str:
        """The ``x-session-id`` header every call of this session carries (kept across resumes)."""
        return self._key

    @property
    def model(self) -> ModelInfo:
        return self._model

    @property
    def position(self) -> int:
        """Characters the server has acknowledged (the offset of the next append once every
        queued append is answered)."""
        return self._journal.position

    @property
    def target(self) -> str:
        """The server the session is on now."""
        return self._pool.targets[self._target % len(self._pool.targets)]

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def closed(self) -> bool:
        return self._closed

    async def info(self) -> SessionInfo:
        """The server's view of the session (GetSession)."""
        self._check_open()
        resp = await self._pool.channel(self._target).get_session(
            svc.GetSessionRequest(session_id=self.session_id), self._md, self._pool.timeout
        )
        return _convert.session_info(resp.session)

    async def append(
        self,
        text: str,
        *,
        top_k: int | None = None,
        logprobs: bool = False,
        gates: bool = False,
        only_last: bool = False,
        memory: bool = True,
    ) -> Prediction:
        """Appends ``text`` (typed or pasted) and returns the prediction after it.

        ``top_k``: size of the distribution (None: the server default, 5; 0: none).
        ``logprobs``/``gates``: per-character log-probabilities / gate activations.
        ``only_last`` (stream transport): when the server coalesces this append with later ones,
        only the last is answered in full; the others come back ``superseded``.
        ``memory`` False: this prediction is the model's alone, without the session memory
        (the memory still reads the text).
        Text longer than the server's append limit is sent in pieces; the prediction is the
        last piece's, with the logprobs and gates of all pieces.
        """
        opts = AppendOptions(top_k, logprobs, gates, only_last, memory)
        parts = pieces(text, self._policy.max_append_chars)
        async with self._lock:
            self._check_open()
            ops = []
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                piece_opts = opts if last else AppendOptions(0, logprobs, gates, only_last, memory)
                ops.append(self._submit("append", offset=self._next_offset, text=part, append=piece_opts))
                self._next_offset += len(part)
        preds: list[Prediction] = [await self._wait(op) for op in ops]
        pred = preds[-1]
        if len(preds) > 1:
            pred = Prediction(
                position=pred.position,
                top=pred.top,
                logprobs=tuple(x for p in preds for x in p.logprobs),
                gates=tuple(g for p in preds for g in p.gates),
                replayed=pred.replayed,
                superseded=pred.superseded,
            )
        self.last_prediction = pred
        return pred

    async def complete(
        self,
        *,
        max_chars: int | None = None,
        stop: tuple[str, ...] | list[str] = (),
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int | None = None,
        n: int | None = None,
        memory: bool = True,
    ) -> AsyncCompletionStream:
        """Starts sampling continuations (on a fork of the state; the session does not change).

        Returns an async iterator of ``CompletionChunk``; ``await stream.collect()`` gives the
        finished ``Completion`` of every alternative. ``temperature`` 0 is greedy. Without a
        ``seed`` the SDK picks one, so that a completion re-sent after a failover repeats.
        An append made before the completion is consumed cancels it (stream transport).
        ``memory`` False: generate from the model alone, without the session memory.
        """
        if seed is None:
            seed = secrets.randbits(_SEED_BITS)
        opts = CompletionOptions(max_chars, tuple(stop), temperature, top_k, top_p, seed, n, memory)
        async with self._lock:
            self._check_open()
            op = self._submit("complete", completion=opts, chunks=asyncio.Queue())
        return AsyncCompletionStream(op, self._pool.timeout)

    async def suggest(self, n: int = 3, scope: str = "word", max_chars: int | None = None) -> list[Suggestion]:
        """The ``n`` most probable completions of the current word (``scope="word"``) or to the
        end of the line (``"line"``), most probable first, each with its log-probability; found
        by beam search on a fork of the state after everything sent before, so the session does
        not change. ``max_chars`` (None: the server's 32) bounds each suggestion."""
        if scope not in _convert.SUGGEST_SCOPES:
            raise _errors.InvalidInput(f"scope is {scope!r}; it must be 'word' or 'line'")
        async with self._lock:
            self._check_open()
            op = self._submit("suggest", suggest=SuggestOptions(n, scope, max_chars))
        result: list[Suggestion] = await self._wait(op)
        return result

    async def rewind(self, chars: int) -> int:
        """Goes back ``chars`` characters (backspace), restoring the state exactly; returns the
        new position."""
        async with self._lock:
            self._check_open()
            position: int = await self._wait(self._submit("rewind", chars=chars))
            self._next_offset = position
        return position

    async def reset(self) -> int:
        """Back to position 0 and the initial state; returns 0."""
        async with self._lock:
            self._check_open()
            position: int = await self._wait(self._submit("reset"))
            self._next_offset = position
        return position

    async def snapshot(self) -> bytes:
        """A signed blob of the session: ``AsyncClient.resume`` continues from it on any server
        with the same key and weights."""
        async with self._lock:
            self._check_open()
            op = self._submit("snapshot")
        blob: bytes = await self._wait(op)
        return blob

    async def close(self) -> None:
        """Ends the session on the server and frees its state. Idempotent."""
        if self._closed:
            return
        async with self._lock:
            if self._closed:
                return
            op = self._submit("close")
            self._closed = True
            self._queue.close()
        try:
            await self._wait(op)
        except _errors.CellserveError as exc:
            log.debug("closing session %s: %s", self._key, exc)
        finally:
            await self._stop_driver()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncSession {self._key} model={self._model.name!r} position={self.position} target={self.target!r}>"

    # --- ops ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise _errors.ClosedError("the session is closed")

    def _submit(self, kind: OpKind, **fields: Any) -> Op:
        op = Op(kind, asyncio.get_running_loop().create_future(), **fields)
        self._queue.put(op)
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive())
        return op

    async def _wait(self, op: Op) -> Any:
        try:
            return await within(asyncio.shield(op.future), self._pool.timeout)
        except TimeoutError:
            raise _errors.Timeout(f"no answer to {op.kind} within {self._pool.timeout} s") from None

    def _ack(self, op: Op, result: Any) -> None:
        j = self._journal
        if op.kind == "append":
            j.appended(op.text, result.position)
            if not self._snapshot_queued and j.snapshot_due():
                self._snapshot_queued = True
                self._submit("snapshot", internal=True)
        elif op.kind == "rewind":
            j.rewound(result)
        elif op.kind == "reset":
            j.reset()
        elif op.kind == "snapshot":
            j.snapshotted(result)
            if op.internal:
                self._snapshot_queued = False
        op.settle(result)

    def _nack(self, op: Op, exc: BaseException) -> None:
        if op.kind == "append":
            # The appends queued behind it carry offsets past it: they fail too (offset
            # conflicts), each giving its characters back, so the next append is in step again.
            self._next_offset -= len(op.text)
        elif op.internal:
            self._snapshot_queued = False
        op.fail(exc)

    # --- the driver and failover -------------------------------------------------------------

    async def _drive(self) -> None:
        while True:
            try:
                if self._conn is None:
                    await self._recover(self._lost or _errors.Unavailable("the session has no server"))
                assert self._conn is not None
                await self._conn.run(self._queue, self._inflight, self._ack, self._nack)
                return
            except asyncio.CancelledError:
                raise
            except _errors.CellserveError as exc:
                if self._conn is not None:
                    await self._conn.abort()
                self._queue.requeue(list(self._inflight))
                self._inflight.clear()
                self._conn, self._lost = None, exc
                if moves_session(exc) and self._settle_close_if_next():
                    return
                if not moves_session(exc) or not self._policy.enabled:
                    # Not a failover case, or a failover that failed (its ops are failed
                    # already): the next call tries again from scratch.
                    self._fail_all(exc)
                    return
            except Exception as exc:  # a bug here must not leave callers waiting forever
                self._fail_all(exc)
                self._conn, self._lost = None, _errors.InternalError(f"session driver failed: {exc!r}")
                return

    def _settle_close_if_next(self) -> bool:
        """A session whose server is gone needs no failover to be closed."""
        if self._closed and len(self._queue) == 1:
            op = self._queue.drain()[0]
            op.settle(None)
            return True
        return False

    def _fail_all(self, exc: BaseException) -> None:
        for op in self._queue.drain():
            self._nack(op, exc)

    async def _recover(self, cause: _errors.CellserveError) -> None:
        try:
            self._journal.base()  # raises FailoverFailed when the journal cannot rebuild it
            log.info("session %s: %s; failing over", self._key, cause)
            conn, index = await _with_failover(self._pool, self._policy, self._target, self._rebuild, cause)
        except _errors.CellserveError as exc:
            self._fail_all(exc)
            raise _errors.FailoverFailed(str(exc)) from exc
        self._conn, self._target, self._lost = conn, index, None
        self._moving_id = conn.session_id
        self.failovers += 1

    async def _rebuild(self, index: int) -> Connection:
        """The session on target ``index`` in the journal's state: the same session id when the
        target holds it at the journal's position (a server-side handoff moved it there, e.g.
        through the replicas' session store), else a new server session rebuilt from the
        journal."""
        ch, md, timeout = self._pool.channel(index), self._md, self._pool.timeout
        if self._moving_id:
            try:
                held = (await ch.get_session(svc.GetSessionRequest(session_id=self._moving_id), md, timeout)).session
            except _errors.NotFound:
                held = None
            if held is not None and held.position == self._journal.position:
                return await _connect(self._pool, index, md, self._moving_id, self._transport)
        blob, replay = self._journal.base()
        if blob is not None:
            req = svc.ResumeRequest(blob=blob, top_k=0)
            if replay:
                req.replay.text = replay.pop(0)
            session = (await ch.resume(req, md, timeout)).session
        else:
            request = svc.OpenSessionRequest(model=self._journal.model, no_memory=not self._journal.memory)
            session = (await ch.open_session(request, md, timeout)).session
        sid, position = session.session_id, session.position
        for piece in replay:
            request = _convert.unary_append(sid, position, piece, AppendOptions(top_k=0))
            position = (await ch.append(request, md, timeout)).prediction.position
        if position != self._journal.position:
            raise _errors.InternalError(f"rebuilt session is at {position}, expected {self._journal.position}")
        return await _connect(self._pool, index, md, sid, self._transport)

    async def _stop_driver(self) -> None:
        driver = self._driver
        if driver is None:
            return
        try:
            await within(asyncio.shield(driver), self._pool.timeout)
        except (TimeoutError, _errors.CellserveError):
            driver.cancel()
        if self._conn is not None:
            await self._conn.abort()


class AsyncCompletionStream:
    """The chunks of a completion as they arrive (``async for``), then its ``completions``."""

    def __init__(self, op: Op, timeout: float | None) -> None:
        self._op = op
        self._timeout = timeout
        self._texts: dict[int, list[str]] = {}
        self._done: dict[int, Completion] = {}
        self._finished = False

    def __aiter__(self) -> AsyncIterator[CompletionChunk]:
        return self

    async def __anext__(self) -> CompletionChunk:
        if self._finished:
            raise StopAsyncIteration
        assert self._op.chunks is not None
        try:
            item = await within(self._op.chunks.get(), self._timeout)
        except TimeoutError:
            raise _errors.Timeout(f"no completion chunk within {self._timeout} s") from None
        if item is None:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        self._texts.setdefault(item.alternative, []).append(item.text)
        if item.done and item.finish_reason is not None:
            text = "".join(self._texts[item.alternative])
            self._done[item.alternative] = Completion(item.alternative, text, item.finish_reason)
        return item

    async def collect(self) -> tuple[Completion, ...]:
        """Reads the rest and returns every finished alternative, in order."""
        async for _ in self:
            pass
        return self.completions

    @property
    def completions(self) -> tuple[Completion, ...]:
        """The alternatives finished so far, by alternative number."""
        return tuple(self._done[k] for k in sorted(self._done))

    @property
    def text(self) -> str:
        """The text of alternative 0 received so far."""
        return "".join(self._texts.get(0, ()))


async def _connect(
    pool: Pool, index: int, md: tuple[tuple[str, str], ...], session_id: str, transport: Transport
) -> Connection:
    ch = pool.channel(index)
    if transport == "unary":
        return UnaryConnection(ch, md, session_id)
    conn = StreamConnection(ch, md, session_id, pool.max_outstanding)
    await conn.attach(pool.timeout)
    return conn


async def _with_failover(
    pool: Pool, policy: FailoverPolicy, start: int, attempt: Any, cause: BaseException | None = None
) -> Any:
    """``await attempt(target_index)`` on the targets in turn, from ``start``, with backoff;
    returns (its result, the index). Only failures another try can fix are retried
    (``another_try_can_fix``); a server's retry hint lengthens the wait before the next try,
    and a target that lacks the model is not asked again. With failover off: one attempt."""
    last: BaseException | None = cause
    n = len(pool.targets)
    delays = backoff_delays(policy) if policy.enabled else [0.0]
    lacks_model: set[int] = set()  # targets that answered ModelNotFound: a definite answer
    hint = 0.0
    for i, delay in enumerate(delays):
        await asyncio.sleep(max(delay, hint) if i else 0.0)
        index = next(((start + i + k) % n for k in range(n) if (start + i + k) % n not in lacks_model), None)
        if index is None:
            break
        try:
            return await attempt(index), index
        except _errors.CellserveError as exc:
            if not policy.enabled or not another_try_can_fix(exc):
                raise
            if isinstance(exc, _errors.ModelNotFound):
                lacks_model.add(index)
                if len(lacks_model) == n:
                    raise
            last, hint = exc, retry_hint(exc)
            log.debug("target %s: %s", pool.targets[index], exc)
    assert last is not None
    if len(delays) == 1 and isinstance(last, _errors.CellserveError):
        raise last
    raise _errors.FailoverFailed(f"no target could serve the session after {len(delays)} attempts: {last}") from last
