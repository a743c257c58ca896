"""Security test fixtures: a tokens file with three tenants, an authenticated server, a
TLS + mTLS server with a throwaway PKI, all real ``cellserve serve`` processes on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cellserve.tokens import new_token
from servers import SNAPSHOT_KEY, ServerProcess, start_server

from .pki import CA, Pair

KEY_ENV = {"CELLSERVE_SNAPSHOT_KEY": SNAPSHOT_KEY}
SNAPSHOT_TTL_S = 4  # short, so the expiry row waits seconds, not a day
# bob (and fay) are the tenants with small quotas; alice and carol keep the defaults.
BOB_QUOTA = {"max_sessions": 3, "max_streams": 2, "max_completions": 2, "chars_per_s": 50, "chars_burst": 4096}


@dataclass
class Tokens:
    path: Path
    tokens: dict[str, str]  # tenant -> its token

    def write(self, entries: list[dict[str, object]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"tenants": entries}))
        tmp.replace(self.path)  # atomic, as an operator's editor or a Secret update would


def _entries(tokens: dict[str, str]) -> list[dict[str, object]]:
    return [
        {"name": "alice", "tokens": [tokens["alice"]]},
        {"name": "bob", "tokens": [tokens["bob"]], "quota": BOB_QUOTA},
        {"name": "dave", "tokens": [tokens["dave"]]},
        # bob's quotas, a bucket of its own: buckets are exact over every path, so a test that
        # empties one would slow the next test of the same tenant by a minute (4000 chars at 50/s)
        {"name": "fay", "tokens": [tokens["fay"]], "quota": BOB_QUOTA},
    ]


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    d = tmp_path_factory.mktemp("auth")
    raw, stored = {}, {}
    for name in ("alice", "bob", "dave", "fay"):
        raw[name], stored[name] = new_token()
    t = Tokens(d / "tokens.json", raw)
    t.write(_entries(stored))
    t.stored = stored  # type: ignore[attr-defined]
    return t


# Authentication, quotas and tenant-bound snapshots hold in one process and through frontends
# (the interceptor runs in each frontend; the owner travels with every op to the core).
SHAPES: dict[str, tuple[str, ...]] = {
    "one-process": ("--frontends", "0"),
    "two-frontends": ("--frontends", "2"),
    "two-cores": ("--frontends", "2", "--cores", "2"),  # sessions partitioned between two cores
}


@pytest.fixture(scope="session", params=list(SHAPES), ids=list(SHAPES))
def auth_server(model_dir: Path, tokens: Tokens, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        *SHAPES[request.param],
        "--auth-tokens-file",
        str(tokens.path),
        "--snapshot-ttl",
        str(SNAPSHOT_TTL_S),
        "--set",
        "malformed_log_interval_s=3600",
        env=KEY_ENV,
    )
    try:
        yield s
    finally:
        s.terminate()


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Pair
    carol: Pair  # CN=carol, signed by the trusted CA
    bob: Pair  # CN=bob: a tenant of the tokens file, so bob's quota applies
    stranger: Pair  # CN=mallory, signed by a CA the server does not trust


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = CA(d, "test-ca"), CA(d, "other-ca")
    return Pki(
        ca.pem,
        ca.server("server"),
        ca.client("carol", "carol"),
        ca.client("bob", "bob"),
        other.client("mallory", "mallory"),
    )


@pytest.fixture(scope="session")
def tls_server(model_dir: Path, tokens: Tokens, pki: Pki) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        "--auth-tokens-file",
        str(tokens.path),
        "--tls-cert",
        str(pki.server.cert),
        "--tls-key",
        str(pki.server.key),
        "--tls-client-ca",
        str(pki.ca),
        env=KEY_ENV,
    )
    try:
        yield s
    finally:
        s.terminate()
