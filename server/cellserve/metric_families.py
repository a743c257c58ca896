"""Counters and histograms for the per-keystroke observations, without a lock per observation.

prometheus_client's ``Counter`` and ``Histogram`` take a lock for every ``inc`` and scan the
buckets one by one for every ``observe``: on the event loop, at two observations and an
increment per keystroke, that was several microseconds of a keystroke's CPU (an A/B with the
three calls made no-ops: docs/measurements.md). These families keep plain per-thread counts
instead and are read by prometheus_client only when scraped, as a custom collector.

- Each thread that observes writes counts of its own (found by its thread id), so no
  increment can be lost, whichever threads observe; a scrape sums the threads' counts.
- A scrape reads while a thread may be writing: an observation in progress may be counted in
  a bucket and not yet in the sum (or the reverse) for that one scrape. ``_count`` and the
  ``+Inf`` bucket are the same number by construction, and every counter only grows.
- The exposition is prometheus_client's own (names, ``_total``, ``le`` spelled by its
  ``floatToGoString``), without the ``_created`` series, which nothing here reads.

Only metrics.py uses these.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from threading import get_ident

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

INF = float("inf")


class _Child:
    """One label set: ``counts[thread id]`` is that thread's list (buckets then the sum, for a
    histogram; one number for a counter)."""

    __slots__ = ("_bounds", "_size", "counts")

    def __init__(self, bounds: tuple[float, ...], size: int) -> None:
        self._bounds = bounds
        self._size = size
        self.counts: dict[int, list[float]] = {}

    def _own(self) -> list[float]:
        own = self.counts[get_ident()] = [0.0] * self._size  # only this thread adds this key
        return own

    def observe(self, amount: float) -> None:
        """A histogram's observation (a bucket counts the values <= its bound)."""
        own = self.counts.get(get_ident()) or self._own()
        own[bisect_left(self._bounds, amount)] += 1
        own[-1] += amount

    def inc(self, amount: float = 1.0) -> None:
        """A counter's increase."""
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        own = self.counts.get(get_ident()) or self._own()
        own[0] += amount

    def totals(self) -> list[float]:
        """The threads' counts summed (a snapshot of the dict: threads may join meanwhile)."""
        out = [0.0] * self._size
        for own in list(self.counts.values()):
            for i, v in enumerate(own):
                out[i] += v
        return out


class _Family(Collector):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], bounds: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = bounds
        self._size = len(bounds) + 1 if bounds else 1
        self._children: dict[tuple[str, ...], _Child] = {}
        self._unlabelled = None if self.labelnames else self.labels()

    def labels(self, *values: str) -> _Child:
        """The child of this label set (made on first use; label values are closed sets)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
            child = self._children.setdefault(tuple(str(v) for v in values), _Child(self._bounds, self._size))
        return child

    def snapshot(self) -> list[tuple[list[str], list[float]]]:
        """Every label set with its totals (what another process merges with ``merge``)."""
        return [(list(values), totals) for values, totals in self._each()]

    def merge(self, source: int, values: Sequence[str], totals: Sequence[float]) -> None:
        """Counts kept by another process (``source`` >= 0: core processes of one server), as
        its ``snapshot`` gave them: cumulative, so each report replaces the last. They sit
        beside the threads' own counts under a negative key (thread ids are positive), and a
        scrape sums them like a thread's."""
        if len(totals) != self._size:
            raise ValueError(f"{self.name} keeps {self._size} numbers per label set, got {len(totals)}")
        self.labels(*values).counts[-1 - source] = [float(v) for v in totals]

    def _each(self) -> Iterator[tuple[tuple[str, ...], list[float]]]:
        for values, child in list(self._children.items()):
            yield values, child.totals()

    def describe(self) -> list[Metric]:
        return list(self.collect())


class CounterFamily(_Family):
    """A counter (exposed as ``<name>_total``), labelled or not."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames, ())

    def inc(self, amount: float = 1.0) -> None:
        assert self._unlabelled is not None, f"{self.name} is labelled: use labels(...).inc()"
        self._unlabelled.inc(amount)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, totals in self._each():
            family.add_metric(values, totals[0])
        yield family


class HistogramFamily(_Family):
    """A histogram with fixed bucket bounds (``+Inf`` added), labelled or not."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram buckets must be distinct and in increasing order")
        super().__init__(name, documentation, labelnames, bounds if bounds[-1] == INF else (*bounds, INF))

    def observe(self, amount: float) -> None:
        assert self._unlabelled is not None, f"{self.name} is labelled: use labels(...).observe()"
        self._unlabelled.observe(amount)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        for values, totals in self._each():
            cumulative, buckets = 0.0, []
            for le, n in zip(les, totals, strict=False):
                cumulative += n
                buckets.append((le, cumulative))
            family.add_metric(values, buckets, totals[-1])
        yield family
