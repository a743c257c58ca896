"""Safe defaults: loopback without auth, refusing exposure without auth, bad security files
stop the start, gRPC connection options come from Settings, and the metrics endpoint has a
bounded thread count."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cellserve.api.transport import server_options
from cellserve.config import Settings
from pydantic import ValidationError
from servers import ServerProcess

SERVE = [sys.executable, "-m", "cellserve.cli", "serve"]


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLSERVE_")}
    return subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=120, env=env)


def test_defaults_are_loopback() -> None:
    s = Settings()
    assert s.host == "127.0.0.1" and s.metrics_host == "127.0.0.1" and not s.auth_enabled


@pytest.mark.parametrize("flag", ["--host", "--metrics-host"])
@pytest.mark.parametrize("address", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_exposed_without_auth_refuses_to_start(flag: str, address: str) -> None:
    out = _serve(flag, address, "--port", "0", "--metrics-port", "0")
    assert out.returncode == 2
    assert "without authentication" in out.stderr and "--insecure-no-auth" in out.stderr


def test_insecure_no_auth_starts_with_a_warning(tmp_path: Path) -> None:
    # A model folder that does not exist: the start stops after the warning, before binding.
    out = _serve("--host", "0.0.0.0", "--insecure-no-auth", "--model-dir", str(tmp_path / "none"), "--port", "0")
    assert "WITHOUT authentication" in out.stderr


def test_settings_rules(tmp_path: Path) -> None:
    tokens = tmp_path / "t.yaml"
    assert Settings(host="0.0.0.0", auth_tokens_file=tokens).host == "0.0.0.0"
    assert Settings(host="::1").host == "::1"
    assert Settings(host="0.0.0.0", insecure_no_auth=True).insecure_no_auth
    with pytest.raises(ValidationError, match="tls_cert and tls_key"):
        Settings(tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValidationError, match="needs tls_cert"):
        Settings(tls_client_ca=tmp_path / "ca.pem")


def test_bad_tokens_file_stops_the_start(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "tokens.yaml"
    bad.write_text("tenants:\n  - name: alice\n    tokens: [cs_plaintext_token]\n")
    out = _serve("--model-dir", str(model_dir), "--port", "0", "--metrics-port", "0", "--auth-tokens-file", str(bad))
    assert out.returncode == 2
    assert "tokens.yaml" in out.stderr and "sha256:" in out.stderr and "cs_plaintext_token" not in out.stderr


def test_grpc_options_come_from_settings() -> None:
    opts = dict(server_options(Settings(max_connection_age_s=300, keepalive_min_ping_interval_s=7)))
    assert opts["grpc.max_connection_age_ms"] == 300_000
    assert opts["grpc.max_connection_age_grace_ms"] == 30_000
    assert opts["grpc.http2.min_recv_ping_interval_without_data_ms"] == 7_000
    assert opts["grpc.max_concurrent_streams"] == 256 and opts["grpc.max_metadata_size"] == 16_384
    assert opts["grpc.absolute_max_metadata_size"] == 16_384
    assert "grpc.max_connection_age_ms" not in dict(server_options(Settings()))


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _tree_threads(pid: int) -> int:
    """Threads of ``pid`` and its descendants: with frontends, the metrics endpoint is the
    engine core's, a child of the supervisor."""
    total = _threads(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += _tree_threads(int(child))
    return total


def test_metrics_threads_are_bounded(auth_server: ServerProcess) -> None:
    host, port = auth_server.metrics_target.rsplit(":", 1)
    before = _tree_threads(auth_server.pid)
    socks = []
    try:
        for _ in range(40):  # half-sent requests: a request line and no end of headers
            try:
                s = socket.create_connection((host, int(port)), timeout=2)
            except TimeoutError:  # the listen backlog is full: the server stopped accepting
                break
            socks.append(s)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        peak = before
        for _ in range(20):  # bounded look while the server takes the connections in
            peak = max(peak, _tree_threads(auth_server.pid))
            time.sleep(0.05)
        assert len(socks) > 8 and peak > before  # it did serve some of them ...
        assert peak <= before + 8  # ... but never more than metrics_max_threads at once
    finally:
        for s in socks:
            s.close()
    with urllib.request.urlopen(f"http://{auth_server.metrics_target}/metrics", timeout=60) as r:
        assert b"cellserve_requests_total" in r.read()
