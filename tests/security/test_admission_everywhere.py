"""One admission point: every way to create or feed a session counts against the same
per-tenant quotas and global caps, held by the engine core, exactly, in one process and with
two frontends (where fresh connections land on either frontend)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve.api.kserve.pb import kpb, krpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from servers import ServerProcess, start_server

from .conftest import BOB_QUOTA, KEY_ENV, SHAPES, Tokens
from .test_quotas import Stream as QuotaStream
from .wire import DEADLINE_S, bearer, fresh_channel, rpc_error, stub

MODEL = "tiny-lstm"
BIG = "x" * 4000  # within bob's burst once, not twice at 50 chars/s
FRESH_CONNECTIONS = 8  # tries on new connections: with two frontends both are met (SO_REUSEPORT)
_ids = iter(range(10_000, 1_000_000))


def _infer(text: str, seq: int, start: bool = False, end: bool = False) -> kpb.ModelInferRequest:
    r = kpb.ModelInferRequest(model_name=MODEL)
    r.parameters["sequence_id"].int64_param = seq
    r.parameters["sequence_start"].bool_param = start
    r.parameters["sequence_end"].bool_param = end
    t = r.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(text.encode())
    return r


def _kserve(channel: grpc.Channel) -> krpc.GRPCInferenceServiceStub:
    return krpc.GRPCInferenceServiceStub(channel)


class Stream(QuotaStream):
    """A Session stream on a connection of its own."""

    def __init__(self, target: str, token: str) -> None:
        self.channel = fresh_channel(target)
        super().__init__(self.channel, token)

    def end(self) -> None:
        super().end()
        self.channel.close()


def _opened(target: str, token: str) -> Stream | None:
    """A stream that was admitted, or None when it was refused RESOURCE_EXHAUSTED."""
    st = Stream(target, token)
    try:
        st.ask(open={})
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e  # type: ignore[attr-defined]
        st.end()
        return None
    return st


def test_kserve_start_counts_against_the_session_quota(auth_server: ServerProcess, tokens: Tokens) -> None:
    bob = bearer(tokens.tokens["bob"])
    with grpc.insecure_channel(auth_server.target) as ch:
        s, k = stub(ch), _kserve(ch)
        held = [s.OpenSession(svc.OpenSessionRequest(), metadata=bob).session.session_id for _ in range(2)]
        seq = next(_ids)
        try:
            k.ModelInfer(_infer("a", seq, start=True), metadata=bob, timeout=DEADLINE_S)  # the third
            err = rpc_error(k.ModelInfer, _infer("a", next(_ids), start=True), metadata=bob, timeout=DEADLINE_S)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_sessions=3" in (err.details() or "")
            err = rpc_error(s.OpenSession, svc.OpenSessionRequest(), metadata=bob)  # the native API sees it too
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            k.ModelInfer(_infer("b", seq, end=True), metadata=bob, timeout=DEADLINE_S)
            for sid in held:
                s.CloseSession(svc.CloseSessionRequest(session_id=sid), metadata=bob)


def test_kserve_appends_spend_the_tenants_characters(auth_server: ServerProcess, tokens: Tokens) -> None:
    fay = bearer(tokens.tokens["fay"])  # bob's quotas, another bucket (see conftest)
    seq = next(_ids)
    with grpc.insecure_channel(auth_server.target) as ch:
        k = _kserve(ch)
        k.ModelInfer(_infer(BIG, seq, start=True), metadata=fay, timeout=DEADLINE_S)
        try:
            err = rpc_error(k.ModelInfer, _infer(BIG, seq), metadata=fay, timeout=DEADLINE_S)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "chars_per_s=50" in (err.details() or "")
        finally:
            k.ModelInfer(_infer("y", seq, end=True), metadata=fay, timeout=DEADLINE_S)  # the bucket has room for 1


def test_kserve_streams_count_against_the_stream_quota(auth_server: ServerProcess, tokens: Tokens) -> None:
    held = [st for _ in range(BOB_QUOTA["max_streams"]) if (st := _opened(auth_server.target, tokens.tokens["bob"]))]
    try:
        assert len(held) == BOB_QUOTA["max_streams"]
        with grpc.insecure_channel(auth_server.target) as ch:
            q: queue.Queue[kpb.ModelInferRequest | None] = queue.Queue()
            call = _kserve(ch).ModelStreamInfer(
                iter(q.get, None), metadata=bearer(tokens.tokens["bob"]), timeout=DEADLINE_S
            )
            q.put(_infer("a", next(_ids), start=True, end=True))
            with pytest.raises(grpc.RpcError) as info:
                next(call)
            q.put(None)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert "max_streams=2" in (info.value.details() or "")  # type: ignore[attr-defined]
    finally:
        for st in held:
            st.ask(close={})
            st.end()


def test_stream_quota_is_exact_over_fresh_connections(auth_server: ServerProcess, tokens: Tokens) -> None:
    held: list[Stream] = []
    try:
        for _ in range(FRESH_CONNECTIONS):
            st = _opened(auth_server.target, tokens.tokens["bob"])
            if st is not None:
                held.append(st)
        assert len(held) == BOB_QUOTA["max_streams"]  # not one more on the other frontend
    finally:
        for st in held:
            st.ask(close={})
            st.end()


def test_session_quota_is_exact_over_fresh_connections(auth_server: ServerProcess, tokens: Tokens) -> None:
    bob = bearer(tokens.tokens["bob"])
    opened: list[str] = []
    try:
        for _ in range(FRESH_CONNECTIONS):
            with fresh_channel(auth_server.target) as ch:
                try:
                    opened.append(stub(ch).OpenSession(svc.OpenSessionRequest(), metadata=bob).session.session_id)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(opened) == BOB_QUOTA["max_sessions"]
    finally:
        with grpc.insecure_channel(auth_server.target) as ch:
            for sid in opened:
                stub(ch).CloseSession(svc.CloseSessionRequest(session_id=sid), metadata=bob)


# ---- global caps, exact over frontends; the fair-share reserve -------------------------------

STREAM_CAP = 8
SESSION_CAP = 16  # reserve 2: one tenant alone holds at most 14


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def capped(model_dir: Path, tokens: Tokens, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        *SHAPES[request.param],
        "--auth-tokens-file", str(tokens.path),
        "--max-concurrent-streams", str(STREAM_CAP),
        "--max-sessions", str(SESSION_CAP),
        env=KEY_ENV,
    )  # fmt: skip
    try:
        yield s
    finally:
        s.terminate()


def test_global_stream_cap_is_exact_over_frontends(capped: ServerProcess, tokens: Tokens) -> None:
    held: dict[str, list[Stream]] = {"alice": [], "dave": []}
    try:
        for name, tries in (("alice", STREAM_CAP + 2), ("dave", 3)):
            for _ in range(tries):
                st = _opened(capped.target, tokens.tokens[name])
                if st is not None:
                    held[name].append(st)
        # alice alone stops at the reserve (one eighth); dave takes it; then the cap is full.
        assert len(held["alice"]) == STREAM_CAP - STREAM_CAP // 8
        assert len(held["dave"]) == STREAM_CAP // 8
    finally:
        for st in held["alice"] + held["dave"]:
            st.ask(close={})
            st.end()


def test_a_tenant_filling_the_session_cap_leaves_the_reserve_to_another(capped: ServerProcess, tokens: Tokens) -> None:
    alice, dave = bearer(tokens.tokens["alice"]), bearer(tokens.tokens["dave"])
    opened: list[tuple[str, list[tuple[str, str]]]] = []
    try:
        with grpc.insecure_channel(capped.target) as ch:
            s, k = stub(ch), _kserve(ch)
            for _ in range(SESSION_CAP):  # alice takes what she can, native and KServe alike
                try:
                    opened.append((s.OpenSession(svc.OpenSessionRequest(), metadata=alice).session.session_id, alice))
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "fair share" in (e.details() or "")
            err = rpc_error(k.ModelInfer, _infer("a", next(_ids), start=True), metadata=alice, timeout=DEADLINE_S)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(opened) == SESSION_CAP - SESSION_CAP // 8
            # dave, who holds nothing, still opens sessions until the cap itself is full.
            for _ in range(SESSION_CAP // 8):
                opened.append((s.OpenSession(svc.OpenSessionRequest(), metadata=dave).session.session_id, dave))
            assert rpc_error(s.OpenSession, svc.OpenSessionRequest(), metadata=dave).code() == (
                grpc.StatusCode.RESOURCE_EXHAUSTED
            )
    finally:
        with grpc.insecure_channel(capped.target) as ch:
            for sid, md in opened:
                stub(ch).CloseSession(svc.CloseSessionRequest(session_id=sid), metadata=md)
