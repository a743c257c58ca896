"""InspectGates in the API layer: the request checked into a ``GateQuery``, the ``GateReport``
turned into the response, and the in-process inspector.

Stateless (no session): a run reads the model's weights only, so it needs no engine slot and
changes nothing. The run goes through the reference cells one character at a time, which is far
slower than a serving step; so the reported span is capped (``MAX_REPORTED_CHARS``), at most
``MAX_CONCURRENT`` runs go at once (each in a worker thread, so gRPC I/O and the engine keep
going) and at most ``MAX_WAITING`` more may wait, beyond which calls get RESOURCE_EXHAUSTED.
With ``--frontends N`` the engine core runs the query (it holds the weights) with the same
bounds (``multiproc/gate_thread.py``); this module then only converts, and imports no torch.
"""

from __future__ import annotations

import asyncio

from ..config import Settings
from ..errors import CapacityExceeded, InvalidInput
from ..gate_report import (
    BUSY,
    DEFAULT_TOP_K,
    DEFAULT_TOP_UNITS,
    MAX_CONCURRENT,
    MAX_REPORTED_CHARS,
    MAX_TOP_UNITS,
    MAX_WAITING,
    RETRY_AFTER_S,
    CharGates,
    GateQuery,
    GateReport,
    ModelLookup,
    run_query,
)
from . import validate
from .pb import svc, types

__all__ = ["MAX_WAITING", "GateInspector", "ModelLookup", "query_of", "response_of"]

_CELLS = {"lstm": types.CELL_LSTM, "gru": types.CELL_GRU}


def query_of(request: svc.InspectGatesRequest, settings: Settings) -> GateQuery:
    """The request, checked (``InvalidInput`` names the field and the limit)."""
    model = validate.model_name(request.model)
    text = validate.input_text(request.input if request.HasField("input") else None, "input", settings)
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
    top_k = request.top_k if request.HasField("top_k") else min(DEFAULT_TOP_K, settings.max_top_k)
    if top_k > settings.max_top_k:
        raise InvalidInput(f"top_k is {top_k}; the limit is {settings.max_top_k} (max_top_k)")
    return GateQuery(model, text, last, top_units, top_k)


def response_of(report: GateReport) -> svc.InspectGatesResponse:
    return svc.InspectGatesResponse(
        model=report.model,
        cell=_CELLS[report.cell],
        first_index=report.first_index,
        characters=[_character(r) for r in report.characters],
        tracked_units=[
            svc.TrackedUnit(
                layer=t.layer, unit=t.unit, feature=t.feature, label=t.label, correlation=t.correlation, values=t.values
            )
            for t in report.tracked
        ],
    )


class GateInspector:
    """Answers InspectGates in the process that loaded the models (``NotFound`` for unknown
    names)."""

    def __init__(self, lookup: ModelLookup, settings: Settings) -> None:
        self._lookup = lookup
        self._settings = settings
        self._running = asyncio.Semaphore(MAX_CONCURRENT)
        self._waiting = 0

    async def inspect(self, request: svc.InspectGatesRequest) -> svc.InspectGatesResponse:
        query = query_of(request, self._settings)
        if self._waiting >= MAX_WAITING:
            raise CapacityExceeded(BUSY, retry_after_s=RETRY_AFTER_S)
        self._waiting += 1
        try:
            await self._running.acquire()
        finally:
            self._waiting -= 1
        run = asyncio.ensure_future(asyncio.to_thread(run_query, self._lookup, query))
        # Released when the thread is done, not when a cancelled caller stops waiting for it.
        run.add_done_callback(self._finished)
        return response_of(await asyncio.shield(run))

    def _finished(self, run: asyncio.Future[GateReport]) -> None:
        self._running.release()
        if not run.cancelled():
            run.exception()  # retrieved: an error nobody awaits anymore is not logged as lost


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
