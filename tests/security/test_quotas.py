"""Per-tenant quotas: bob (small quotas) is refused with RESOURCE_EXHAUSTED and a retry hint;
alice, at the same time, is not affected; nothing bob was refused is applied."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from servers import ServerProcess

from .conftest import BOB_QUOTA, Tokens
from .wire import DEADLINE_S, bearer, rpc_error, stub, trailing

BIG = "x" * 4000  # within bob's burst once, not twice at 50 chars/s


@pytest.fixture
def channel(auth_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(auth_server.target) as ch:
        yield ch


class Stream:
    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self._q: queue.Queue[svc.SessionRequest | None] = queue.Queue()
        self.call = stub(channel).Session(iter(self._q.get, None), metadata=bearer(token), timeout=DEADLINE_S)
        self._id = 0

    def ask(self, **op: object) -> svc.SessionResponse:
        self._id += 1
        self._q.put(svc.SessionRequest(request_id=self._id, **op))  # type: ignore[arg-type]
        return next(self.call)

    def end(self) -> None:
        self._q.put(None)
        self.call.cancel()


def test_session_quota_is_per_tenant(channel: grpc.Channel, tokens: Tokens) -> None:
    s = stub(channel)
    bob, alice = bearer(tokens.tokens["bob"]), bearer(tokens.tokens["alice"])
    held = [
        s.OpenSession(svc.OpenSessionRequest(), metadata=bob).session.session_id
        for _ in range(BOB_QUOTA["max_sessions"])
    ]
    try:
        err = rpc_error(s.OpenSession, svc.OpenSessionRequest(), metadata=bob)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_sessions=3" in (err.details() or "") and int(trailing(err)["retry-after-ms"]) > 0
        blob = s.Snapshot(svc.SnapshotRequest(session_id=held[0]), metadata=bob).blob
        assert (
            rpc_error(s.Resume, svc.ResumeRequest(blob=blob), metadata=bob).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        # alice is not bob: she opens sessions while bob is at his quota.
        mine = [s.OpenSession(svc.OpenSessionRequest(), metadata=alice).session.session_id for _ in range(5)]
        for sid in mine:
            s.CloseSession(svc.CloseSessionRequest(session_id=sid), metadata=alice)
        # A closed session gives its quota back at once.
        s.CloseSession(svc.CloseSessionRequest(session_id=held.pop()), metadata=bob)
        held.append(s.OpenSession(svc.OpenSessionRequest(), metadata=bob).session.session_id)
    finally:
        for sid in held:
            s.CloseSession(svc.CloseSessionRequest(session_id=sid), metadata=bob)


def test_stream_quota_is_per_tenant(channel: grpc.Channel, tokens: Tokens) -> None:
    streams = [Stream(channel, tokens.tokens["bob"]) for _ in range(BOB_QUOTA["max_streams"])]
    try:
        for st in streams:
            assert st.ask(open={}).WhichOneof("result") == "opened"
        extra = Stream(channel, tokens.tokens["bob"])
        with pytest.raises(grpc.RpcError) as info:
            extra.ask(open={})
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "max_streams=2" in (info.value.details() or "")  # type: ignore[attr-defined]
        alice = Stream(channel, tokens.tokens["alice"])
        assert alice.ask(open={}).WhichOneof("result") == "opened"
        alice.ask(close={})
        alice.end()
    finally:
        for st in streams:
            st.ask(close={})
            st.end()


def test_chars_per_second_is_answered_in_band_and_nothing_is_applied(channel: grpc.Channel, tokens: Tokens) -> None:
    st = Stream(channel, tokens.tokens["bob"])
    try:
        sid = st.ask(open={}).opened.session.session_id
        assert st.ask(append={"offset": 0, "input": {"text": BIG}}).prediction.position == len(BIG)
        r = st.ask(append={"offset": len(BIG), "input": {"text": BIG}})
        assert r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "chars_per_s=50" in r.error.message and r.error.retry_after_ms > 10_000
        # The stream goes on; the refused append was not applied (position unchanged).
        got = stub(channel).GetSession(svc.GetSessionRequest(session_id=sid), metadata=bearer(tokens.tokens["bob"]))
        assert got.session.position == len(BIG)
        assert st.ask(rewind={"chars": 1}).rewound.position == len(BIG) - 1
    finally:
        st.ask(close={})
        st.end()
    # alice's bucket is her own.
    a = Stream(channel, tokens.tokens["alice"])
    a.ask(open={})
    assert a.ask(append={"offset": 0, "input": {"text": BIG}}).prediction.position == len(BIG)
    assert a.ask(append={"offset": len(BIG), "input": {"text": BIG}}).prediction.position == 2 * len(BIG)
    a.ask(close={})
    a.end()


def test_unary_append_over_the_rate_is_refused_with_a_hint(channel: grpc.Channel, tokens: Tokens) -> None:
    s, bob = stub(channel), bearer(tokens.tokens["bob"])
    sid = s.OpenSession(svc.OpenSessionRequest(), metadata=bob).session.session_id
    try:
        codes = []
        for _ in range(3):  # whatever the bucket holds now, the third 4000 chars cannot fit
            try:
                s.Append(
                    svc.AppendRequest(
                        session_id=sid,
                        offset=s.GetSession(svc.GetSessionRequest(session_id=sid), metadata=bob).session.position,
                        input={"text": BIG},
                    ),
                    metadata=bob,
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
                assert int(trailing(e)["retry-after-ms"]) > 0
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        pos = s.GetSession(svc.GetSessionRequest(session_id=sid), metadata=bob).session.position
        assert pos == len(BIG) * codes.count(grpc.StatusCode.OK)  # refused appends left no trace
    finally:
        s.CloseSession(svc.CloseSessionRequest(session_id=sid), metadata=bob)


def test_completion_quota(channel: grpc.Channel, tokens: Tokens) -> None:
    s, bob = stub(channel), bearer(tokens.tokens["bob"])
    sid = s.OpenSession(svc.OpenSessionRequest(), metadata=bob).session.session_id
    try:
        s.Append(svc.AppendRequest(session_id=sid, offset=0, input={"text": "a"}), metadata=bob)
        err = rpc_error(lambda: list(s.Complete(svc.CompleteRequest(session_id=sid, n=3), metadata=bob, timeout=60)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_completions=2" in (err.details() or "")
        assert (
            len(list(s.Complete(svc.CompleteRequest(session_id=sid, n=2, max_chars=4), metadata=bob, timeout=60))) > 0
        )
        st = Stream(channel, tokens.tokens["bob"])
        st.ask(attach={"session_id": sid})
        r = st.ask(complete={"n": 3})
        assert r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        st.end()
    finally:
        s.CloseSession(svc.CloseSessionRequest(session_id=sid), metadata=bob)
