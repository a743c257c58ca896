"""cellserve.metrics in isolation: EngineStats readings become the right metric values, counters
only go up, observations are counted once, and the API recorder's timings land in the
keystroke histogram with the right kind."""

from __future__ import annotations

import asyncio

import pytest
from cellserve.api.recorder import (
    APPEND_MULTI,
    APPEND_SINGLE,
    COMPLETION_CHAR,
    FIRST_CHUNK,
    ResponseTimer,
)
from cellserve.engine.types import EngineStats, IterationStats, Phase
from cellserve.metrics import KEYSTROKE_KINDS, LATENCY_BUCKETS, Metrics


def value(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    assert v is not None, f"no sample {name}{labels}"
    return v


def reading(**kw: object) -> EngineStats:
    base: dict[str, object] = {
        "active_sessions": 3,
        "slots_capacity": 256,
        "slots_max": 1000,
        "slots_used": 4,
        "state_bytes": 4096,
        "running_completions": 1,
        "iterations": 10,
        "chars_processed": {"step": 5, "prefill": 20, "completion": 7},
        "session_events": {"opened": 3, "rejected_sessions": 2, "rejected_completion": 1},
    }
    base.update(kw)
    return EngineStats(**base)  # type: ignore[arg-type]


ITERATIONS = [
    IterationStats(1, (0.0001,), ((Phase.STEP, 0.001),), ((Phase.STEP, 1),)),
    IterationStats(3, (0.002,), ((Phase.PREFILL, 0.01),), ((Phase.PREFILL, 20),)),
    IterationStats(8, (), ((Phase.PREFILL, 0.02),), ((Phase.PREFILL, 4),)),
]


def test_latency_buckets_span_50us_to_5s() -> None:
    assert LATENCY_BUCKETS[0] == pytest.approx(50e-6) and LATENCY_BUCKETS[-1] == 5.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    m = Metrics(["tiny"])
    assert value(m, "cellserve_keystroke_latency_seconds_bucket", model="tiny", kind="append_single", le="5e-05") == 0


def test_a_reading_sets_gauges_and_counters() -> None:
    m = Metrics(["tiny"], sessions_max=50)
    m.observe_stats(reading())
    for it in ITERATIONS:
        m.observe_iteration(it)
    assert value(m, "cellserve_active_sessions") == 3
    assert value(m, "cellserve_sessions_max") == 50
    assert value(m, "cellserve_slots_capacity") == 256
    assert value(m, "cellserve_slots_max") == 1000
    assert value(m, "cellserve_slots_used") == 4
    assert value(m, "cellserve_state_bytes") == 4096
    assert value(m, "cellserve_running_completions") == 1
    assert value(m, "cellserve_engine_iterations_total") == 10
    assert value(m, "cellserve_chars_processed_total", phase="prefill") == 20
    assert value(m, "cellserve_session_events_total", reason="opened") == 3
    assert value(m, "cellserve_session_events_total", reason="rejected") == 2  # the engine's "rejected_sessions"
    assert value(m, "cellserve_completions_rejected_total") == 1
    assert value(m, "cellserve_queue_wait_seconds_count") == 2
    assert value(m, "cellserve_queue_wait_seconds_bucket", le="0.00025") == 1
    assert value(m, "cellserve_device_step_seconds_count", phase="prefill") == 2
    assert value(m, "cellserve_device_step_seconds_sum", phase="prefill") == pytest.approx(0.03)
    assert value(m, "cellserve_batch_size_count") == 3
    assert value(m, "cellserve_batch_size_bucket", le="4.0") == 2


def test_speculation_counters_and_slots() -> None:
    m = Metrics(["tiny"])
    assert value(m, "cellserve_speculation_keystrokes_total", result="hit") == 0  # primed
    spec = {"hits": 7, "misses": 2, "unguessed": 1, "rows": 40, "wasted_rows": 33, "slots": 8}
    m.observe_stats(reading(speculation=spec))
    m.observe_stats(reading(speculation=dict(spec, hits=9, slots=4)))
    assert value(m, "cellserve_speculation_keystrokes_total", result="hit") == 9
    assert value(m, "cellserve_speculation_keystrokes_total", result="miss") == 2
    assert value(m, "cellserve_speculation_keystrokes_total", result="unguessed") == 1
    assert value(m, "cellserve_speculation_rows_total") == 40
    assert value(m, "cellserve_speculation_wasted_rows_total") == 33
    assert value(m, "cellserve_speculation_slots") == 4


def test_cumulative_counters_add_only_their_increase() -> None:
    m = Metrics()
    m.observe_stats(reading())
    m.observe_stats(reading())  # the same reading again (readers never drain): nothing added
    assert value(m, "cellserve_engine_iterations_total") == 10
    m.observe_stats(reading(iterations=15, chars_processed={"step": 9}))
    assert value(m, "cellserve_engine_iterations_total") == 15
    assert value(m, "cellserve_chars_processed_total", phase="step") == 9
    assert value(m, "cellserve_chars_processed_total", phase="prefill") == 20  # absent from the reading: unchanged
    m.observe_stats(reading(iterations=2))  # a smaller reading never makes a counter go down
    assert value(m, "cellserve_engine_iterations_total") == 15


def test_the_recorder_kinds_are_the_primed_kinds() -> None:
    assert set(KEYSTROKE_KINDS) == {APPEND_SINGLE, APPEND_MULTI, FIRST_CHUNK, COMPLETION_CHAR}


def test_known_label_sets_exist_before_any_event() -> None:
    m = Metrics(["a", "b"])
    for model in ("a", "b"):
        for kind in KEYSTROKE_KINDS:
            assert value(m, "cellserve_keystroke_latency_seconds_count", model=model, kind=kind) == 0
    for reason in ("opened", "closed", "expired", "resumed", "rejected"):
        assert value(m, "cellserve_session_events_total", reason=reason) == 0


def test_odd_engine_event_names_are_sanitised() -> None:
    m = Metrics()
    m.observe_stats(reading(session_events={"Weird Event/1": 1}))
    assert value(m, "cellserve_session_events_total", reason="weird_event_1") == 1


def test_device_memory_only_with_a_reader() -> None:
    assert Metrics().registry.get_sample_value("cellserve_device_memory_bytes", {"kind": "allocated"}) is None
    m = Metrics(device_memory=lambda: {"allocated": 100, "reserved": 200})
    m.observe_stats(reading())
    assert value(m, "cellserve_device_memory_bytes", kind="reserved") == 200


def test_a_failing_reading_is_skipped_not_raised() -> None:
    class Broken:
        calls = 0
        third = asyncio.Event()

        async def stats(self, owner: str) -> EngineStats:
            self.calls += 1
            if self.calls == 3:
                self.third.set()
            raise RuntimeError("boom")

    m, engine = Metrics(), Broken()

    async def run() -> None:
        task = asyncio.create_task(m.poll_engine(engine, interval_s=0.001))  # type: ignore[arg-type]
        await asyncio.wait_for(engine.third.wait(), 30)  # polled again after two failures
        assert not task.done()
        task.cancel()

    asyncio.run(run())
    assert engine.calls >= 3


def test_requests_and_keystrokes_from_the_recorder() -> None:
    m = Metrics(["tiny"])
    m.request("Append", "OK")
    m.request("Session.append", "ABORTED")
    assert value(m, "cellserve_requests_total", method="Append", code="OK") == 1
    assert value(m, "cellserve_requests_total", method="Session.append", code="ABORTED") == 1
    ResponseTimer(m, "tiny").prediction_sent(1)
    ResponseTimer(m, "tiny").prediction_sent(5)
    assert value(m, "cellserve_keystroke_latency_seconds_count", model="tiny", kind=APPEND_SINGLE) == 1
    assert value(m, "cellserve_keystroke_latency_seconds_count", model="tiny", kind=APPEND_MULTI) == 1


class _Fake:
    def __init__(self) -> None:
        self.keystrokes: list[tuple[str, str, float]] = []

    def request(self, method: str, code: str) -> None:
        pass

    def keystroke(self, model: str, kind: str, seconds: float) -> None:
        self.keystrokes.append((model, kind, seconds))


def test_completion_chunks_first_then_per_character(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 10.5, 10.7, 10.9, 11.0])
    monkeypatch.setattr("cellserve.api.recorder.time.perf_counter", lambda: next(clock))
    fake = _Fake()
    timer = ResponseTimer(fake, "m")  # received at 10.0
    timer.chunk_sent(0, 1)  # 10.5: the first chunk, 0.5 s after the request
    timer.chunk_sent(0, 2)  # 10.7: two characters in 0.2 s
    timer.chunk_sent(1, 1)  # 10.9: alternative 1's first chunk counts from the first chunk
    timer.chunk_sent(0, 0)  # 11.0: a bare "done": nothing a user waits for
    kinds = [(k, round(s, 6)) for _, k, s in fake.keystrokes]
    assert kinds == [(FIRST_CHUNK, 0.5), (COMPLETION_CHAR, 0.1), (COMPLETION_CHAR, 0.1), (COMPLETION_CHAR, 0.4)]


def test_no_cuda_memory_reader_off_cuda() -> None:
    import torch
    from cellserve.metrics import cuda_memory_reader

    assert cuda_memory_reader(torch.device("cpu")) is None
