"""docs/tls.md, followed as a reader would: its openssl commands in an empty folder, its serve
command, its Python snippet and CLI command, and each symptom of its table, against a real
server on loopback."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cellserve_client import Client, Unavailable
from servers import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[1]
HOWTO = (ROOT / "docs" / "tls.md").read_text()
TIMEOUT_S = 20.0


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", HOWTO, flags=re.S)


def _symptoms() -> list[str]:
    """The first column of the symptoms table: what the client sees."""
    table = HOWTO[HOWTO.index("## Symptoms of a mismatch") :]
    return re.findall(r"^\| `([^`]+)`", table, flags=re.M)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (docs/tls.md: tests/security/pki.py does the same with cryptography)")
    d = tmp_path_factory.mktemp("tls-howto")
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", _blocks("bash")[0]], cwd=d, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return d


@pytest.fixture(scope="module")
def servers(model_dir: Path, certs: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """The how-to's TLS server, and a plaintext one for the last mismatch."""
    serve = shlex.split(_blocks("bash")[1].strip())
    assert serve[:2] == ["cellserve", "serve"]
    args = [str(certs / a) if (certs / a).is_file() else a for a in serve[2:]]
    tls = start_server(model_dir, *args)
    plain = start_server(model_dir)
    try:
        yield tls, plain
    finally:
        tls.terminate()
        plain.terminate()


def _localhost(target: str) -> str:
    return "localhost:" + target.rsplit(":", 1)[1]  # the name in the server certificate


def test_the_howto_is_whole() -> None:
    assert len(_blocks("bash")) == 3 and len(_blocks("python")) == 1 and len(_symptoms()) == 3


def test_the_server_says_it_serves_mtls(servers: tuple[ServerProcess, ServerProcess]) -> None:
    assert any("grpc transport: TLS with client certificates" in line for line in servers[0].stderr_lines)


def test_the_python_snippet_connects(servers: tuple[ServerProcess, ServerProcess], certs: Path) -> None:
    code = _blocks("python")[0].replace('"localhost:50051"', repr(_localhost(servers[0].target)))
    env = {k: v for k, v in os.environ.items() if k != "CELLSERVE_TOKEN"}
    run = subprocess.run([sys.executable, "-c", code], cwd=certs, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("((")  # the top three next characters and their probabilities


def test_the_cli_command_connects(servers: tuple[ServerProcess, ServerProcess], certs: Path) -> None:
    argv = shlex.split(_blocks("bash")[2].strip().replace("localhost:50051", _localhost(servers[0].target)))
    assert argv[0] == "cellserve-client"
    env = {k: v for k, v in os.environ.items() if k != "CELLSERVE_TOKEN"}
    cmd = [sys.executable, "-m", "cellserve_client._cli", *argv[1:]]
    run = subprocess.run(cmd, cwd=certs, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "tiny-lstm (default)" in run.stdout


def _refusal(target: str, certs: Path, **kw: object) -> str:
    with Client(target, failover=None, timeout=TIMEOUT_S, **kw) as c:  # type: ignore[arg-type]
        with pytest.raises(Unavailable) as info:
            c.models()
    return str(info.value)


def test_each_symptom_is_what_the_client_sees(servers: tuple[ServerProcess, ServerProcess], certs: Path) -> None:
    closed, plaintext, untrusted = _symptoms()
    tls, plain = (_localhost(s.target) for s in servers)
    assert closed in _refusal(tls, certs)  # plaintext client, TLS port
    assert closed in _refusal(tls, certs, tls=str(certs / "ca.pem"))  # no client certificate, mTLS port
    assert plaintext in _refusal(plain, certs, tls=str(certs / "ca.pem"))
    assert untrusted in _refusal(tls, certs, tls=str(certs / "team-a.crt"))  # not the CA that signed the server
