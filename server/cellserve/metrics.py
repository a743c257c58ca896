"""Prometheus metrics: with ``metric_families`` (its lock-free counters and histograms), the only
module importing prometheus_client.

Two feeds fill them, and neither ever waits on the other or on a scrape:

- the engine: its ``IterationStats`` pushed once per iteration (``Metrics.observe_iteration``,
  registered as a stats listener: queue waits, step times, batch sizes), and its ``EngineStats``
  (gauges and cumulative counters; reading them changes nothing) pulled by
  ``Metrics.poll_engine`` every ``POLL_INTERVAL_S``;
- the API layer, through the small ``Recorder`` interface (``cellserve.api.recorder``) that
  ``Metrics`` implements: one call per finished request and per response a client waits on.

Scrapes are answered by prometheus_client's HTTP server in a thread of its own on its own port
(``settings.metrics_port``); they read the metric objects (gauges lock internally; the
per-keystroke families keep per-thread counts a scrape sums) and never call
into the engine, so a slow or hostile scraper cannot stall an iteration. The price: engine
gauges are up to ``POLL_INTERVAL_S`` old.

Labels are closed sets chosen by the server (model names, kinds, phases, grpc method and code
names, event reasons). Never a session id, owner or user text: those would be unbounded
cardinality and private data.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
)

from .engine.types import EngineStats, IterationStats, Phase, SessionEvent
from .metric_families import CounterFamily, HistogramFamily

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .engine.client import EngineClient

log = logging.getLogger(__name__)

# Names are spelled out whole ("cellserve_..."), so a grep for a metric (the HPA, the rules,
# the dashboard) finds where it is made.

# Engine gauges and counters lag by at most this (observations are pushed per iteration).
POLL_INTERVAL_S = 0.5

# 50 µs (a single step of a tiny model on a GPU) to 5 s (a keystroke stuck behind a huge paste
# or an overloaded pod). Roughly 1-2.5-5 per decade so p99 interpolation stays within ~2x.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
)  # fmt: skip
# Rows (sessions and completion alternatives) in one engine iteration: powers of two up to
# beyond any realistic pod (max_sessions + max_running_completions).
BATCH_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(15))  # 1 .. 16384

# The kinds cellserve.api.recorder reports (not imported: this module stays free of grpc).
KEYSTROKE_KINDS = ("append_single", "append_multi", "completion_first_chunk", "completion_char")
PHASES = tuple(p.value for p in Phase)
SESSION_REASONS = ("opened", "closed", "expired", "resumed", "rejected")
SPECULATION_RESULTS = ("hit", "miss", "unguessed")
# Engine event names that are not the label value operators see.
_EVENT_REASON = {SessionEvent.REJECTED_SESSIONS.value: "rejected"}
_REJECTED_COMPLETIONS = SessionEvent.REJECTED_COMPLETION.value
_LABEL_SAFE = re.compile(r"[^a-z0-9_]")


def _reason(event: str) -> str:
    # Engine event names are code constants, but a label must never carry anything odd.
    return _LABEL_SAFE.sub("_", _EVENT_REASON.get(event, event).lower())[:40]


class Metrics:
    """Every cellserve metric, in a registry of its own (tests build many side by side)."""

    def __init__(
        self,
        models: Iterable[str] = (),
        *,
        sessions_max: int = 0,
        device_memory: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # The client library's process_*, python_gc_*, python_info collectors.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        # --- per request (from the API layer) ---------------------------------------------------
        # The families observed per keystroke and per iteration are lock-free (metric_families).
        self.keystroke_latency = HistogramFamily(
            "cellserve_keystroke_latency_seconds",
            "Time from receiving a request to sending the response the client waits for: an Append's "
            "prediction (append_single: one character; append_multi: several), a completion's first "
            "chunk (completion_first_chunk), or each later completion character (completion_char: "
            "time since the alternative's previous chunk, per character).",
            ["model", "kind"],
            buckets=LATENCY_BUCKETS,
        )
        self.requests = CounterFamily(
            "cellserve_requests",
            "Finished requests by gRPC method and status code. Unary calls and streams by method name; "
            "each operation inside a Session stream as Session.<op>, in-band errors with their code.",
            ["method", "code"],
        )
        self.malformed_requests = Counter(
            "cellserve_malformed_requests",
            "Requests whose bytes did not decode (corrupt protobuf, text that is not UTF-8), by method; "
            "each answered INVALID_ARGUMENT.",
            ["method"],
            registry=r,
        )
        # --- engine observations (pushed per iteration as IterationStats) -------------------------
        self.queue_wait = HistogramFamily(
            "cellserve_queue_wait_seconds",
            "Time an operation waited in its session's queue before the engine iteration that ran it began.",
            buckets=LATENCY_BUCKETS,
        )
        self.step_time = HistogramFamily(
            "cellserve_device_step_seconds",
            "Device time of one engine iteration's work by phase (step: one character per row; "
            "prefill: packed multi-character pieces; completion: decoding steps).",
            ["phase"],
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = HistogramFamily(
            "cellserve_batch_size",
            "Rows (sessions and completion alternatives) processed together in one engine iteration.",
            buckets=BATCH_BUCKETS,
        )
        for family in (self.keystroke_latency, self.requests, self.queue_wait, self.step_time, self.batch_size):
            r.register(family)
        # --- engine counters (cumulative in EngineStats; exported as increments) ---------------
        self.chars = Counter(
            "cellserve_chars_processed", "Characters run through the model, by phase.", ["phase"], registry=r
        )
        self.iterations = Counter(
            "cellserve_engine_iterations", "Engine iterations (batched device steps).", registry=r
        )
        self.session_events = Counter(
            "cellserve_session_events",
            "Session lifecycle events by reason: opened, resumed, closed (by the client), expired (idle TTL), "
            "rejected (session limit reached); with a session store: handed_out (moved to the store on drain), "
            "handed_in (taken from the store after a miss), synced (written by the background sync).",
            ["reason"],
            registry=r,
        )
        self.completions_rejected = Counter(
            "cellserve_completions_rejected",
            "Completions refused because max_running_completions alternatives were already decoding.",
            registry=r,
        )
        self.speculation_keystrokes = Counter(
            "cellserve_speculation_keystrokes",
            "One-character appends by what speculation had for them: hit (answered from a guess stepped "
            "while the engine was idle, no model step), miss (the session had guesses, none matched), "
            "unguessed (no guesses yet). Hit rate: hit / all. Only models served at a batch-invariant "
            "precision (int8) speculate.",
            ["result"],
            registry=r,
        )
        self.speculation_rows = Counter(
            "cellserve_speculation_rows",
            "Rows stepped speculatively (one per guessed character).",
            registry=r,
        )
        self.speculation_wasted_rows = Counter(
            "cellserve_speculation_wasted_rows",
            "Speculative rows dropped unused (the keystroke was another character, another operation came, "
            "or the session went quiet).",
            registry=r,
        )
        # --- engine gauges ---------------------------------------------------------------------
        self.active_sessions = Gauge(
            "cellserve_active_sessions", "Live sessions (the HPA's scaling metric).", registry=r
        )
        self.sessions_max = Gauge(
            "cellserve_sessions_max",
            "Configured session limit (max_sessions); beyond it opens are rejected.",
            registry=r,
        )
        self.sessions_max.set(sessions_max)
        self.slots_capacity = Gauge(
            "cellserve_slots_capacity",
            "State-pool slots allocated on the device (the pool grows in chunks).",
            registry=r,
        )
        self.slots_max = Gauge(
            "cellserve_slots_max", "State-pool slots the pool may grow to (sessions + running completions).", registry=r
        )
        self.slots_used = Gauge(
            "cellserve_slots_used", "State-pool slots holding a session or a completion.", registry=r
        )
        self.state_bytes = Gauge(
            "cellserve_state_bytes",
            "Bytes of the allocated state-pool tensors (speculation's scratch slots included), the rewind "
            "checkpoints and the session memories.",
            registry=r,
        )
        self.speculation_slots = Gauge(
            "cellserve_speculation_slots",
            "State-pool slots holding speculative guesses now (bounded by speculation_slots per model).",
            registry=r,
        )
        self.running_completions = Gauge(
            "cellserve_running_completions", "Completion alternatives decoding right now.", registry=r
        )
        self._device_memory = device_memory
        self.device_memory = (
            Gauge(
                "cellserve_device_memory_bytes",
                "CUDA memory of this process's device: allocated by tensors, and reserved by the caching allocator.",
                ["kind"],
                registry=r,
            )
            if device_memory is not None
            else None
        )
        self._last: dict[tuple[str, str], int] = {}  # previous cumulative engine counters
        self._request_children: dict[tuple[str, str], Any] = {}  # (method, code) -> counter child
        self._keystroke_children: dict[tuple[str, str], Any] = {}  # (model, kind) -> histogram child
        self._step_children: dict[str, Any] = {}  # engine phase -> step_time child
        self._prime(models)

    def _prime(self, models: Iterable[str]) -> None:
        """Creates the label sets known up front at 0, so rate() and absent() work before the first
        event, and every series the rules and dashboard name exists from the first scrape."""
        for model in models:
            for kind in KEYSTROKE_KINDS:
                self.keystroke_latency.labels(model, kind)
        for phase in PHASES:
            self.step_time.labels(phase)
            self.chars.labels(phase)
        for result in SPECULATION_RESULTS:
            self.speculation_keystrokes.labels(result)
        for reason in SESSION_REASONS:
            self.session_events.labels(reason)

    # --- the Recorder interface (cellserve.api.recorder) ---------------------------------------

    # Called on the loop per request and per keystroke: the children are looked up once per
    # label set and kept (closed sets).

    def request(self, method: str, code: str) -> None:
        child = self._request_children.get((method, code))
        if child is None:
            child = self._request_children[(method, code)] = self.requests.labels(method, code)
        child.inc()

    def malformed(self, method: str) -> None:
        self.malformed_requests.labels(method).inc()

    def keystroke(self, model: str, kind: str, seconds: float) -> None:
        child = self._keystroke_children.get((model, kind))
        if child is None:
            child = self._keystroke_children[(model, kind)] = self.keystroke_latency.labels(model, kind)
        child.observe(seconds)

    # --- the engine feed ------------------------------------------------------------------------

    def observe_iteration(self, st: IterationStats) -> None:
        """One engine iteration's observations (a stats listener: called on the loop)."""
        for secs in st.queue_wait_s:
            self.queue_wait.observe(secs)
        for phase, secs in st.step_time_s:
            child = self._step_children.get(phase)
            if child is None:
                child = self._step_children[phase] = self.step_time.labels(_reason(phase))
            child.observe(secs)
        self.batch_size.observe(st.rows)

    def observe_stats(self, st: EngineStats) -> None:
        """Folds one ``EngineStats`` reading in: gauges set, counter deltas added. Counters never
        go down: a smaller reading adds nothing."""
        self.active_sessions.set(st.active_sessions)
        self.slots_capacity.set(st.slots_capacity)
        self.slots_max.set(st.slots_max)
        self.slots_used.set(st.slots_used)
        self.state_bytes.set(st.state_bytes)
        self.running_completions.set(st.running_completions)
        self._add("iterations", "", st.iterations, self.iterations.inc)
        for phase, n in st.chars_processed.items():
            self._add("chars", phase, n, self.chars.labels(_reason(phase)).inc)
        spec = st.speculation
        for result, key in zip(SPECULATION_RESULTS, ("hits", "misses", "unguessed"), strict=True):
            self._add("speculation", key, spec.get(key, 0), self.speculation_keystrokes.labels(result).inc)
        self._add("speculation", "rows", spec.get("rows", 0), self.speculation_rows.inc)
        self._add("speculation", "wasted_rows", spec.get("wasted_rows", 0), self.speculation_wasted_rows.inc)
        self.speculation_slots.set(spec.get("slots", 0))
        for event, n in st.session_events.items():
            if event == _REJECTED_COMPLETIONS:
                self._add("events", event, n, self.completions_rejected.inc)
            else:
                self._add("events", event, n, self.session_events.labels(_reason(event)).inc)
        if self._device_memory is not None and self.device_memory is not None:
            for kind, nbytes in self._device_memory().items():
                self.device_memory.labels(kind).set(nbytes)

    # --- several core processes (--cores K): core 0 serves the one endpoint ---------------------

    def engine_histograms(self) -> dict[str, HistogramFamily]:
        """The families a core observes per iteration (another core reports them to core 0)."""
        return {f.name: f for f in (self.queue_wait, self.step_time, self.batch_size)}

    def report(self) -> list[tuple[str, list[str], list[float]]]:
        """This process's per-iteration histograms, cumulative (``CoreReport.families``)."""
        return [
            (name, values, totals) for name, f in self.engine_histograms().items() for values, totals in f.snapshot()
        ]

    def merge_report(self, source: int, families: Iterable[tuple[str, list[str], list[float]]]) -> None:
        """Another core's ``report``: from now on its counts are summed into this registry's."""
        known = self.engine_histograms()
        for name, values, totals in families:
            family = known.get(name)
            if family is None:
                raise ValueError(f"not a per-iteration family: {name!r}")
            family.merge(source, values, totals)

    def _add(self, family: str, key: str, total: int, inc: Callable[[float], None]) -> None:
        previous = self._last.get((family, key), 0)
        if total > previous:
            inc(total - previous)
        self._last[(family, key)] = max(total, previous)

    async def poll_engine(self, engine: EngineClient, interval_s: float = POLL_INTERVAL_S) -> None:
        """Runs until cancelled. A failed reading is logged and skipped: metrics must never stop
        serving."""
        while True:
            await self.poll_once(engine)
            await asyncio.sleep(interval_s)

    async def poll_once(self, engine: EngineClient) -> None:
        try:
            self.observe_stats(await engine.stats(""))
        except Exception:
            log.exception("reading engine statistics failed")

    # --- serving --------------------------------------------------------------------------------

    def serve(self, host: str, port: int, max_threads: int = 8) -> MetricsEndpoint:
        """Starts the HTTP endpoint (``/metrics``) in a daemon thread, serving at most
        ``max_threads`` requests at once; port 0 picks a free one. Raises OSError when it
        cannot bind."""
        from .metrics_http import serve_metrics

        httpd, thread = serve_metrics(host, port, self.registry, max_threads)
        return MetricsEndpoint(httpd, thread.name)


class MetricsEndpoint:
    """The running HTTP endpoint; ``port`` is the bound one."""

    def __init__(self, httpd: WSGIServer, thread_name: str) -> None:
        self._httpd = httpd
        self.thread_name = thread_name
        self.port: int = httpd.server_address[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def cuda_memory_reader(device: object) -> Callable[[], dict[str, int]] | None:
    """A reader of the CUDA caching allocator's counters for ``device`` (a torch.device), or None
    off CUDA. The counters are host-side bookkeeping: reading them does not synchronise the GPU."""
    if getattr(device, "type", None) != "cuda":
        return None
    import torch  # only on CUDA; the engine has imported it already

    def read() -> dict[str, int]:
        return {
            "allocated": int(torch.cuda.memory_allocated(device)),  # type: ignore[arg-type]
            "reserved": int(torch.cuda.memory_reserved(device)),  # type: ignore[arg-type]
        }

    return read
