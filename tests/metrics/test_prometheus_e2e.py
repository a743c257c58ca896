"""End to end: a real Prometheus (started here on 127.0.0.1, scraping every second, with our
recording rules loaded) scrapes a real server during a short load; PromQL sees the latency
quantile and counters equal to exactly the requests this test made."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types
from servers import ServerProcess, start_server

from . import names

READY_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 30.0  # engine poll (0.5 s) + scrape (1 s) + rule evaluation (1 s), with slack
P99 = "histogram_quantile(0.99, sum by (le) (rate(cellserve_keystroke_latency_seconds_bucket[1m])))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML; the rule files are the ones operators deploy
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(p) for p in names.RULES],
                    "scrape_configs": [{"job_name": "cellserve", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.url = f"http://127.0.0.1:{_free_port()}"  # a small race with other binders: acceptable in tests
        self.log_path = workdir / "prometheus.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            body: bytes = response.read()
        return body

    def query(self, promql: str) -> list[dict[str, object]]:
        answer = json.loads(self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert answer["status"] == "success", answer
        result: list[dict[str, object]] = answer["data"]["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None  # type: ignore[index]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self.log.close()


def wait_for(
    what: str, check: Callable[[], bool], timeout: float = CONVERGE_TIMEOUT_S, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}" + (f"\nprometheus log:\n{log.read_text()[-4000:]}" if log else ""))


@pytest.fixture(scope="module")
def e2e_server(model_dir: Path) -> Iterator[ServerProcess]:
    """A server of this test's own, so its counters hold only this test's requests."""
    s = start_server(model_dir)
    try:
        yield s
    finally:
        s.terminate()


@pytest.fixture(scope="module")
def prometheus(
    prometheus_bin: str, e2e_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    prom = Prometheus(prometheus_bin, tmp_path_factory.mktemp("prometheus"), e2e_server.metrics_target)
    try:
        wait_for(
            "prometheus ready", lambda: prom.get("/-/ready").startswith(b"Prometheus"), READY_TIMEOUT_S, prom.log_path
        )
        wait_for(
            "the server scraped", lambda: prom.scalar('up{job="cellserve"}') == 1.0, READY_TIMEOUT_S, prom.log_path
        )
        yield prom
    finally:
        prom.stop()


def _load(target: str) -> dict[str, int]:
    """A short bounded load; returns what it did, by the series it must show up in."""
    n_sessions, typed = 3, "hello world"  # each session types this one keystroke at a time
    pasted = "a pasted piece"
    counts = {"Append OK": 0, "Append ABORTED": 0, "single": 0, "multi": 0, "stream appends": 0, "chars": 0}
    with grpc.insecure_channel(target) as channel:
        stub = rpc.CellserveServiceStub(channel)
        for _ in range(n_sessions):
            sid = stub.OpenSession(svc.OpenSessionRequest()).session.session_id
            for i, ch in enumerate(typed):
                stub.Append(svc.AppendRequest(session_id=sid, offset=i, input=types.Input(text=ch)))
                time.sleep(0.05)  # spread over a few scrapes, so rate() has points to work with
            stub.Append(svc.AppendRequest(session_id=sid, offset=len(typed), input=types.Input(text=pasted)))
            counts["Append OK"] += len(typed) + 1
            counts["single"] += len(typed)
            counts["multi"] += 1
            counts["chars"] += len(typed) + len(pasted)
            with pytest.raises(grpc.RpcError) as err:  # a gap: ABORTED, counted with its code
                stub.Append(svc.AppendRequest(session_id=sid, offset=999, input=types.Input(text="x")))
            assert err.value.code() == grpc.StatusCode.ABORTED
            counts["Append ABORTED"] += 1

        def stream() -> Iterator[svc.SessionRequest]:
            yield svc.SessionRequest(request_id=1, open=svc.SessionRequest.Open())
            for i, ch in enumerate("stream"):
                yield svc.SessionRequest(
                    request_id=2 + i, append=svc.SessionRequest.Append(offset=i, input=types.Input(text=ch))
                )

        responses = list(stub.Session(stream()))
        assert len(responses) == 1 + len("stream") and all(r.WhichOneof("result") != "error" for r in responses)
        counts["stream appends"] = len("stream")
        counts["single"] += len("stream")
        counts["chars"] += len("stream")
        counts["sessions"] = n_sessions + 1
    return counts


def test_prometheus_scrapes_latency_and_exact_counters(prometheus: Prometheus, e2e_server: ServerProcess) -> None:
    done = _load(e2e_server.target)
    expected = {
        'sum(cellserve_requests_total{method="Append", code="OK"})': done["Append OK"],
        'sum(cellserve_requests_total{method="Append", code="ABORTED"})': done["Append ABORTED"],
        'sum(cellserve_requests_total{method="OpenSession"})': done["sessions"] - 1,
        'sum(cellserve_requests_total{method="Session.append", code="OK"})': done["stream appends"],
        'sum(cellserve_requests_total{method="Session", code="OK"})': 1,
        'sum(cellserve_keystroke_latency_seconds_count{kind="append_single"})': done["single"],
        'sum(cellserve_keystroke_latency_seconds_count{kind="append_multi"})': done["multi"],
        'sum(cellserve_session_events_total{reason="opened"})': done["sessions"],
        'sum(cellserve_chars_processed_total{phase=~"step|prefill"})': done["chars"],
        "sum(cellserve_active_sessions)": done["sessions"],
    }
    seen: dict[str, float | None] = {}

    def converged() -> bool:
        seen.update({q: prometheus.scalar(q) for q in expected})
        return all(seen[q] == float(v) for q, v in expected.items())

    wait_for(f"counters to equal the requests made: {expected} (last seen {seen})", converged)

    def p99_is_a_number() -> bool:
        value = prometheus.scalar(P99)
        return value is not None and math.isfinite(value)

    wait_for("a p99 keystroke latency", p99_is_a_number)
    p99 = prometheus.scalar(P99)
    assert p99 is not None and 0 < p99 <= 5.0, p99  # within the buckets (50 µs .. 5 s)
    # The recording rules, loaded from deploy/prometheus, turn the same data into series.
    wait_for(
        "the recorded per-instance p99",
        lambda: (
            prometheus.scalar('instance_kind:cellserve_keystroke_latency_seconds:p99_rate1m{kind="append_single"}')
            is not None
        ),
    )
    assert prometheus.scalar("instance:cellserve_capacity_used:ratio") is not None
