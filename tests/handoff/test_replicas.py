"""Two real replicas and a real redis-server: a raw gRPC client types into replica A, A drains
(SIGTERM), and the same session ids continue on replica B, bit-identical to a session that was
never moved, with nothing lost or applied twice; the same with the multi-process shape; Redis
down: both replicas keep serving and a drain still ends in time."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types
from servers import SNAPSHOT_KEY, ServerProcess, start_server

from .conftest import RedisServer, free_port

SHAPES = {"one-process": "0", "two-frontends": "2"}
TEXT = ["import os\n", "i", "m", "p", "ort sys\n", "def main(", ")", ":\n    return 0\n"]
MORE = ["x", " = ", "1", "\n"]


def _replica(model_dir: Path, url: str, deployment: str, frontends: str, *extra: str) -> ServerProcess:
    return start_server(
        model_dir,
        "--frontends", frontends,
        "--session-store", url,
        "--set", f"session_store_deployment={deployment}",
        "--set", "session_store_timeout_s=0.3",
        *extra,
        env={"CELLSERVE_SNAPSHOT_KEY": SNAPSHOT_KEY},
    )  # fmt: skip


def _append(stub: rpc.CellserveServiceStub, sid: str, offset: int, text: str) -> svc.AppendResponse:
    req = svc.AppendRequest(session_id=sid, offset=offset, input=types.Input(text=text), top_k=8, want_logprobs=True)
    return stub.Append(req, timeout=60)


def _typed(stub: rpc.CellserveServiceStub, sid: str, pieces: list[str], offset: int = 0) -> list[bytes]:
    out = []
    for piece in pieces:
        r = _append(stub, sid, offset, piece)
        offset += len(piece)
        assert r.prediction.position == offset
        out.append(_answer(r))
    return out


def _answer(r: svc.AppendResponse) -> bytes:
    """What a client sees of an answer, as bytes (bit-identical comparison)."""
    p = r.prediction
    return repr(
        ([(c.character, c.probability) for c in p.top_characters.entries], list(p.logprobs), p.position)
    ).encode()


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def shape(request: pytest.FixtureRequest) -> str:
    return SHAPES[request.param]


@contextmanager
def _pair(
    model_dir: Path, url: str, frontends: str = "0", a_args: tuple[str, ...] = ()
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Replicas A (with ``a_args``) and B sharing one store key space of their own; killed after."""
    deployment = "t" + secrets.token_hex(4)
    a = _replica(model_dir, url, deployment, frontends, *a_args)
    try:
        b = _replica(model_dir, url, deployment, frontends)
        try:
            yield a, b
        finally:
            b.kill()
    finally:
        a.kill()


@pytest.fixture
def replicas(model_dir: Path, redis_server: RedisServer, shape: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with _pair(model_dir, redis_server.url, shape) as pair:
        yield pair


def test_drained_sessions_continue_on_another_replica(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = replicas
    with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
        sa, sb = rpc.CellserveServiceStub(ca), rpc.CellserveServiceStub(cb)
        # the reference: one session on B that is never moved, typed in the same pieces
        ref = sb.OpenSession(svc.OpenSessionRequest()).session.session_id
        want = _typed(sb, ref, TEXT + MORE)
        moved = sa.OpenSession(svc.OpenSessionRequest()).session.session_id
        other = sa.OpenSession(svc.OpenSessionRequest()).session.session_id
        got = _typed(sa, moved, TEXT)
        _typed(sa, other, ["print('hi')\n"])
        assert got == want[: len(TEXT)]
        last = _answer(_append(sa, moved, sum(map(len, TEXT[:-1])), TEXT[-1]))  # a retry: from cache
        assert last == want[len(TEXT) - 1]

        assert a.terminate() == 0  # SIGTERM: drain, sessions to the store
        assert any("wrote 2 sessions to the store" in line for line in a.stderr_lines), a.stderr_lines[-20:]

        at = sum(map(len, TEXT))
        # the retry of the last piece before the move is answered again, not applied twice
        r = _append(sb, moved, at - len(TEXT[-1]), TEXT[-1])
        assert r.prediction.replayed and _answer(r) == want[len(TEXT) - 1]
        info = sb.GetSession(svc.GetSessionRequest(session_id=moved)).session
        assert info.session_id == moved and info.position == at
        assert _typed(sb, moved, MORE, at) == want[len(TEXT) :]  # bit-identical continuation
        # a wrong offset is still a gap, answered with the expected offset
        with pytest.raises(grpc.RpcError) as gap:
            _append(sb, moved, at, "y")
        assert gap.value.code() == grpc.StatusCode.ABORTED
        # the other session moved too, and only once: a second take finds nothing
        assert sb.GetSession(svc.GetSessionRequest(session_id=other)).session.position == len("print('hi')\n")


def test_foreign_and_unknown_ids_stay_not_found(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = replicas
    with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
        sa, sb = rpc.CellserveServiceStub(ca), rpc.CellserveServiceStub(cb)
        sid = sa.OpenSession(svc.OpenSessionRequest()).session.session_id
        _typed(sa, sid, ["abc"])
        with pytest.raises(grpc.RpcError) as e:
            sb.GetSession(svc.GetSessionRequest(session_id="0" * 32))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        # while A holds the session, B does not find it (nothing is in the store yet)
        with pytest.raises(grpc.RpcError) as e:
            _append(sb, sid, 3, "d")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert _typed(sa, sid, ["d"], 3)  # and A still serves it


def test_redis_down_serving_goes_on(model_dir: Path, tmp_path: Path) -> None:
    from .conftest import start_redis

    redis = start_redis(tmp_path)
    try:
        with _pair(model_dir, redis.url, a_args=("--drain-grace", "5")) as (a, b):
            with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
                sa, sb = rpc.CellserveServiceStub(ca), rpc.CellserveServiceStub(cb)
                sid = sa.OpenSession(svc.OpenSessionRequest()).session.session_id
                _typed(sa, sid, ["abc"])
                redis.stop()  # Redis killed mid-run
                for stub in (sa, sb):  # both keep serving, misses are plain NOT_FOUND, fast
                    s2 = stub.OpenSession(svc.OpenSessionRequest()).session.session_id
                    _typed(stub, s2, ["x", "y"])
                    with pytest.raises(grpc.RpcError) as e:
                        stub.GetSession(svc.GetSessionRequest(session_id=secrets.token_hex(16)), timeout=5)
                    assert e.value.code() == grpc.StatusCode.NOT_FOUND
                assert a.terminate(timeout=30) == 0  # the drain ends in its grace, the loss logged
                assert any("did not fit" in line or "lost" in line for line in a.stderr_lines), a.stderr_lines[-20:]
    finally:
        redis.stop()


def test_store_unreachable_at_start_is_not_fatal(model_dir: Path) -> None:
    s = _replica(model_dir, f"redis://127.0.0.1:{free_port()}/0", "t" + secrets.token_hex(4), "0")
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = rpc.CellserveServiceStub(ch)
            sid = stub.OpenSession(svc.OpenSessionRequest()).session.session_id
            assert _typed(stub, sid, ["ok"])
    finally:
        s.kill()


def test_sdk_session_keeps_its_id_across_the_move(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    from cellserve_client import Client, FailoverPolicy

    a, b = replicas
    with Client([b.target]) as only_b, only_b.open() as ref:
        want = [ref.append(p, top_k=8).top for p in TEXT + MORE]
    with Client([a.target, b.target], failover=FailoverPolicy(snapshot_every_chars=10_000)) as client:
        with client.open() as session:
            sid = session.session_id
            got = [session.append(p, top_k=8).top for p in TEXT]
            assert a.terminate() == 0  # A drains: the session goes to the store
            got += [session.append(p, top_k=8).top for p in MORE]  # continues on B
            assert session.session_id == sid  # the same server session, handed over
            assert got == want


def test_background_sync_survives_a_crash(model_dir: Path, redis_server: RedisServer) -> None:
    with _pair(model_dir, redis_server.url, a_args=("--session-store-sync-s", "1")) as (a, b):
        with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
            sa, sb = rpc.CellserveServiceStub(ca), rpc.CellserveServiceStub(cb)
            ref = sb.OpenSession(svc.OpenSessionRequest()).session.session_id
            want = _typed(sb, ref, TEXT + MORE)
            sid = sa.OpenSession(svc.OpenSessionRequest()).session.session_id
            assert _typed(sa, sid, TEXT) == want[: len(TEXT)]
            deadline = time.monotonic() + 20  # idle for the sync interval: written in the background
            while not any("handoff sync: wrote" in line for line in a.stderr_lines):
                assert time.monotonic() < deadline, a.stderr_lines[-20:]
                time.sleep(0.2)
            a.kill()  # no drain at all
            at = sum(map(len, TEXT))
            assert _typed(sb, sid, MORE, at) == want[len(TEXT) :]


def test_tritonclient_sequence_continues_on_another_replica(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    tg = pytest.importorskip("tritonclient.grpc")
    import numpy as np

    def text(piece: str) -> object:
        t = tg.InferInput("TEXT", [1], "BYTES")
        t.set_data_from_numpy(np.array([piece], dtype=object))
        return t

    def top(r: object) -> list[tuple[str, float]]:
        chars = [c.decode() for c in r.as_numpy("TOP_CHARS")]  # type: ignore[attr-defined]
        return list(zip(chars, [float(p) for p in r.as_numpy("TOP_PROBS")], strict=True))  # type: ignore[attr-defined]

    a, b = replicas
    model = "tiny-lstm"
    ta, tb = tg.InferenceServerClient(a.target), tg.InferenceServerClient(b.target)
    try:
        pieces = TEXT + MORE
        want = [top(tb.infer(model, [text(p)], sequence_id=901, sequence_start=i == 0)) for i, p in enumerate(pieces)]
        got = [top(ta.infer(model, [text(p)], sequence_id=902, sequence_start=i == 0)) for i, p in enumerate(TEXT)]
        assert a.terminate() == 0  # A drains: the sequence's session goes to the store
        got += [top(tb.infer(model, [text(p)], sequence_id=902)) for p in MORE]  # no START: it continues
        assert got == want
    finally:
        ta.close()
        tb.close()


def test_session_memory_moves_with_the_session(memory_model_dir: Path, redis_server: RedisServer) -> None:
    with _pair(memory_model_dir, redis_server.url) as (a, b):
        with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
            sa, sb = rpc.CellserveServiceStub(ca), rpc.CellserveServiceStub(cb)
            text = TEXT * 3  # repeats: the memory's predictions differ from the model's alone
            ref = sb.OpenSession(svc.OpenSessionRequest()).session.session_id
            want = _typed(sb, ref, text + MORE)
            sid = sa.OpenSession(svc.OpenSessionRequest()).session.session_id
            assert _typed(sa, sid, text) == want[: len(text)]
            assert a.terminate() == 0
            assert _typed(sb, sid, MORE, sum(map(len, text))) == want[len(text) :]
            fresh = sb.OpenSession(svc.OpenSessionRequest(no_memory=True)).session.session_id
            assert _typed(sb, fresh, text + MORE)[len(text) :] != want[len(text) :]  # memory matters here
