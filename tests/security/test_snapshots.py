"""Snapshot blobs: sealed (AES-GCM), bound to their tenant, expiring; a fork for that tenant."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from servers import ServerProcess

from .conftest import SNAPSHOT_TTL_S, Tokens
from .wire import bearer, rpc_error, stub

TEXT = "def main():\n    return 0\n"


@pytest.fixture
def s(auth_server: ServerProcess) -> Iterator[object]:
    with grpc.insecure_channel(auth_server.target) as ch:
        yield stub(ch)


def _snapshot(s: object, token: str) -> tuple[str, bytes]:
    md = bearer(token)
    sid = s.OpenSession(svc.OpenSessionRequest(), metadata=md).session.session_id  # type: ignore[attr-defined]
    s.Append(svc.AppendRequest(session_id=sid, offset=0, input={"text": TEXT}), metadata=md)  # type: ignore[attr-defined]
    return sid, s.Snapshot(svc.SnapshotRequest(session_id=sid), metadata=md).blob  # type: ignore[attr-defined]


def test_blob_reveals_nothing(s: object, tokens: Tokens) -> None:
    _, blob = _snapshot(s, tokens.tokens["alice"])
    for leak in (b"tiny-lstm", b"alice", b"weights_sha256", b"position", b"float32", b"lstm"):
        assert leak not in blob
    _, again = _snapshot(s, tokens.tokens["alice"])
    assert blob[26:42] != again[26:42]  # fresh nonce and ciphertext for the same state


def test_other_tenant_cannot_resume(s: object, tokens: Tokens) -> None:
    _, blob = _snapshot(s, tokens.tokens["alice"])
    err = rpc_error(s.Resume, svc.ResumeRequest(blob=blob), metadata=bearer(tokens.tokens["dave"]))  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "another tenant" in (err.details() or "")


def test_tampered_blob_is_invalid(s: object, tokens: Tokens) -> None:
    _, blob = _snapshot(s, tokens.tokens["alice"])
    for i in (9, 20, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        err = rpc_error(s.Resume, svc.ResumeRequest(blob=bytes(bad)), metadata=bearer(tokens.tokens["alice"]))  # type: ignore[attr-defined]
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = rpc_error(s.Resume, svc.ResumeRequest(blob=blob[:-5]), metadata=bearer(tokens.tokens["alice"]))  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_tenant_may_resume_a_blob_twice_as_a_fork(s: object, tokens: Tokens) -> None:
    md = bearer(tokens.tokens["alice"])
    sid, blob = _snapshot(s, tokens.tokens["alice"])
    a = s.Resume(svc.ResumeRequest(blob=blob, replay={"text": "x"}), metadata=md)  # type: ignore[attr-defined]
    b = s.Resume(svc.ResumeRequest(blob=blob, replay={"text": "x"}), metadata=md)  # type: ignore[attr-defined]
    assert a.session.session_id != b.session.session_id != sid
    assert a.session.position == b.session.position == len(TEXT) + 1
    assert a.prediction.top_characters == b.prediction.top_characters  # the same state: the same answer
    assert a.prediction.HasField("top_characters")
    # The forks are independent: one moving on does not move the other.
    s.Append(
        svc.AppendRequest(session_id=a.session.session_id, offset=len(TEXT) + 1, input={"text": "yz"}), metadata=md
    )  # type: ignore[attr-defined]
    got = s.GetSession(svc.GetSessionRequest(session_id=b.session.session_id), metadata=md)  # type: ignore[attr-defined]
    assert got.session.position == len(TEXT) + 1


def test_expired_blob_is_refused(s: object, tokens: Tokens) -> None:
    md = bearer(tokens.tokens["alice"])
    _, blob = _snapshot(s, tokens.tokens["alice"])
    taken = time.monotonic()
    code = grpc.StatusCode.OK
    for _ in range(SNAPSHOT_TTL_S * 20 + 40):  # bounded: the TTL, polled every 0.1 s, plus slack
        try:
            s.Resume(svc.ResumeRequest(blob=blob), metadata=md)  # type: ignore[attr-defined]
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            break
        time.sleep(0.1)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in details
    assert time.monotonic() - taken >= SNAPSHOT_TTL_S - 1  # not refused before its time
