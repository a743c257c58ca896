"""The ModelStatistics counters: the engine's per-model sums (``ModelTotals``, pulled with
``stats`` on request) beside the requests counted at the front (no server)."""

from __future__ import annotations

import time

from cellserve.api.kserve.statistics import Statistics
from cellserve.engine.types import ModelIteration, ModelTotals


def _totals(*its: ModelIteration) -> ModelTotals:
    t = ModelTotals(its[0].model)
    for it in its:
        t = t.plus(it)
    return t


def test_each_model_counts_its_own_batches_queue_and_device_time() -> None:
    stats = Statistics()
    a_totals = _totals(ModelIteration("a", 2, (0.001, 0.003), 0.002), ModelIteration("a", 1, (), 0.004))
    a = stats.message("a", "1", a_totals)  # the second batch: a chunk continued, no new op started
    assert a.execution_count == 2
    assert (a.inference_stats.queue.count, a.inference_stats.queue.ns) == (2, 4_000_000)
    # every row of a batch is charged the batch's device time: 2 x 2 ms + 1 x 4 ms
    assert (a.inference_stats.compute_infer.count, a.inference_stats.compute_infer.ns) == (3, 8_000_000)
    assert a.inference_count == 0  # requests are counted at the front, not per engine row
    # perf_analyzer aborts unless the three compute counts are equal
    s = a.inference_stats
    assert s.compute_input.count == s.compute_infer.count == s.compute_output.count == 3
    b = stats.message("b", "1", _totals(ModelIteration("b", 1, (0.5,), 0.01)))
    assert (b.execution_count, b.inference_stats.queue.count, b.inference_stats.compute_infer.count) == (1, 1, 1)
    assert stats.message("c", "1", None).execution_count == 0


def test_requests_are_counted_at_the_front() -> None:
    stats = Statistics()
    started = time.perf_counter_ns()
    stats.success("a", started)
    stats.success("a", started)
    stats.fail("a", started)
    a = stats.message("a", "1", None)
    assert (a.inference_count, a.inference_stats.success.count, a.inference_stats.fail.count) == (2, 2, 1)
    assert a.last_inference > 0 and a.execution_count == 0
