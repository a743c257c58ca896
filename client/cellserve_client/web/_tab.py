"""One browser tab: an SDK session kept in step with the page's text.

The page sends its whole text after every edit. The tab compares it with the text the session
holds (``_synced``: what the session will hold once its queued operations are done): what was
deleted or changed is rewound (Rewind to the common prefix; an edit in the middle goes back to
the edit point) and the rest is appended with ``only_last``, without waiting, so that fast
typing pipelines its appends and the server answers only the newest in full. Then, if no newer
edit came meanwhile, the greedy suggestion (a completion on a fork of the state) and the gates
(InspectGates) of that text are sent back, tagged with the edit's ``seq``; older answers are
dropped here, and the page drops any that still cross a newer edit.

A session the SDK's failover cannot save (the server was down longer than its retries) is
rebuilt here: a new session, the page's current text appended, and the answers for the newest
edit sent again. The same holds for an open that fails because cellserve cannot be reached
(e.g. the tab opened while it was down): the tab says why (a ``status`` "reconnecting" with the
SDK's message, on every failed attempt), keeps the page's edits, and opens the session when
cellserve is back, sending ``opened`` and the answers for the newest text then. Attempts back
off (``RECOVER_DELAYS_S``). The page never loses its text: it holds it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .._client import AsyncClient
from .._errors import CellserveError, InvalidInput, ModelNotFound, NotFound, PreconditionFailed, Unavailable
from .._session import AsyncSession
from .._types import FinishReason, GateInspection, ModelInfo, Prediction
from ._protocol import MAX_TEXT_CHARS, Edit, Open, ProtocolError, Ranked, parse

log = logging.getLogger("cellserve_client.web")

Send = Callable[[dict[str, Any]], Awaitable[None]]
GATE_CONTEXT_CHARS = 4096  # the server's default max_append_chars: the gates read at most this much text
RECOVER_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # then every 5 s while the tab is open
GATE_NAMES = {"lstm": ("f", "i", "o"), "gru": ("r", "z")}


@dataclass(frozen=True)
class TabSettings:
    suggest_chars: int = 24  # the ghost suggestion's length (it also stops at a line break)
    gate_chars: int = 64  # characters shown in the gate viewer (the end of the text)
    top_units: int = 3  # units per gate shown on hover
    ranked: int = 8  # entries of the ranked list
    default_model: str | None = None  # what an open without a model gets (None: the server's default)


class Tab:
    def __init__(self, client: AsyncClient, send: Send, settings: TabSettings) -> None:
        self._client = client
        self._send = send
        self._settings = settings
        self._session: AsyncSession | None = None
        self._model: str | None = None
        self._synced: str | None = ""  # None: unknown (a failed append); the next sync starts over
        self._seq = -1
        self._text = ""
        self._broken = False
        self._announced = False  # the page got "opened" for the session it holds
        self._asked_open = False  # the page sent an open (a failed one is retried by its edits)
        self._rebuilding: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._gates_lock = asyncio.Lock()

    # --- messages from the page ---------------------------------------------------------------

    async def handle(self, data: str) -> None:
        """Acts on one text frame; answers every problem with an ``error`` message."""
        seq: int | None = None
        try:
            msg = parse(data)
            seq = msg.seq
            if isinstance(msg, Open):
                await self._open(msg)
            elif isinstance(msg, Edit):
                await self._edit(msg)
            elif isinstance(msg, Ranked):
                self._spawn(self._ranked(msg.seq))
        except ProtocolError as exc:
            await self._error(exc.code, exc.message, seq)
        except CellserveError as exc:
            await self._server_error(exc, seq)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._drop_session()

    # --- open and edit ------------------------------------------------------------------------

    async def _open(self, msg: Open) -> None:
        if self._rebuilding is not None:
            self._rebuilding.cancel()  # the page asks for a session of its own choice now
            self._rebuilding = None
        if self._broken:
            self._drop_lost_session()
        else:
            await self._drop_session()
        self._broken, self._announced, self._asked_open = False, False, True
        model = msg.model or self._settings.default_model
        self._model, self._synced, self._seq, self._text = model, "", msg.seq, msg.text
        try:
            session = await self._client.open(model)
        except Unavailable as exc:  # cellserve is down or unreachable: say so, and keep trying
            self._broken = True
            await self._reconnecting(exc)
            self._rebuilding = self._spawn(self._rebuild())
            return
        self._session = session
        await self._announce(msg.seq, session)
        await self._follow(msg.seq, msg.text, session)

    async def _announce(self, seq: int, session: AsyncSession) -> None:
        """The ``opened`` message: the session's model, the models to choose from, the limits."""
        models = await self._client.models()
        self._announced = True
        await self._send(
            {
                "type": "opened",
                "seq": seq,
                "model": _model_json(session.model),
                "models": [m.name for m in models],
                "limits": {"max_text_chars": MAX_TEXT_CHARS, "gate_chars": self._settings.gate_chars},
            }
        )

    async def _reconnecting(self, exc: CellserveError, retry_in: float | None = None) -> None:
        """The real cause, as the SDK words it, and when the next attempt is."""
        when = f"; next attempt in {retry_in:g} s" if retry_in is not None else ""
        target = ", ".join(self._client.targets)
        await self._send(
            {"type": "status", "state": "reconnecting", "message": f"cellserve at {target}: {exc.message}{when}"}
        )

    async def _edit(self, msg: Edit) -> None:
        if msg.seq <= self._seq:
            raise ProtocolError("bad_field", f"'seq' must grow with every message; the last one was {self._seq}")
        if self._session is None and not self._broken:
            if not self._asked_open:
                raise ProtocolError("not_open", "send an 'open' message first")
            # The page's open failed for a reason a retry may not fix (e.g. a refused token):
            # each edit tries again, so the page shows the real cause, never "not open".
            await self._open(Open(msg.seq, self._model, msg.text))
            return
        self._seq, self._text = msg.seq, msg.text
        if not self._broken and self._session is not None:  # else the rebuilt session takes the newest text
            await self._follow(msg.seq, msg.text, self._session)

    async def _follow(self, seq: int, text: str, session: AsyncSession) -> None:
        """Brings the session to ``text`` and sends the answers for ``seq`` when they come."""
        try:
            append = await self._sync(session, text)
        except CellserveError as exc:
            await self._lost(session, exc)
            return
        self._spawn(self._answer(seq, session, append))

    async def _sync(self, session: AsyncSession, text: str) -> asyncio.Task[Prediction] | None:
        if self._synced is None:
            await session.reset()
            self._synced = ""
        common = len(os.path.commonprefix([self._synced, text]))
        back = len(self._synced) - common
        if back:
            try:
                await session.rewind(back)
            except PreconditionFailed:  # further back than the server's rewind window
                await session.reset()
                common = 0
        self._synced = text
        added = text[common:]
        if not added:
            return None
        # Not awaited: the appends of fast typing pipeline on the session's stream.
        return asyncio.ensure_future(session.append(added, top_k=0, only_last=True))

    # --- answers ------------------------------------------------------------------------------

    async def _answer(self, seq: int, session: AsyncSession, append: asyncio.Task[Prediction] | None) -> None:
        try:
            if append is not None:
                await append
            if seq != self._seq:
                return  # a newer edit is on its way: its answer is the one the page wants
            stream = await session.complete(max_chars=self._settings.suggest_chars, stop=("\n",))
            done = await stream.collect()
        except CellserveError as exc:
            await self._lost(session, exc)
            return
        if seq != self._seq or not done or done[0].finish_reason is FinishReason.CANCELLED:
            return
        await self._send(
            {
                "type": "suggestion",
                "seq": seq,
                "text": done[0].text.split("\n")[0],
                "position": session.position,
                "failovers": session.failovers,
            }
        )
        await self._gates(seq, session.model)

    async def _gates(self, seq: int, model: ModelInfo) -> None:
        async with self._gates_lock:  # one inspection at a time per tab; the newest text wins
            if seq != self._seq:
                return
            text = self._text[-GATE_CONTEXT_CHARS:]
            shown = min(len(text), self._settings.gate_chars)
            reply: dict[str, Any] = {"type": "gates", "seq": seq, "cell": model.cell.value, "first_index": 0}
            reply["gate_names"] = list(GATE_NAMES.get(model.cell.value, ()))
            reply["characters"], reply["tracked"] = [], []
            if shown:
                try:
                    r = await self._client.inspect_gates(
                        text, model=model.name, last_chars=shown, top_units=self._settings.top_units
                    )
                except CellserveError as exc:
                    await self._error("gates", f"the gates could not be read: {exc.message}", seq)
                    return
                reply.update(_gates_json(r, offset=len(self._text) - len(text)))
            if seq == self._seq:
                await self._send(reply)

    async def _ranked(self, seq: int) -> None:
        """Ranked suggestions (Ctrl+Space): the most probable completions of the current word,
        by the server's beam search on the session (ordered after the edits sent before)."""
        items: list[dict[str, Any]] = []
        if self._session is not None and self._synced is not None:
            try:
                found = await self._session.suggest(
                    n=self._settings.ranked, scope="word", max_chars=self._settings.suggest_chars
                )
            except CellserveError as exc:
                await self._server_error(exc, seq)
                return
            items = [{"text": s.text, "logprob": s.logprob} for s in found]
        await self._send({"type": "ranked", "seq": seq, "source": "beam-word", "items": items})

    # --- losing and rebuilding the session ----------------------------------------------------

    async def _lost(self, session: AsyncSession, exc: CellserveError) -> None:
        if session is not self._session or self._broken:
            return  # an older session's late failure, or a rebuild already under way
        if isinstance(exc, InvalidInput | ModelNotFound):
            await self._server_error(exc, self._seq)  # a rebuild would fail the same way
            self._synced = None
            return
        self._broken = True
        await self._reconnecting(exc)
        self._rebuilding = self._spawn(self._rebuild())

    async def _rebuild(self) -> None:
        attempt = 0
        while True:
            self._drop_lost_session()
            try:
                session = await self._client.open(self._model)
                self._session, self._synced = session, ""
                if not self._announced:  # the tab opened while cellserve was unreachable
                    await self._announce(self._seq, session)
                append = await self._sync(session, self._text)
                if append is not None:
                    await append
                break
            except (InvalidInput, NotFound) as exc:
                # Trying again would fail the same way: the next edit (or open) tries afresh.
                self._broken, self._synced, self._rebuilding = False, None, None
                await self._server_error(exc, self._seq)
                return
            except CellserveError as exc:
                delay = RECOVER_DELAYS_S[min(attempt, len(RECOVER_DELAYS_S) - 1)]
                log.info("tab: rebuilding the session: %s", exc)
                await self._reconnecting(exc, delay)
            await asyncio.sleep(delay)
            attempt += 1
        self._broken, self._rebuilding = False, None
        await self._send({"type": "status", "state": "ok", "message": "reconnected"})
        if self._synced != self._text:  # edits came while the session was rebuilt
            await self._follow(self._seq, self._text, session)
        else:
            self._spawn(self._answer(self._seq, session, None))

    def _drop_lost_session(self) -> None:
        """Closing a session whose server is gone runs the SDK's failover first: not waited for."""
        session, self._session = self._session, None
        if session is not None:
            self._spawn(self._close_quietly(session))

    async def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await self._close_quietly(session)

    @staticmethod
    async def _close_quietly(session: AsyncSession) -> None:
        try:
            await session.close()
        except CellserveError:
            pass  # its server is gone: nothing to free

    # --- plumbing -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not end the tab silently
            log.exception("tab: unexpected failure")
            await self._error("internal", "the web backend failed on this request; its log has the details", None)

    async def _server_error(self, exc: CellserveError, seq: int | None) -> None:
        code = "not_found" if isinstance(exc, NotFound) else "bad_input" if isinstance(exc, InvalidInput) else "server"
        await self._error(code, exc.message, seq)

    async def _error(self, code: str, message: str, seq: int | None) -> None:
        await self._send({"type": "error", "code": code, "message": message, "seq": seq})


def _model_json(m: ModelInfo) -> dict[str, Any]:
    return {
        "name": m.name,
        "cell": m.cell.value,
        "layers": m.layers,
        "hidden": m.hidden,
        "gates": list(GATE_NAMES.get(m.cell.value, ())),
    }


def _gates_json(r: GateInspection, offset: int) -> dict[str, Any]:
    """Compact: per character, per layer, per gate [mean, [[unit, value, change|null], ...]]."""
    return {
        "first_index": offset + r.first_index,
        "characters": [
            {
                "char": c.character,
                "layers": [
                    {g.name: [g.mean, [[u.unit, u.value, u.change] for u in g.top_units]] for g in layer}
                    for layer in c.layers
                ],
                "top": [[ch, p] for ch, p in c.top],
            }
            for c in r.characters
        ],
        # units whose state tracks the text: [{label, feature, layer, unit, correlation, values}]
        "tracked": [
            {
                "label": u.label,
                "feature": u.feature,
                "layer": u.layer,
                "unit": u.unit,
                "correlation": u.correlation,
                "values": list(u.values),
            }
            for u in r.tracked
        ],
    }
