"""Per-model counters behind ModelStatistics, in Triton's terms.

Counted where the requests are answered: each ModelInfer (unary or on a stream) is one
inference and one execution (one engine append; the engine batches appends across sequences,
which no per-model counter can show). ``compute_infer`` is the time from submitting the append
to its prediction (plus a completion when asked for); ``success``/``fail`` are whole requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .pb import kpb


@dataclass
class _Counters:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    infer_ns: int = 0
    last_inference_ms: int = 0


class Statistics:
    def __init__(self) -> None:
        self._models: dict[str, _Counters] = {}

    def _of(self, model: str) -> _Counters:
        c = self._models.get(model)
        if c is None:
            c = self._models[model] = _Counters()
        return c

    def success(self, model: str, started_ns: int, infer_ns: int) -> None:
        c = self._of(model)
        c.success_count += 1
        c.success_ns += time.perf_counter_ns() - started_ns
        c.infer_ns += infer_ns
        c.last_inference_ms = time.time_ns() // 1_000_000

    def fail(self, model: str, started_ns: int) -> None:
        c = self._of(model)
        c.fail_count += 1
        c.fail_ns += time.perf_counter_ns() - started_ns

    def message(self, model: str, version: str) -> kpb.ModelStatistics:
        c = self._models.get(model, _Counters())
        ok = c.success_count
        return kpb.ModelStatistics(
            name=model,
            version=version,
            last_inference=c.last_inference_ms,
            inference_count=ok,
            execution_count=ok,
            inference_stats=kpb.InferStatistics(
                success=kpb.StatisticDuration(count=ok, ns=c.success_ns),
                fail=kpb.StatisticDuration(count=c.fail_count, ns=c.fail_ns),
                queue=kpb.StatisticDuration(count=ok, ns=0),
                compute_input=kpb.StatisticDuration(count=ok, ns=0),
                compute_infer=kpb.StatisticDuration(count=ok, ns=c.infer_ns),
                compute_output=kpb.StatisticDuration(count=ok, ns=0),
            ),
        )
