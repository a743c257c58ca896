"""Fixtures for the metrics tests: a real server (JSON debug logs, metrics on a free port) and
the Prometheus tools, which the tests skip without (CI installs Debian's prometheus package)."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from prometheus_client.parser import text_string_to_metric_families
from servers import ServerProcess, start_server


def scrape(metrics_target: str) -> str:
    """The server's /metrics exposition (text format)."""
    with urllib.request.urlopen(f"http://{metrics_target}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """The value of one sample of an exposition, or None when it is absent."""
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def scrape_until(metrics_target: str, ready: Callable[[str], bool], timeout_s: float = 30.0) -> str:
    """Scrapes until ``ready(exposition)`` holds (the engine's counters reach the metrics on a
    poll): waits for the event, never a fixed sleep. Returns that exposition."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = scrape(metrics_target)
        if ready(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package: prometheus)")
    return path


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus not installed (Debian package: prometheus)")
    return path


@pytest.fixture(
    scope="module",
    params=[("0",), ("2",), ("2", "--cores", "2")],
    ids=["one-process", "two-frontends", "two-cores"],
)
def server(model_dir: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """One server for a module's tests, logging JSON at debug level (user text stays out); once
    as one process and once as a core behind two frontends (one /metrics endpoint for all)."""
    s = start_server(model_dir, "--log-json", "--log-level", "debug", "--frontends", *request.param)
    try:
        yield s
    finally:
        s.terminate()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[rpc.CellserveServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield rpc.CellserveServiceStub(channel)
