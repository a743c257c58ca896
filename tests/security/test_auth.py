"""Authentication: tokens, the tenant as session owner, reload without restart, probes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from cellserve.tokens import new_token
from cellserve_client import Client, Unauthenticated
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import ServerProcess

from .conftest import Tokens, _entries
from .wire import bearer, rpc_error, stub

RELOAD_TRIES = 100  # x 0.1 s: the server checks the file at most once a second


@pytest.fixture
def channel(auth_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(auth_server.target) as ch:
        yield ch


def test_no_token_is_unauthenticated_before_any_lookup(channel: grpc.Channel) -> None:
    s = stub(channel)
    err = rpc_error(s.GetSession, svc.GetSessionRequest(session_id="0" * 32))  # would be NOT_FOUND
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in (err.details() or "")
    err = rpc_error(s.ListModels, svc.ListModelsRequest())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("header", ["Bearer nope", "Basic YWxpY2U6eA==", "Bearer ", "cs_only_the_token"])
def test_unknown_token_or_scheme_is_unauthenticated(channel: grpc.Channel, header: str) -> None:
    err = rpc_error(stub(channel).OpenSession, svc.OpenSessionRequest(), metadata=[("authorization", header)])
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "nope" not in (err.details() or "")  # the presented value is never echoed


def test_stream_without_token_is_unauthenticated(channel: grpc.Channel) -> None:
    call = stub(channel).Session(iter([svc.SessionRequest(request_id=1, open=svc.SessionRequest.Open())]))
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_health_needs_no_token(channel: grpc.Channel) -> None:
    """Kubernetes probes carry no credentials."""
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_sessions_belong_to_the_tenant(auth_server: ServerProcess, channel: grpc.Channel, tokens: Tokens) -> None:
    with Client(auth_server.target, token=tokens.tokens["alice"]) as alice:
        with alice.open() as session:
            session.append("abc")
            sid = session.session_id
            s = stub(channel)
            mine = s.GetSession(svc.GetSessionRequest(session_id=sid), metadata=bearer(tokens.tokens["alice"]))
            assert mine.session.position == 3
            foreign = rpc_error(
                s.GetSession, svc.GetSessionRequest(session_id=sid), metadata=bearer(tokens.tokens["dave"])
            )
            missing = rpc_error(
                s.GetSession, svc.GetSessionRequest(session_id="f" * 32), metadata=bearer(tokens.tokens["dave"])
            )
            # Another tenant's session is exactly a nonexistent one: same code, same message.
            assert foreign.code() == missing.code() == grpc.StatusCode.NOT_FOUND
            assert foreign.details() == missing.details()
            err = rpc_error(
                s.Append,
                svc.AppendRequest(session_id=sid, offset=3, input={"text": "x"}),
                metadata=bearer(tokens.tokens["dave"]),
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND
            assert session.append("d").position == 4  # nothing of dave's attempt landed


def test_sdk_token_from_environment(
    auth_server: ServerProcess, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELLSERVE_TOKEN", tokens.tokens["alice"])
    with Client(auth_server.target) as client:
        assert client.models()
    monkeypatch.delenv("CELLSERVE_TOKEN")
    with Client(auth_server.target) as client, pytest.raises(Unauthenticated):
        client.models()


def test_sdk_cli_token(auth_server: ServerProcess, tokens: Tokens) -> None:
    base = [sys.executable, "-m", "cellserve_client._cli", "--target", auth_server.target]
    env = {k: v for k, v in os.environ.items() if k != "CELLSERVE_TOKEN"}
    ok = subprocess.run(
        [*base, "--token", tokens.tokens["alice"], "models"], capture_output=True, text=True, env=env, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert "tiny-lstm" in ok.stdout
    refused = subprocess.run([*base, "models"], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1 and "Unauthenticated" in refused.stderr


def _wait_until(check: object) -> bool:
    import time

    for _ in range(RELOAD_TRIES):
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def _accepted(target: str, token: str) -> bool:
    with grpc.insecure_channel(target) as ch:
        try:
            stub(ch).ListModels(svc.ListModelsRequest(), metadata=bearer(token), timeout=30)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED
            return False
        return True


def test_tokens_file_reload_on_change_and_sighup(auth_server: ServerProcess, tokens: Tokens) -> None:
    stored = tokens.stored  # type: ignore[attr-defined]
    fresh, fresh_hash = new_token()
    try:
        # Added on the fly: accepted without a restart (file watch).
        tokens.write([*_entries(stored), {"name": "erin", "tokens": [fresh_hash]}])
        assert _wait_until(lambda: _accepted(auth_server.target, fresh))
        # Revoked: alice's token is refused from then on.
        tokens.write([e for e in _entries(stored) if e["name"] != "alice"] + [{"name": "erin", "tokens": [fresh_hash]}])
        assert _wait_until(lambda: not _accepted(auth_server.target, tokens.tokens["alice"]))
        # A broken file is refused; the tenants in force stay (erin still works, alice still not).
        tokens.path.write_text("tenants: [ {name: ")
        os.kill(auth_server.pid, signal.SIGHUP)
        assert _wait_until(lambda: any("not reloaded" in line for line in auth_server.stderr_lines))
        assert _accepted(auth_server.target, fresh)
        assert not _accepted(auth_server.target, tokens.tokens["alice"])
        # SIGHUP with a good file: in force at once.
        tokens.path.write_text(json.dumps({"tenants": _entries(stored)}))
        os.kill(auth_server.pid, signal.SIGHUP)
        assert _wait_until(lambda: _accepted(auth_server.target, tokens.tokens["alice"]))
        assert _wait_until(lambda: not _accepted(auth_server.target, fresh))
        assert auth_server.proc.poll() is None  # never restarted
    finally:
        tokens.write(_entries(stored))
    assert _wait_until(lambda: _accepted(auth_server.target, tokens.tokens["alice"]))


def test_token_new_cli_prints_a_usable_entry() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cellserve.cli", "token", "new", "team-a"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.split("shown only once): ", 1)[1].split()[0]
    stored = next(line.split("- ", 1)[1] for line in out.stdout.splitlines() if "sha256:" in line)
    import hashlib

    assert stored == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    bad = subprocess.run(
        [sys.executable, "-m", "cellserve.cli", "token", "new", "no spaces"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0 and "not a valid tenant name" in bad.stderr


def test_reflection_needs_a_token(channel: grpc.Channel, tokens: Tokens) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    s = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
    answer = next(s.ServerReflectionInfo(iter(ask), metadata=bearer(tokens.tokens["alice"]), timeout=30))
    assert "cellserve.v1.CellserveService" in {x.name for x in answer.list_services_response.service}
    with pytest.raises(grpc.RpcError) as info:
        next(s.ServerReflectionInfo(iter(ask), timeout=30))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
