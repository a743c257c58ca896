"""TLS and mTLS against a real server with a throwaway PKI (``pki.py``)."""

from __future__ import annotations

import grpc
import pytest
from cellserve_client import CapacityExceeded, Client, FailoverPolicy, Unavailable
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from servers import ServerProcess

from .conftest import BOB_QUOTA, Pki, Tokens
from .wire import bearer, rpc_error, stub

TIMEOUT_S = 15.0


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server: ServerProcess, tokens: Tokens) -> None:
    with Client(tls_server.target, token=tokens.tokens["alice"], timeout=TIMEOUT_S) as client:
        with pytest.raises(Unavailable):
            client.models()


def test_tls_client_without_a_certificate_is_refused_by_mtls(
    tls_server: ServerProcess, pki: Pki, tokens: Tokens
) -> None:
    with Client(tls_server.target, tls=pki.ca, token=tokens.tokens["alice"], timeout=TIMEOUT_S) as client:
        with pytest.raises(Unavailable):  # the handshake fails: no call is made at all
            client.models()


def test_certificate_from_an_untrusted_ca_is_refused(tls_server: ServerProcess, pki: Pki) -> None:
    kw = {"client_cert": pki.stranger.cert, "client_key": pki.stranger.key}
    with Client(tls_server.target, tls=pki.ca, timeout=TIMEOUT_S, **kw) as client:  # type: ignore[arg-type]
        with pytest.raises(Unavailable):
            client.models()


def test_client_certificate_names_the_tenant(tls_server: ServerProcess, pki: Pki, tokens: Tokens) -> None:
    """CN=carol (no token) is tenant carol; a token on the same connection wins over the
    certificate, so alice's token sees alice's sessions and not carol's."""
    carol = {"client_cert": pki.carol.cert, "client_key": pki.carol.key}
    with Client(tls_server.target, tls=pki.ca, timeout=TIMEOUT_S, **carol) as c:  # type: ignore[arg-type]
        with c.open() as session:
            assert session.append("hello").position == 5
            sid = session.session_id
            creds = grpc.ssl_channel_credentials(
                pki.ca.read_bytes(), pki.carol.key.read_bytes(), pki.carol.cert.read_bytes()
            )
            with grpc.secure_channel(tls_server.target, creds) as ch:
                s = stub(ch)
                assert s.GetSession(svc.GetSessionRequest(session_id=sid), timeout=30).session.position == 5
                err = rpc_error(
                    s.GetSession, svc.GetSessionRequest(session_id=sid), metadata=bearer(tokens.tokens["alice"])
                )
                assert err.code() == grpc.StatusCode.NOT_FOUND
                err = rpc_error(s.GetSession, svc.GetSessionRequest(session_id=sid), metadata=bearer("wrong"))
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED  # a bad token is never ignored


def test_certificate_tenant_gets_its_quota_from_the_tokens_file(tls_server: ServerProcess, pki: Pki) -> None:
    bob = {"client_cert": pki.bob.cert, "client_key": pki.bob.key}
    no_retry = FailoverPolicy(enabled=False)
    with Client(tls_server.target, tls=pki.ca, timeout=TIMEOUT_S, failover=no_retry, transport="unary", **bob) as c:  # type: ignore[arg-type]
        sessions = [c.open() for _ in range(BOB_QUOTA["max_sessions"])]
        with pytest.raises(CapacityExceeded) as info:
            c.open()
        assert "max_sessions=3" in str(info.value) and info.value.retry_after > 0
        for s in sessions:
            s.close()


def test_sdk_cli_with_tls_and_a_client_certificate(tls_server: ServerProcess, pki: Pki) -> None:
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cellserve_client._cli", "--target", tls_server.target, "--tls-ca", str(pki.ca)]
    env = {k: v for k, v in os.environ.items() if k != "CELLSERVE_TOKEN"}
    ok = subprocess.run(
        [*cmd, "--tls-cert", str(pki.carol.cert), "--tls-key", str(pki.carol.key), "predict", "de"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    half = subprocess.run(
        [*cmd, "--tls-cert", str(pki.carol.cert), "models"], capture_output=True, text=True, env=env, timeout=60
    )
    assert half.returncode == 2 and "client_cert and client_key go together" in half.stderr
