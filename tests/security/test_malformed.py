"""Malformed input: undecodable bytes and invalid UTF-8 are INVALID_ARGUMENT with a plain
message, in-band on a stream (which goes on), counted, and logged at most once per interval."""

from __future__ import annotations

import math
import queue
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from servers import ServerProcess

from .conftest import Tokens
from .wire import bearer, invalid_utf8, no_library_names, raw_stream, raw_unary, rpc_error, stub

GARBAGE = [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x08" + b"\xff" * 11, b"\x12\x80"]


@pytest.fixture
def channel(auth_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(auth_server.target) as ch:
        yield ch


def _malformed_count(server: ServerProcess) -> float:
    with urllib.request.urlopen(f"http://{server.metrics_target}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(float(m) for m in re.findall(r"^cellserve_malformed_requests_total\{[^}]*\} (\S+)$", text, re.M))


@pytest.mark.parametrize("method", ["OpenSession", "Append", "Resume", "GetSession"])
def test_undecodable_unary_is_invalid_argument(channel: grpc.Channel, tokens: Tokens, method: str) -> None:
    for payload in GARBAGE:
        err = rpc_error(raw_unary, channel, method, payload, bearer(tokens.tokens["alice"]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, payload, err.details())
        assert "could not be decoded" in (err.details() or "")
        assert no_library_names(err.details() or "")


def test_invalid_utf8_is_invalid_argument_and_loses_nothing(channel: grpc.Channel, tokens: Tokens) -> None:
    md = bearer(tokens.tokens["alice"])
    s = stub(channel)
    sid = s.OpenSession(svc.OpenSessionRequest(), metadata=md).session.session_id
    s.Append(svc.AppendRequest(session_id=sid, offset=0, input={"text": "ab"}), metadata=md)
    bad = invalid_utf8(svc.AppendRequest(session_id=sid, offset=2, input={"text": "ZZZZ"}))
    err = rpc_error(raw_unary, channel, "Append", bad, md)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in (err.details() or "")
    assert no_library_names(err.details() or "")
    assert s.GetSession(svc.GetSessionRequest(session_id=sid), metadata=md).session.position == 2


def test_bad_message_on_a_stream_is_answered_in_band_and_the_stream_goes_on(
    auth_server: ServerProcess, channel: grpc.Channel, tokens: Tokens
) -> None:
    before = _malformed_count(auth_server)
    requests: queue.Queue[bytes | None] = queue.Queue()
    responses = raw_stream(channel, iter(requests.get, None), bearer(tokens.tokens["alice"]))

    def ask(payload: bytes) -> svc.SessionResponse:
        requests.put(payload)
        return next(responses)

    def req(rid: int, **op: object) -> bytes:
        return svc.SessionRequest(request_id=rid, **op).SerializeToString()  # type: ignore[arg-type]

    try:
        first = ask(req(1, append={"offset": 0, "input": {"text": "a"}}))  # append before open
        assert first.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "open or attach" in first.error.message
        assert ask(req(2, open={})).WhichOneof("result") == "opened"
        assert ask(req(3, append={"offset": 0, "input": {"text": "abc"}})).prediction.position == 3
        for payload in [
            *GARBAGE,
            invalid_utf8(svc.SessionRequest(request_id=9, append={"offset": 3, "input": {"text": "ZZZZ"}})),
        ]:
            r = ask(payload)
            assert r.WhichOneof("result") == "error"
            assert r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "could not be decoded" in r.error.message and no_library_names(r.error.message)
        # Nothing was applied, and the stream still works.
        assert ask(req(10, append={"offset": 3, "input": {"text": "d"}})).prediction.position == 4
    finally:
        requests.put(None)
        responses.cancel()  # type: ignore[attr-defined]
    assert _malformed_count(auth_server) >= before + len(GARBAGE) + 1


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def test_malformed_requests_are_logged_once_per_interval_without_tracebacks(
    auth_server: ServerProcess, channel: grpc.Channel, tokens: Tokens
) -> None:
    for _ in range(50):  # warm-up: gRPC's own buffers settle
        rpc_error(raw_unary, channel, "Append", GARBAGE[0], bearer(tokens.tokens["alice"]))
    rss = _rss_mib(auth_server.pid)
    for i in range(1000):
        rpc_error(raw_unary, channel, "Append", GARBAGE[i % len(GARBAGE)], bearer(tokens.tokens["alice"]))
    assert _rss_mib(auth_server.pid) - rss < 32  # a flood keeps nothing per request
    lines = auth_server.stderr_lines
    assert sum("undecodable request" in line for line in lines) == 1  # interval: 3600 s
    assert not any("Traceback" in line for line in lines)


def _complete(s: object, md: list[tuple[str, str]], temperature: float) -> str:
    sid = s.OpenSession(svc.OpenSessionRequest(), metadata=md).session.session_id  # type: ignore[attr-defined]
    s.Append(svc.AppendRequest(session_id=sid, offset=0, input={"text": "def "}), metadata=md)  # type: ignore[attr-defined]
    req = svc.CompleteRequest(session_id=sid, max_chars=24, temperature=temperature, seed=7)
    return "".join(r.chunk.text for r in s.Complete(req, metadata=md, timeout=60))  # type: ignore[attr-defined]


def test_tiny_temperature_decodes_greedily(channel: grpc.Channel, tokens: Tokens) -> None:
    md = bearer(tokens.tokens["alice"])
    s = stub(channel)
    greedy = _complete(s, md, 0.0)
    assert _complete(s, md, 1e-38) == greedy
    assert _complete(s, md, 1e-4) == greedy  # below the documented floor (min_temperature 1e-3)


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -1.0])
def test_non_finite_temperature_is_refused(channel: grpc.Channel, tokens: Tokens, temperature: float) -> None:
    md = bearer(tokens.tokens["alice"])
    s = stub(channel)
    sid = s.OpenSession(svc.OpenSessionRequest(), metadata=md).session.session_id
    err = rpc_error(
        lambda: list(s.Complete(svc.CompleteRequest(session_id=sid, temperature=temperature), metadata=md, timeout=60))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in (err.details() or "")
