"""The lock-free families (cellserve.metric_families) against prometheus_client's own Counter and
Histogram: the same observations give the same exposition (but for ``_created``), no increment is
lost when threads observe at once, and misuse is refused."""

from __future__ import annotations

import random
import threading

import pytest
from cellserve.metric_families import CounterFamily, HistogramFamily
from cellserve.metrics import LATENCY_BUCKETS
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


def exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_a_histogram_exposes_what_prometheus_client_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    h = HistogramFamily("x_seconds", "Some latency.", ["model", "kind"], buckets=LATENCY_BUCKETS)
    ours.register(h)
    ref = Histogram("x_seconds", "Some latency.", ["model", "kind"], buckets=LATENCY_BUCKETS, registry=theirs)
    rng = random.Random(7)
    # every bound itself (a bucket counts values <= its bound), between bounds, past the last
    values = [*LATENCY_BUCKETS, 0.0, 7.5, 1e9] + [rng.uniform(0, 6) for _ in range(500)]
    for v in values:
        for labels in (("m", "a"), ("m", "b")):
            h.labels(*labels).observe(v)
            ref.labels(*labels).observe(v)
    h.labels("other", "a")  # a label set made and never observed
    ref.labels("other", "a")
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("x_seconds_count", {"model": "m", "kind": "a"}) == len(values)
    assert ours.get_sample_value("x_seconds_bucket", {"model": "m", "kind": "a", "le": "+Inf"}) == len(values)


def test_unlabelled_families_and_counters_expose_what_prometheus_client_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    h = HistogramFamily("rows", "Rows.", buckets=(1.0, 2.0, 4.0))
    c = CounterFamily("events", "Events by reason.", ["reason"])
    plain = CounterFamily("ticks", "Ticks.")
    for family in (h, c, plain):
        ours.register(family)
    ref_h = Histogram("rows", "Rows.", buckets=(1.0, 2.0, 4.0), registry=theirs)
    ref_c = Counter("events", "Events by reason.", ["reason"], registry=theirs)
    ref_plain = Counter("ticks", "Ticks.", registry=theirs)
    for v in (1, 1, 3, 9, 0.5):
        h.observe(v)
        ref_h.observe(v)
    for reason, n in (("a", 1), ("b", 2.5), ("a", 3)):
        c.labels(reason).inc(n)
        ref_c.labels(reason).inc(n)
    plain.inc()
    ref_plain.inc()
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("events_total", {"reason": "a"}) == 4


def test_threads_observing_at_once_lose_nothing() -> None:
    registry = CollectorRegistry()
    h = HistogramFamily("t_seconds", "T.", ["k"], buckets=(0.5,))
    c = CounterFamily("t_events", "T.", ["k"])
    registry.register(h)
    registry.register(c)
    threads, each = 6, 20_000
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        child, count = h.labels("x"), c.labels("x")
        for i in range(each):
            child.observe(0.25 if i % 2 else 1.0)
            count.inc()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    n = threads * each
    assert registry.get_sample_value("t_seconds_count", {"k": "x"}) == n
    assert registry.get_sample_value("t_seconds_bucket", {"k": "x", "le": "0.5"}) == n // 2
    assert registry.get_sample_value("t_seconds_sum", {"k": "x"}) == pytest.approx(n / 2 * 1.25)
    assert registry.get_sample_value("t_events_total", {"k": "x"}) == n


def test_misuse_is_refused() -> None:
    c = CounterFamily("c", "C.", ["a"])
    with pytest.raises(ValueError, match="non-negative"):
        c.labels("x").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        c.labels("x", "y")
    with pytest.raises(ValueError, match="increasing"):
        HistogramFamily("h", "H.", buckets=(2.0, 1.0))
