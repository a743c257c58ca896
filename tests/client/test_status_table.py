"""client/README.md's status table is the spec: every gRPC status has one row, each row names
the SDK exception, and each row is provoked here from a real server and must raise exactly
that exception.

Statuses cellserve sends are provoked from a real ``cellserve serve`` (with a tokens file, so
the authentication and quota rows exist). Statuses it never sends (a proxy or another server
might) come from a real gRPC server on loopback that answers every call with that status.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import cellserve_client
import grpc
import pytest
from cellserve.api.status import INTERNAL_MESSAGE
from cellserve.tokens import new_token
from cellserve_client import CellserveError, Client, FailoverPolicy
from cellserve_client._errors import STATUS_CLASSES, from_rpc_error
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from servers import ServerProcess, start_server

from .conftest import KEY_ENV

README = Path(__file__).resolve().parents[2] / "client" / "README.md"
ROW = re.compile(r"^\| `([A-Z_]+)` \| `(\w+)`")
TIMEOUT_S = 20.0


def readme_table() -> dict[str, str]:
    """status name -> the exception class the README's table names first."""
    text = README.read_text()
    start = text.index("<!-- status-table")
    rows = {}
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


TABLE = readme_table()


def test_the_table_covers_every_status_once_and_matches_the_sdk() -> None:
    codes = {c.name for c in grpc.StatusCode if c is not grpc.StatusCode.OK}
    assert set(TABLE) == codes
    for name, cls_name in TABLE.items():
        cls = getattr(cellserve_client, cls_name)
        assert cls_name in cellserve_client.__all__ and issubclass(cls, CellserveError)
        mapped = STATUS_CLASSES.get(grpc.StatusCode[name], cellserve_client.InternalError)
        assert issubclass(mapped, cls), f"{name}: the SDK maps it to {mapped.__name__}, the README to {cls_name}"


# --- a real cellserve server with two tenants; alice may hold one session -------------------


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    raw, stored = {}, {}
    for name in ("alice", "bob"):
        raw[name], stored[name] = new_token()
    entries = [
        {"name": "alice", "tokens": [stored["alice"]], "quota": {"max_sessions": 1}},
        {"name": "bob", "tokens": [stored["bob"]]},
    ]
    path = tmp_path_factory.mktemp("status-table") / "tokens.json"
    path.write_text(json.dumps({"tenants": entries}))
    return path, raw


@pytest.fixture(scope="module")
def auth_server(model_dir: Path, tenants: tuple[Path, dict[str, str]]) -> Iterator[ServerProcess]:
    s = start_server(model_dir, "--auth-tokens-file", str(tenants[0]), env=KEY_ENV)
    try:
        yield s
    finally:
        s.terminate()


def _client(server: ServerProcess, token: str, **kw: Any) -> Client:
    return Client(server.target, token=token, timeout=TIMEOUT_S, **kw)


def _raw_append(server: ServerProcess, token: str, request: svc.AppendRequest) -> CellserveError:
    """A unary Append as a proxy-less caller sends it; the status goes through the SDK's mapping."""
    with grpc.insecure_channel(server.target) as ch:
        call = ch.unary_unary(
            "/cellserve.v1.CellserveService/Append",
            request_serializer=svc.AppendRequest.SerializeToString,
            response_deserializer=svc.AppendResponse.FromString,
        )
        try:
            call(request, metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT_S)
        except grpc.RpcError as err:
            return from_rpc_error(err)
    raise AssertionError("the append succeeded")


def _expect(name: str, action: Callable[[], object]) -> CellserveError:
    cls = getattr(cellserve_client, TABLE[name])
    with pytest.raises(CellserveError) as info:
        action()
    exc = info.value
    assert isinstance(exc, cls), f"{name}: raised {type(exc).__name__}: {exc}"
    assert exc.code == name
    return exc


def test_invalid_argument(auth_server: ServerProcess, tenants: tuple[Path, dict[str, str]]) -> None:
    with _client(auth_server, tenants[1]["bob"]) as c, c.open() as s:
        _expect("INVALID_ARGUMENT", lambda: s.append("x", top_k=100_000))


def test_not_found(auth_server: ServerProcess, tenants: tuple[Path, dict[str, str]]) -> None:
    with _client(auth_server, tenants[1]["bob"]) as c:
        exc = _expect("NOT_FOUND", lambda: c.open("no-such-model"))
        assert isinstance(exc, cellserve_client.ModelNotFound)
    with _client(auth_server, tenants[1]["bob"], failover=None) as c, c.open() as s:
        req = svc.AppendRequest(session_id=s.session_id, offset=0)
        req.input.text = "x"
        exc = _raw_append(auth_server, tenants[1]["alice"], req)  # bob's session, alice asks
        assert isinstance(exc, cellserve_client.SessionNotFound) and exc.code == "NOT_FOUND"


def test_aborted(auth_server: ServerProcess, tenants: tuple[Path, dict[str, str]]) -> None:
    bob = tenants[1]["bob"]
    with _client(auth_server, bob) as c, c.open() as s:
        s.append("abc")
        req = svc.AppendRequest(session_id=s.session_id, offset=1)
        req.input.text = "x"
        exc = _raw_append(auth_server, bob, req)
        assert isinstance(exc, cellserve_client.OffsetConflict) and exc.code == "ABORTED"
        assert exc.expected_offset == 3


def test_failed_precondition(auth_server: ServerProcess, tenants: tuple[Path, dict[str, str]]) -> None:
    with _client(auth_server, tenants[1]["bob"]) as c, c.open() as s:
        for _ in range(5):
            s.append("x" * 100)
        _expect("FAILED_PRECONDITION", lambda: s.rewind(400))


def test_resource_exhausted_is_raised_at_once_with_the_hint(
    auth_server: ServerProcess, tenants: tuple[Path, dict[str, str]]
) -> None:
    """The default policy (failover on) does not retry a quota: one attempt, the server's
    retry hint on the exception."""
    with _client(auth_server, tenants[1]["alice"]) as c, c.open():
        started = time.monotonic()
        exc = _expect("RESOURCE_EXHAUSTED", c.open)
        elapsed = time.monotonic() - started
        assert isinstance(exc, cellserve_client.CapacityExceeded) and exc.retry_after > 0
        assert "max_sessions=1" in str(exc)
        assert elapsed < exc.retry_after, "the SDK waited: it retried against the same quota"


def test_unauthenticated(auth_server: ServerProcess) -> None:
    with _client(auth_server, "not-a-token") as c:
        _expect("UNAUTHENTICATED", c.models)


def test_permission_denied(auth_server: ServerProcess, tenants: tuple[Path, dict[str, str]]) -> None:
    with _client(auth_server, tenants[1]["bob"]) as bob, bob.open() as s:
        s.append("secret")
        blob = s.snapshot()
    with _client(auth_server, tenants[1]["alice"]) as alice:
        _expect("PERMISSION_DENIED", lambda: alice.resume(blob))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unavailable() -> None:
    with Client(f"127.0.0.1:{_free_port()}", failover=None, timeout=TIMEOUT_S) as c:
        _expect("UNAVAILABLE", c.open)


# --- a real gRPC server that answers every call with one status -----------------------------


HANG = "hang"  # the message of a server that answers nothing within the client's timeout


class _Refuse(grpc.GenericRpcHandler):
    def __init__(self, code: grpc.StatusCode | None, message: str) -> None:
        self.code, self.message = code, message

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if self.code is None:
            return None  # no such method: gRPC answers UNIMPLEMENTED itself

        def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
            if self.message == HANG:
                time.sleep(3.0)
            context.abort(self.code, self.message)
            raise AssertionError("abort returned")

        return grpc.unary_unary_rpc_method_handler(refuse)


@pytest.fixture
def refusing() -> Iterator[Callable[[grpc.StatusCode | None, str], str]]:
    servers: list[grpc.Server] = []

    def start(code: grpc.StatusCode | None, message: str) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers((_Refuse(code, message),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(None)


NOT_SENT_BY_CELLSERVE = ["OUT_OF_RANGE", "CANCELLED", "UNKNOWN", "ALREADY_EXISTS", "DATA_LOSS"]


@pytest.mark.parametrize("name", NOT_SENT_BY_CELLSERVE)
def test_statuses_another_server_may_send(name: str, refusing: Callable[[grpc.StatusCode | None, str], str]) -> None:
    target = refusing(grpc.StatusCode[name], f"refused with {name}")
    with Client(target, timeout=TIMEOUT_S) as c:  # default failover: none of these is retried
        exc = _expect(name, c.models)
        assert str(exc) == f"refused with {name}"
        _expect(name, c.open)


def test_internal(refusing: Callable[[grpc.StatusCode | None, str], str]) -> None:
    """cellserve's INTERNAL carries one fixed message; that is the server bug of the table."""
    with Client(refusing(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE), timeout=TIMEOUT_S) as c:
        _expect("INTERNAL", c.models)


def test_deadline_exceeded(refusing: Callable[[grpc.StatusCode | None, str], str]) -> None:
    with Client(refusing(grpc.StatusCode.UNAVAILABLE, HANG), timeout=0.5) as c:
        _expect("DEADLINE_EXCEEDED", c.models)


def test_unimplemented(refusing: Callable[[grpc.StatusCode | None, str], str]) -> None:
    with Client(refusing(None, ""), timeout=TIMEOUT_S) as c:
        _expect("UNIMPLEMENTED", c.open)


def test_failover_none_makes_one_attempt(refusing: Callable[[grpc.StatusCode | None, str], str]) -> None:
    """``failover=None`` turns retries off: UNAVAILABLE is raised as it came, not FailoverFailed."""
    target = refusing(grpc.StatusCode.UNAVAILABLE, "draining")
    with Client(target, failover=None, timeout=TIMEOUT_S) as c:
        exc = _expect("UNAVAILABLE", c.open)
        assert not isinstance(exc, cellserve_client.FailoverFailed)
    policy = FailoverPolicy(max_attempts=3, backoff_initial_s=0.01)
    with Client(target, failover=policy, timeout=TIMEOUT_S) as c:
        with pytest.raises(cellserve_client.FailoverFailed) as info:
            c.open()
        assert "after 3 attempts" in str(info.value) and isinstance(info.value.__cause__, cellserve_client.Unavailable)
