"""Fixtures for the metrics tests: a real server (JSON debug logs, metrics on a free port) and
the Prometheus tools, which the tests skip without (CI installs Debian's prometheus package)."""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from servers import ServerProcess, start_server


def scrape(metrics_target: str) -> str:
    """The server's /metrics exposition (text format)."""
    with urllib.request.urlopen(f"http://{metrics_target}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


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


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ServerProcess]:
    """One server for a module's tests, logging JSON at debug level (user text stays out)."""
    s = start_server(model_dir, "--log-json", "--log-level", "debug")
    try:
        yield s
    finally:
        s.terminate()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[rpc.CellserveServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield rpc.CellserveServiceStub(channel)
