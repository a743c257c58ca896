"""The engine core process's socket server: three threads around the ``CoreLoop``, no event loop.

- **input** (``cellserve-core-in``): owns the ROUTER socket. Receives each ``ToCore``, decodes
  it (type-checked as a whole: a malformed one runs nothing, is logged, rate-limited, and every
  call in it whose id can still be read is answered INVALID_ARGUMENT) and posts its operations
  to the core thread's inbox as ``Call``s with new tickets, in the order they came, so every
  frontend's call order holds. It also sends what the output thread encoded (the socket is
  this thread's alone: ZMQ sockets are not shared between threads), posts the idle-TTL sweep
  and the metrics reading on their intervals, and stops reading while the inbox holds more than
  ``INBOX_CALLS`` calls: the ROUTER's bounded receive queue then fills, then the frontends'
  send queues, whose calls then fail RESOURCE_EXHAUSTED (``client.py``).
- **core** (``cellserve-core``, ``engine/loop.py``): the same loop as in one process.
- **output** (``cellserve-core-out``): takes each pass's ``StepOutput``, turns tickets back
  into (frontend, call id), and encodes ONE ``ToFrontend`` per frontend per pass (results
  encoded once, with the message). A frontend whose receive queue is full (it does not read)
  gets its answers refused instead: each call is answered RESOURCE_EXHAUSTED once there is
  room (a retry of an applied append is a replay), its completions are cancelled; what waits
  is bounded by the calls that frontend has open.

InspectGates runs on a fourth thread (``gate_thread.py``): it reads the weights only.

Frontend identities are ``<index>:<pid>``: when a frontend restarts (same index, new pid), the
completions its previous incarnation started are cancelled; its sessions live on.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from ..engine.core import EngineCore
from ..engine.core_io import Call, ChunkOut, StepOutput
from ..engine.loop import CoreLoop
from ..engine.shards import combined_stats
from ..engine.types import EngineStats, ModelInfo
from ..errors import CapacityExceeded, InvalidInput, Unavailable
from ..metrics import POLL_INTERVAL_S
from . import messages as m
from .gate_thread import GateThread
from .labels import KEYSTROKE_KINDS, known_labels, malformed_labels
from .ratelimit import RateLimitedLog
from .tokens import TokensKeeper

if TYPE_CHECKING:
    from ..config import Settings
    from ..metrics import Metrics

log = logging.getLogger("cellserve.core")

MAX_MALFORMED_PER_MESSAGE = 1_000_000
MALFORMED = "the request could not be decoded on the internal socket (a frontend/core version mismatch?)"
FRONTEND_NOT_READING = "the frontend is not reading the engine's answers fast enough; retry shortly"
BUSY_RETRY_S = 0.2  # a frontend that did not take a message: the next try, at the earliest
INBOX_CALLS = 65_536  # calls posted and not yet taken by the core thread: beyond, stop reading
POLL_S = 0.05  # the input thread's longest sleep (stop flag, sweeps, metrics)
METRICS_POLL_S = POLL_INTERVAL_S  # as often as the single process reads them


@dataclass(slots=True)  # one per call: not frozen, whose __init__ sets each field the slow way
class _Route:
    """Where a ticket's answer goes: a frontend's call (or completion stream). Never changed."""

    who: bytes
    call_id: int
    stream: bool = False


LocalAnswer = Callable[[object, BaseException | None], None]


@dataclass(frozen=True, slots=True)
class _Direct:
    """Replies that need no core pass (models, gate reports): through the output thread, so
    each frontend still gets one message at a time, in order."""

    who: bytes
    replies: list[m.ReplyOut]


@dataclass(frozen=True, slots=True)
class _Refused:
    """A message the ROUTER would not take for ``who`` (its queue is full)."""

    who: bytes
    data: bytes


class CoreServer:
    """The threads of the engine core process around ``core`` (see the module docstring)."""

    def __init__(
        self,
        core: EngineCore,
        ctx: zmq.Context[Any],
        address: str,
        settings: Settings,
        metrics: Metrics | None = None,
        gates: GateThread | None = None,
        report_to: str = "",
    ) -> None:
        """``report_to``: core 0's address, for another core of a ``--cores K`` server: its
        statistics and histograms go there (``CoreReport``), core 0 serving the one endpoint."""
        self.core = core
        self._settings = settings
        self._metrics = metrics
        self._gates = gates
        self._models: list[ModelInfo] = core.models()
        self._model_names = frozenset(mi.name for mi in self._models)
        self._methods, self._codes = known_labels()
        self._loop = CoreLoop(core, self._hand_off, settings.speculation_delay_s)
        self._tickets = itertools.count(1)
        # ticket -> where its answer goes; written by the input thread, popped by the output
        # thread (single dict operations: atomic under the GIL)
        self._routes: dict[int, _Route | LocalAnswer] = {}
        self._streams: dict[bytes, dict[int, int]] = {}  # frontend -> completion call id -> ticket
        self._incarnation: dict[bytes, bytes] = {}  # frontend index -> identity now
        self._out: queue.SimpleQueue[StepOutput | _Direct | _Refused | None] = queue.SimpleQueue()
        self._refusals: dict[bytes, list[m.ReplyOut]] = {}  # output thread: what waits for room
        self._retry_at: dict[bytes, float] = {}
        self.idle = threading.Event()  # set by each pass that left the core idle
        self._stopping = False
        self._bad = RateLimitedLog(log, "dropped a malformed message on the internal socket")
        # undecodable client requests the frontends report: logged once per interval for all
        self._malformed_log = RateLimitedLog(
            log, "undecodable request (answered INVALID_ARGUMENT)", settings.malformed_log_interval_s
        )
        self._malformed_methods = malformed_labels()
        # the tokens file as every frontend loads it (multiproc/tokens.py)
        self._tokens = TokensKeeper(settings.auth_tokens_file) if settings.auth_tokens_file else None
        # sockets: the ROUTER and the output thread's pipe into the input thread
        hwm = settings.core_send_queue_messages
        self._sock = ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.RCVHWM, hwm)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full queue raises, never drops silently
        self._sock.bind(address)
        # --cores K: what the other cores reported (core 0), and this core's report (the others)
        self._peer_stats: dict[int, EngineStats] = {}
        self._latest_stats: EngineStats | None = None
        self._report: zmq.Socket[bytes] | None = None
        if report_to:
            self._report = ctx.socket(zmq.DEALER)
            self._report.setsockopt(zmq.IDENTITY, f"c{core.shard.index}:{os.getpid()}".encode())
            self._report.setsockopt(zmq.LINGER, 0)
            self._report.setsockopt(zmq.SNDHWM, 4)  # a report replaces the last: never queue many
            self._report.connect(report_to)
        pipe = f"inproc://cellserve-core-out-{id(self)}"
        self._pipe_in = ctx.socket(zmq.PULL)
        self._pipe_in.setsockopt(zmq.LINGER, 0)
        self._pipe_in.setsockopt(zmq.RCVHWM, hwm)
        self._pipe_in.bind(pipe)
        self._pipe_out = ctx.socket(zmq.PUSH)
        self._pipe_out.setsockopt(zmq.LINGER, 0)
        self._pipe_out.setsockopt(zmq.SNDHWM, hwm)  # a full pipe blocks the output thread: bounded
        self._pipe_out.connect(pipe)
        self._threads = [
            threading.Thread(target=self._input, name="cellserve-core-in", daemon=True),
            threading.Thread(target=self._output, name="cellserve-core-out", daemon=True),
        ]

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._loop.start()
        for t in self._threads:
            t.start()

    def post(self, method: str, args: tuple[Any, ...] = (), answer: LocalAnswer | None = None) -> None:
        """A call of this process's own (drain, metrics): ``answer(value, error)`` runs on the
        output thread."""
        ticket = 0
        if answer is not None:
            ticket = next(self._tickets)
            self._routes[ticket] = answer
        self._loop.post(Call(ticket, method, args))

    def ask(self, method: str, *args: Any, timeout: float = 10.0) -> object:
        """Posts a query and waits for its value (raises its error; TimeoutError)."""
        done = threading.Event()
        box: list[Any] = []

        def answer(value: object, error: BaseException | None) -> None:
            box[:] = [value, error]
            done.set()

        self.post(method, args, answer)
        if not done.wait(timeout):
            raise TimeoutError(f"the engine core did not answer {method}")
        if box[1] is not None:
            raise box[1]
        return box[0]

    def drain(self, grace_s: float) -> bool:
        """Refuses new sessions; returns once queued work and completions are answered (True)
        or ``grace_s`` passed (False)."""
        self.post("start_draining")
        deadline = time.monotonic() + grace_s
        while (left := deadline - time.monotonic()) > 0:
            self.idle.clear()  # before asking: an idle pass after the answer sets it again
            if not self.ask("has_work", timeout=left):
                return True
            self.idle.wait(max(0.0, deadline - time.monotonic()))
        return False

    def stop(self, error: BaseException) -> None:
        """Ends the core thread after the pass in flight, fails what is still queued with
        ``error`` (its answers are sent), then ends the other threads and closes the socket."""
        self._loop.stop()
        self._loop.drain_inbox()
        self.core.fail_all(error)
        self._out.put(StepOutput(self.core.take_deliveries(), None, True))
        self._out.put(None)
        self._threads[1].join()
        self._stopping = True
        self._threads[0].join()
        for sock in (self._pipe_out, self._pipe_in, self._sock, self._report):
            if sock is not None:
                sock.close(linger=0)

    @property
    def alive(self) -> bool:
        return self._loop.alive and all(t.is_alive() for t in self._threads)

    # ---- core thread --------------------------------------------------------------------------
    def _hand_off(self, out: StepOutput) -> bool:
        self._out.put(out)
        return True

    # ---- input thread -----------------------------------------------------------------------
    def _input(self) -> None:
        sock, pipe = self._sock, self._pipe_in
        poller = zmq.Poller()
        poller.register(pipe, zmq.POLLIN)
        reading = False
        sweep_every = self._settings.session_sweep_interval_s
        next_sweep = time.monotonic() + sweep_every
        next_metrics = time.monotonic()
        while not self._stopping:
            want = self._loop.backlog < INBOX_CALLS
            if want != reading:
                (poller.register(sock, zmq.POLLIN) if want else poller.unregister(sock))
                reading = want
            for s, _ in poller.poll(int(POLL_S * 1000)):
                if s is pipe:
                    self._forward_out()
                else:
                    self._receive()
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + sweep_every
                self.post("expire_idle", (time.time() - self._settings.session_idle_ttl_s,))
            if self._metrics is not None and now >= next_metrics:
                next_metrics = now + METRICS_POLL_S
                self.post("stats", (), self._observe_stats)
                self._send_report()
        self._forward_out()

    def _forward_out(self) -> None:
        """Sends what the output thread encoded; a frontend whose queue is full gets it back
        as refused, one that is gone (unroutable) loses it."""
        pipe, sock = self._pipe_in, self._sock
        while True:
            try:
                who, data = pipe.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                sock.send_multipart([who, data], zmq.NOBLOCK)
            except zmq.Again:
                self._out.put(_Refused(who, data))
            except zmq.ZMQError as e:  # EHOSTUNREACH: that frontend is gone
                log.debug("answers to a frontend that is gone were dropped (%s)", e)

    def _receive(self) -> None:
        try:
            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        if len(frames) != 2:
            self._bad.warning()
            return
        who, data = frames[0].bytes, frames[1].buffer
        try:
            message = m.to_core_decoder.decode(data)
        except msgspec.DecodeError:
            self._bad.warning()
            ids = m.call_ids_of(data)
            if ids:
                self._out.put(_Direct(who, [m.Err(i, InvalidInput.code, MALFORMED) for i in ids]))
            return
        self._seen(who)
        for op in message.ops:
            self._dispatch(who, op)
        if self._metrics is not None and (message.requests or message.keystrokes):
            self._record(message)
        if message.malformed:
            self._record_malformed(message.malformed)

    def _seen(self, who: bytes) -> None:
        index = who.split(b":", 1)[0]
        previous = self._incarnation.get(index)
        if previous == who:
            return
        self._incarnation[index] = who
        if previous is not None:  # that frontend restarted: its streams died with it
            self._loop.post(Call(0, "release_streams", (previous.decode("utf-8", "replace"),)))
            for ticket in self._streams.pop(previous, {}).values():
                self._routes.pop(ticket, None)
                self._loop.post(Call(0, "cancel_completion", (ticket,)))

    def _dispatch(self, who: bytes, op: m.Op) -> None:
        if isinstance(op, m.Append):
            self._call(who, op.id, "submit_append", (op.session_id, op.offset, op.text, op.options, op.owner), True)
        elif isinstance(op, m.GetSession):
            self._call(who, op.id, "get_session_queued", (op.session_id, op.owner), False)
        elif isinstance(op, m.Complete):
            started = next(self._tickets)
            self._routes[started] = _Route(who, op.id, stream=True)
            self._streams.setdefault(who, {})[op.id] = started
            self._loop.post(Call(started, "complete", (op.session_id, op.request, op.owner), True))
        elif isinstance(op, m.CloseCompletion):
            ticket = self._end_stream(who, op.id)
            if ticket is not None:
                self._routes.pop(ticket, None)
                self._loop.post(Call(0, "cancel_completion", (ticket,)))
        elif isinstance(op, m.Open):
            self._call(who, op.id, "open_session", (op.model, op.owner, op.memory), False)
        elif isinstance(op, m.Rewind):
            self._call(who, op.id, "submit_rewind", (op.session_id, op.chars, op.owner), True)
        elif isinstance(op, m.Reset):
            self._call(who, op.id, "submit_reset", (op.session_id, op.owner), True)
        elif isinstance(op, m.Snapshot):
            self._call(who, op.id, "submit_snapshot", (op.session_id, op.owner), True)
        elif isinstance(op, m.Resume):
            self._call(who, op.id, "resume", (op.blob, op.replay, op.options, op.owner), True)
        elif isinstance(op, m.Suggest):
            self._call(who, op.id, "submit_suggest", (op.session_id, op.request, op.owner), True)
        elif isinstance(op, m.Close):
            self._call(who, op.id, "submit_close", (op.session_id, op.owner), True)
        elif isinstance(op, m.Health):
            self._call(who, op.id, "health", (op.owner,), False)
        elif isinstance(op, m.Stats):
            self._call(who, op.id, "stats", (), False)
        elif isinstance(op, m.Models):
            self._out.put(_Direct(who, [m.OkOut(op.id, self._models)]))
        elif isinstance(op, m.InspectGates):
            self._inspect_gates(who, op)
        elif isinstance(op, m.SetLimits):
            self._loop.post(Call(0, "set_limits", (op.owner, op.limits)))
        elif isinstance(op, m.OpenStream):  # held by this frontend: given back if it restarts
            self._call(who, op.id, "open_stream", (op.owner, who.decode("utf-8", "replace")), False)
        elif isinstance(op, m.CloseStream):
            self._loop.post(Call(0, "close_stream", (op.lease,)))
        elif isinstance(op, m.BindSequence):
            self._call(who, op.id, "bind_sequence", (op.owner, op.model, op.seq, op.session_id), False)
        elif isinstance(op, m.FindSequence):
            self._call(who, op.id, "find_sequence", (op.owner, op.model, op.seq), False)
        elif isinstance(op, m.ForgetSequence):
            self._loop.post(Call(0, "forget_sequence", (op.owner, op.model, op.seq, op.session_id)))
        elif isinstance(op, m.Tokens):
            self._answer_tokens(who, op)
        elif isinstance(op, m.Export):
            self._call(who, op.id, "export_sessions", (op.idle_s, op.move), False)
        elif isinstance(op, m.Adopt):
            self._call(who, op.id, "adopt", (op.owner, op.record), False)
        elif isinstance(op, m.CoreReport):
            self._merge_report(op)

    # ---- several cores: the others report to core 0 ----------------------------------------
    def _send_report(self) -> None:
        """Another core's statistics (read on the previous tick) and histograms, to core 0
        (input thread: it owns the socket). A report core 0 cannot take now is dropped: the
        next one carries the same cumulative counts."""
        stats, metrics = self._latest_stats, self._metrics
        if self._report is None or stats is None or metrics is None:
            return
        report = m.CoreReport(0, self.core.shard.index, stats, metrics.report())
        try:
            self._report.send(m.encode(m.ToCore([report])), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _merge_report(self, op: m.CoreReport) -> None:
        """Core 0: another core's report. Its statistics join this core's at the next reading;
        its histogram counts replace what it reported before (cumulative)."""
        if self._metrics is None or not 0 < op.core < self.core.shard.cores:
            self._bad.warning()
            return
        try:
            self._metrics.merge_report(op.core, op.families)
        except ValueError:
            self._bad.warning()
            return
        self._peer_stats[op.core] = op.stats

    def _answer_tokens(self, who: bytes, op: m.Tokens) -> None:
        """The tokens file as the core last read it with success (a small file: read here)."""
        try:
            if self._tokens is None:
                raise Unavailable("this server has no tokens file")
            reply = self._reply(op.id, self._tokens.current(op.force), None)
        except Unavailable as e:
            reply = self._reply(op.id, None, e)
        self._out.put(_Direct(who, [reply]))

    def _record_malformed(self, counts: list[tuple[str, int]]) -> None:
        for method, count in counts:
            if method not in self._malformed_methods or not 0 < count <= MAX_MALFORMED_PER_MESSAGE:
                self._bad.warning()
                continue
            for _ in range(count):
                if self._metrics is not None:
                    self._metrics.malformed(method)
                self._malformed_log.warning()

    def _end_stream(self, who: bytes, call_id: int) -> int | None:
        """Forgets ``who``'s completion ``call_id``; its ticket, if it was still known."""
        streams = self._streams.get(who)
        return None if streams is None else streams.pop(call_id, None)

    def _call(self, who: bytes, call_id: int, method: str, args: tuple[Any, ...], ticketed: bool) -> None:
        ticket = next(self._tickets)
        self._routes[ticket] = _Route(who, call_id)
        self._loop.post(Call(ticket, method, args, ticketed))

    def _inspect_gates(self, who: bytes, op: m.InspectGates) -> None:
        def answer(value: object, error: BaseException | None) -> None:
            self._out.put(_Direct(who, [self._reply(op.id, value, error)]))

        if self._gates is None:
            answer(None, Unavailable("gate inspection is not served by this server process"))
            return
        self._gates.submit(op.query, answer)

    def _record(self, message: m.ToCore) -> None:
        metrics = self._metrics
        assert metrics is not None
        for method, code, count in message.requests:
            if method in self._methods and code in self._codes and 0 < count <= 1_000_000:
                metrics.requests.labels(method, code).inc(count)
            else:
                self._bad.warning()
        for model, kind, seconds in message.keystrokes:
            if model in self._model_names and kind in KEYSTROKE_KINDS and 0.0 <= seconds < 1e6:
                metrics.keystroke(model, kind, seconds)
            else:
                self._bad.warning()

    def _observe_stats(self, value: object, error: BaseException | None) -> None:
        """A reading of this core's statistics (output thread); core 0 adds the other cores'
        latest, so the endpoint shows the whole server."""
        if self._metrics is None or error is not None or not isinstance(value, EngineStats):
            return
        self._latest_stats = value
        self._metrics.observe_stats(combined_stats([value, *list(self._peer_stats.values())]))

    # ---- output thread ----------------------------------------------------------------------
    def _output(self) -> None:
        while True:
            timeout = BUSY_RETRY_S if self._refusals else None
            try:
                item = self._out.get(timeout=timeout)
            except queue.Empty:
                self._send({})
                continue
            if item is None:
                self._send({})
                return
            boxes: dict[bytes, list[m.ReplyOut]] = {}
            self._take(item, boxes)
            while True:  # everything already waiting joins this pass's messages
                try:
                    more = self._out.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._send(boxes)
                    return
                self._take(more, boxes)
            self._send(boxes)

    def _take(self, item: StepOutput | _Direct | _Refused, boxes: dict[bytes, list[m.ReplyOut]]) -> None:
        if isinstance(item, _Direct):
            boxes.setdefault(item.who, []).extend(item.replies)
        elif isinstance(item, _Refused):
            self._refuse(item)
        else:
            self._route(item, boxes)

    def _route(self, out: StepOutput, boxes: dict[bytes, list[m.ReplyOut]]) -> None:
        routes = self._routes
        for d in out.deliveries:
            if isinstance(d, ChunkOut):
                ticket = d.completion.ticket
                route = routes.get(ticket) if d.chunk is not None else routes.pop(ticket, None)
                if not isinstance(route, _Route):
                    continue
                if d.chunk is None:
                    self._end_stream(route.who, route.call_id)
                    boxes.setdefault(route.who, []).append(m.End(route.call_id))
                else:
                    c = d.chunk
                    boxes.setdefault(route.who, []).append(
                        m.Chunk(route.call_id, c.alternative, c.text, c.done, c.finish_reason)
                    )
                continue
            if d.ticket == 0:
                continue
            answer = routes.get(d.ticket)
            if answer is None:
                continue
            if isinstance(answer, _Route):
                if answer.stream and d.error is None:
                    continue  # a completion accepted: its chunks follow
                del routes[d.ticket]
                if answer.stream:
                    self._end_stream(answer.who, answer.call_id)
                boxes.setdefault(answer.who, []).append(self._reply(answer.call_id, d.value, d.error))
            else:
                del routes[d.ticket]
                try:
                    answer(d.value, d.error)
                except Exception:
                    log.exception("a local answer failed")
        if out.stats is not None and self._metrics is not None:
            try:
                self._metrics.observe_iteration(out.stats)
            except Exception:
                log.exception("a statistics observation failed")
        if out.idle:
            self.idle.set()

    @staticmethod
    def _reply(call_id: int, value: object, error: BaseException | None) -> m.ReplyOut:
        if error is None:
            return m.OkOut(call_id, value)
        err = m.error_reply(call_id, error)
        if err.code == m.INTERNAL:
            log.error("operation failed in the engine core", exc_info=error)
        return err

    def _send(self, boxes: dict[bytes, list[m.ReplyOut]]) -> None:
        """One message per frontend: its refusals that waited for room first, then this pass's
        replies (a frontend still refusing: this pass's replies are refused too)."""
        now = time.monotonic()
        for who in list(self._refusals):
            if now >= self._retry_at.get(who, 0.0):
                boxes[who] = self._refusals.pop(who) + boxes.get(who, [])
            elif who in boxes:
                self._refuse_replies(who, boxes.pop(who))
        for who, replies in boxes.items():
            self._pipe_out.send_multipart([who, self._encode(replies)])

    def _encode(self, replies: list[m.ReplyOut]) -> bytes:
        try:
            return m.encode(m.ToFrontendOut(replies))
        except (TypeError, ValueError):  # a value msgpack cannot carry: a bug; fail just those
            log.exception("an answer could not be encoded")
            fixed: list[m.ReplyOut] = []
            for r in replies:
                try:
                    m.encode(r)
                    fixed.append(r)
                except (TypeError, ValueError):
                    fixed.append(m.Err(r.id, m.INTERNAL, "internal error"))
            return m.encode(m.ToFrontendOut(fixed))

    def _refuse(self, item: _Refused) -> None:
        try:
            replies = m.to_frontend_decoder.decode(item.data).replies
        except msgspec.DecodeError:  # our own message: cannot happen
            log.exception("a refused message could not be read back")
            return
        self._refuse_replies(item.who, replies)

    def _refuse_replies(self, who: bytes, replies: list[Any]) -> None:
        """``replies`` did not reach ``who``: each call is answered RESOURCE_EXHAUSTED when
        there is room, each completion is cancelled and ended the same way."""
        waiting = self._refusals.setdefault(who, [])
        self._retry_at[who] = time.monotonic() + BUSY_RETRY_S
        seen = {r.id for r in waiting}
        busy = CapacityExceeded(FRONTEND_NOT_READING, retry_after_s=BUSY_RETRY_S)
        for r in replies:
            if r.id in seen:
                continue
            seen.add(r.id)
            if isinstance(r, m.Err):
                waiting.append(r)  # already an error: small, kept as it is
                continue
            if isinstance(r, m.Chunk | m.End):
                ticket = self._end_stream(who, r.id)
                if ticket is not None:
                    self._routes.pop(ticket, None)
                    self._loop.post(Call(0, "cancel_completion", (ticket,)))
            waiting.append(m.error_reply(r.id, busy))
