"""InspectGates: validation, the reference-cell run off the event loop, and the reply message.

Stateless (no session): it reads the model's weights only, so it needs no engine slot and
changes nothing. The run goes through the reference cells one character at a time, which is far
slower than a serving step; so the reported span is capped (``MAX_REPORTED_CHARS``), at most
``MAX_CONCURRENT`` runs go at once (each in a worker thread, so gRPC I/O and the engine keep
going) and at most ``MAX_WAITING`` more may wait, beyond which calls get RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..config import Settings
from ..errors import CapacityExceeded, InvalidInput
from ..inspection import CharGates, inspect_gates
from ..nn.checkpoint import LoadedModel
from ..units import read_units, unit_traces
from . import validate
from .pb import svc, types

MAX_REPORTED_CHARS = 512
MAX_TOP_UNITS = 32
DEFAULT_TOP_UNITS = 4
DEFAULT_TOP_K = 5
MAX_CONCURRENT = 1
MAX_WAITING = 8
RETRY_AFTER_S = 0.5

ModelLookup = Callable[[str | None], LoadedModel]
"""The loaded model of a name (None: the default); raises ``NotFound`` for unknown names."""

_CELLS = {"lstm": types.CELL_LSTM, "gru": types.CELL_GRU}


class GateInspector:
    """Answers InspectGates for the models ``lookup`` finds (``NotFound`` for unknown names)."""

    def __init__(self, lookup: ModelLookup, settings: Settings) -> None:
        self._lookup = lookup
        self._settings = settings
        self._running = asyncio.Semaphore(MAX_CONCURRENT)
        self._waiting = 0

    async def inspect(self, request: svc.InspectGatesRequest) -> svc.InspectGatesResponse:
        loaded = self._lookup(validate.model_name(request.model))
        text = validate.input_text(request.input if request.HasField("input") else None, "input", self._settings)
        last = request.last_chars if request.HasField("last_chars") else None
        if (last if last is not None else len(text)) > MAX_REPORTED_CHARS:
            raise InvalidInput(
                f"gates are reported for at most {MAX_REPORTED_CHARS} characters per call; the input has "
                f"{len(text)}: set last_chars to {MAX_REPORTED_CHARS} or less"
            )
        if last == 0:
            raise InvalidInput("last_chars is 0; unset means all characters")
        top_units = request.top_units if request.HasField("top_units") else DEFAULT_TOP_UNITS
        if top_units > MAX_TOP_UNITS:
            raise InvalidInput(f"top_units is {top_units}; the limit is {MAX_TOP_UNITS}")
        top_k = request.top_k if request.HasField("top_k") else min(DEFAULT_TOP_K, self._settings.max_top_k)
        if top_k > self._settings.max_top_k:
            raise InvalidInput(f"top_k is {top_k}; the limit is {self._settings.max_top_k} (max_top_k)")
        if self._waiting >= MAX_WAITING:
            raise CapacityExceeded("too many gate inspections at once", retry_after_s=RETRY_AFTER_S)
        self._waiting += 1
        try:
            await self._running.acquire()
        finally:
            self._waiting -= 1
        run = asyncio.ensure_future(asyncio.to_thread(_inspect, loaded, text, last, top_units, top_k))
        # Released when the thread is done, not when a cancelled caller stops waiting for it.
        run.add_done_callback(self._finished)
        first, rows, tracked = await asyncio.shield(run)
        return svc.InspectGatesResponse(
            model=loaded.spec.name,
            cell=_CELLS[loaded.spec.cell],
            first_index=first,
            characters=[_character(r) for r in rows],
            tracked_units=tracked,
        )

    def _finished(self, run: asyncio.Future[tuple[int, list[CharGates], list[svc.TrackedUnit]]]) -> None:
        self._running.release()
        if not run.cancelled():
            run.exception()  # retrieved: an error nobody awaits anymore is not logged as lost


def _inspect(
    loaded: LoadedModel, text: str, last: int | None, top_units: int, top_k: int
) -> tuple[int, list[CharGates], list[svc.TrackedUnit]]:
    """The gates, and the traces of the model's tracked units (``units.json``), in one thread."""
    first, rows = inspect_gates(loaded, text, last_chars=last, top_units=top_units, top_k=top_k)
    units = read_units(loaded)
    traces = unit_traces(loaded, text, first, units)
    tracked = [
        svc.TrackedUnit(
            layer=u.layer, unit=u.unit, feature=u.feature, label=u.label, correlation=u.correlation, values=v
        )
        for u, v in zip(units, traces, strict=True)
    ]
    return first, rows, tracked


def _character(r: CharGates) -> svc.CharacterGates:
    msg = svc.CharacterGates(
        character=r.char,
        layers=[
            svc.LayerGates(
                gates=[
                    svc.GateSummary(
                        name=g.name,
                        mean=g.mean,
                        top_units=[svc.UnitGate(unit=u.unit, value=u.value, change=u.change) for u in g.top_units],
                    )
                    for g in layer
                ]
            )
            for layer in r.layers
        ],
    )
    if r.top:
        msg.next.entries.extend(types.CharProbability(character=c, probability=p) for c, p in r.top)
    return msg
