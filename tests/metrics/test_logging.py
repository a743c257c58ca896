"""Logs: one JSON object per line with the request id (the client's x-request-id when given),
and the text users type never logged unless log_user_text says so."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types
from servers import ServerProcess, start_server

SECRET = "Zq7 private words"  # in the test vocabulary; appears nowhere else


def _type_secret(target: str, request_id: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = rpc.CellserveServiceStub(channel)
        md = (("x-request-id", request_id),)
        sid = stub.OpenSession(svc.OpenSessionRequest(), metadata=md).session.session_id
        stub.Append(svc.AppendRequest(session_id=sid, offset=0, input=types.Input(text=SECRET)), metadata=md)

        def stream() -> Iterator[svc.SessionRequest]:
            yield svc.SessionRequest(request_id=1, attach=svc.SessionRequest.Attach(session_id=sid))
            yield svc.SessionRequest(
                request_id=2, append=svc.SessionRequest.Append(offset=len(SECRET), input=types.Input(text=SECRET))
            )

        list(stub.Session(stream(), metadata=md))


def _log_lines(server: ServerProcess, needle: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(needle in line for line in server.stderr_lines):
        time.sleep(0.1)
    return list(server.stderr_lines)


def test_json_lines_carry_request_ids_and_no_user_text(server: ServerProcess) -> None:
    _type_secret(server.target, "rid-json-1")
    lines = _log_lines(server, "Session OK")
    entries = [json.loads(line) for line in lines if line.strip()]  # every line is a JSON object
    mine = [e for e in entries if e.get("request_id") == "rid-json-1"]
    messages = " | ".join(e["message"] for e in mine)
    assert any(e["message"].startswith("Append OK") for e in mine), messages
    assert any(e["message"].startswith("Session OK") for e in mine), messages
    assert any("stream append" in e["message"] for e in mine), messages  # the stream's tasks inherit the id
    assert f"<{len(SECRET)} chars>" in messages  # what is logged instead of the text
    assert SECRET not in "".join(lines) and "private" not in "".join(lines)


def test_user_text_is_logged_only_when_opted_in(model_dir: Path) -> None:
    s = start_server(model_dir, "--log-level", "debug", "--log-user-text")
    try:
        _type_secret(s.target, "rid-text-1")
        lines = _log_lines(s, SECRET)
    finally:
        s.terminate()
    assert any(SECRET in line and "[rid-text-1]" in line for line in lines), "".join(lines[-20:])


def test_an_unusable_request_id_is_replaced(server: ServerProcess) -> None:
    def logged() -> list[str]:
        return [line for line in list(server.stderr_lines) if "ListModels OK" in line]

    before = len(logged())  # the module's server may have logged ListModels calls already
    with grpc.insecure_channel(server.target) as channel:
        rpc.CellserveServiceStub(channel).ListModels(
            svc.ListModelsRequest(), metadata=(("x-request-id", "bad id {x}" + "y" * 80),)
        )
    deadline = time.monotonic() + 10.0  # the log line may follow the response
    while len(logged()) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    entry = json.loads(logged()[before])
    assert "bad" not in entry["request_id"] and len(entry["request_id"]) == 16
