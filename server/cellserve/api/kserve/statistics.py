"""Per-model counters behind ModelStatistics, in Triton's terms, and where each is measured.

At the front (this surface's requests only):
- ``success`` / ``fail``: ModelInfer requests (unary or on a stream), count and time from the
  request being read to its answer;
- ``inference_count``: successful requests; ``last_inference``: the latest one's wall time.

In the engine (``EngineStats.models``: per-model sums the engine keeps of its iterations,
read with one ``stats`` query when a ModelStatistics request comes, never pushed per
iteration; they count every operation on the model, from this surface and the native API
alike, as Triton's counters cover a model whatever the client):
- ``execution_count``: engine iterations that ran a batch of the model (one batch holds the
  appends, chunks and completion steps of many sequences, so it grows slower than
  ``inference_count`` under load);
- ``queue``: operations the engine started, and their summed wait from submission to the start
  of the iteration that took them;
- ``compute_infer``: rows run, each charged its batch's device time (Triton charges every
  request of a batch the batch's execution), so ns / count is the device time a row waited for.

``compute_input`` and ``compute_output`` are not measured (tensor decoding and encoding run on
the event loop, outside the engine): zero time, with ``compute_infer``'s count, because
perf_analyzer refuses statistics whose three compute counts differ ("Server side statistics
compute counts must be the same") and divides each by its own count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ...engine.types import ModelTotals
from .pb import kpb


@dataclass
class _Counters:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    last_inference_ms: int = 0


class Statistics:
    def __init__(self) -> None:
        self._models: dict[str, _Counters] = {}

    def _of(self, model: str) -> _Counters:
        c = self._models.get(model)
        if c is None:
            c = self._models[model] = _Counters()
        return c

    def success(self, model: str, started_ns: int) -> None:
        c = self._of(model)
        c.success_count += 1
        c.success_ns += time.perf_counter_ns() - started_ns
        c.last_inference_ms = time.time_ns() // 1_000_000

    def fail(self, model: str, started_ns: int) -> None:
        c = self._of(model)
        c.fail_count += 1
        c.fail_ns += time.perf_counter_ns() - started_ns

    def message(self, model: str, version: str, engine: ModelTotals | None) -> kpb.ModelStatistics:
        """``engine``: the engine's sums for ``model`` (None: it never ran a batch of it)."""
        c = self._models.get(model, _Counters())
        e = engine or ModelTotals(model)
        ok = c.success_count
        return kpb.ModelStatistics(
            name=model,
            version=version,
            last_inference=c.last_inference_ms,
            inference_count=ok,
            execution_count=e.executions,
            inference_stats=kpb.InferStatistics(
                success=kpb.StatisticDuration(count=ok, ns=c.success_ns),
                fail=kpb.StatisticDuration(count=c.fail_count, ns=c.fail_ns),
                queue=kpb.StatisticDuration(count=e.started, ns=int(e.queue_wait_s * 1e9)),
                compute_input=kpb.StatisticDuration(count=e.rows, ns=0),
                compute_infer=kpb.StatisticDuration(count=e.rows, ns=int(e.row_device_s * 1e9)),
                compute_output=kpb.StatisticDuration(count=e.rows, ns=0),
            ),
        )
