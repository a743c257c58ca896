"""InspectGates on plain data: the question (``GateQuery``), the answer (``GateReport``) and the
run that turns one into the other.

Nothing here imports grpc, torch or asyncio at import time, so both sides of the internal
socket use it: a frontend (no torch) turns the protobuf request into a ``GateQuery`` and the
``GateReport`` back into the response (``api/gates.py``); the process that loaded the weights
runs ``run_query`` (in a worker thread: a single process's ``GateInspector``, or the engine
core's gate thread). Validation is the frontend's (``api/gates.py``); the limits are here so
both sides read the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .nn.checkpoint import LoadedModel

MAX_REPORTED_CHARS = 512
MAX_TOP_UNITS = 32
DEFAULT_TOP_UNITS = 4
DEFAULT_TOP_K = 5
MAX_CONCURRENT = 1  # runs at once: reference cells, one character at a time, are slow
MAX_WAITING = 8  # runs waiting beyond those; more: RESOURCE_EXHAUSTED
RETRY_AFTER_S = 0.5
BUSY = "too many gate inspections at once"


@dataclass(frozen=True)
class UnitGate:
    unit: int
    value: float
    change: float | None  # since the previous character; None for the text's first character


@dataclass(frozen=True)
class GateSummary:
    name: str
    mean: float
    top_units: tuple[UnitGate, ...]  # largest |change| first (first character: furthest from 0.5)


@dataclass(frozen=True)
class CharGates:
    char: str
    layers: tuple[tuple[GateSummary, ...], ...]  # [layer][gate], gates in SHOWN_GATES order
    top: tuple[tuple[str, float], ...]  # next-character (char, probability), most probable first

    def mean(self, layer: int, gate: str) -> float:
        return next(g.mean for g in self.layers[layer] if g.name == gate)


@dataclass(frozen=True)
class GateQuery:
    """A checked InspectGates request: the text, and how much of it to report."""

    model: str | None  # None: the default model
    text: str
    last_chars: int | None  # None: every character
    top_units: int
    top_k: int


@dataclass(frozen=True)
class TrackedTrace:
    """A tracked unit (``units.json``) and its state after each reported character."""

    layer: int
    unit: int
    feature: str
    label: str
    correlation: float
    values: tuple[float, ...]


@dataclass(frozen=True)
class GateReport:
    model: str
    cell: str  # "lstm" | "gru"
    first_index: int  # the text index of the first reported character
    characters: tuple[CharGates, ...]
    tracked: tuple[TrackedTrace, ...]


ModelLookup = Callable[[str | None], "LoadedModel"]
"""The loaded model of a name (None: the default); raises ``NotFound`` for unknown names."""


def run_query(lookup: ModelLookup, query: GateQuery) -> GateReport:
    """The gates and the tracked units' traces (blocking: run it in a worker thread)."""
    from .inspection import inspect_gates
    from .units import read_units, unit_traces

    loaded = lookup(query.model)
    first, rows = inspect_gates(
        loaded, query.text, last_chars=query.last_chars, top_units=query.top_units, top_k=query.top_k
    )
    units = read_units(loaded)
    traces = unit_traces(loaded, query.text, first, units)
    tracked = tuple(
        TrackedTrace(u.layer, u.unit, u.feature, u.label, u.correlation, tuple(v))
        for u, v in zip(units, traces, strict=True)
    )
    return GateReport(loaded.spec.name, loaded.spec.cell, first, tuple(rows), tracked)
