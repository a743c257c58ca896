"""A client that stops reading its Session stream is cut off once its unread answers pass
--stream-max-unread: RESOURCE_EXHAUSTED "client is not reading"; the server's memory stays
bounded and the session is kept (attach again, nothing lost)."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from servers import start_server

from .conftest import BOB_QUOTA, KEY_ENV, Tokens
from .wire import bearer, stub

APPENDS = 3000  # far more answers than HTTP/2 flow control and the stream's window hold
CUT_WAIT_S = 30.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def _append(rid: int, offset: int) -> svc.SessionRequest:
    return svc.SessionRequest(
        request_id=rid,
        append=svc.SessionRequest.Append(offset=offset, input={"text": "a"}, top_k=64, want_logprobs=True),
    )


def _open_stream(s: object, md: list[tuple[str, str]]) -> tuple[queue.Queue[svc.SessionRequest | None], object]:
    q: queue.Queue[svc.SessionRequest | None] = queue.Queue()
    call = s.Session(iter(q.get, None), metadata=md, timeout=120)  # type: ignore[attr-defined]
    q.put(svc.SessionRequest(request_id=1, open=svc.SessionRequest.Open()))
    assert next(call).WhichOneof("result") == "opened"
    return q, call


def _stream_quota_code(s: object, md: list[tuple[str, str]]) -> grpc.StatusCode:
    """Whether bob may open one more stream now (the stream quota)."""
    q: queue.Queue[svc.SessionRequest | None] = queue.Queue()
    call = s.Session(iter(q.get, None), metadata=md, timeout=30)  # type: ignore[attr-defined]
    q.put(svc.SessionRequest(request_id=1, attach=svc.SessionRequest.Attach(session_id="0" * 32)))
    try:
        next(call)  # an in-band NOT_FOUND: admitted
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    finally:
        q.put(None)
        call.cancel()


def test_a_client_that_never_reads_is_cut_off_and_its_session_kept(model_dir: Path, tokens: Tokens) -> None:
    server = start_server(model_dir, "--auth-tokens-file", str(tokens.path), "--stream-max-unread", "8", env=KEY_ENV)
    try:
        # No BDP probing: the receive window stays at HTTP/2's 64 KiB instead of growing to
        # megabytes, so the server's writer meets flow control within a few dozen answers.
        with grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)]) as ch:
            s, md = stub(ch), bearer(tokens.tokens["bob"])
            others = [_open_stream(s, md) for _ in range(BOB_QUOTA["max_streams"] - 1)]
            q: queue.Queue[svc.SessionRequest | None] = queue.Queue()
            call = s.Session(iter(q.get, None), metadata=md, timeout=120)
            q.put(svc.SessionRequest(request_id=1, open=svc.SessionRequest.Open()))
            sid = next(call).opened.session.session_id
            rss = _rss_mib(server.pid)
            for i in range(APPENDS):  # sent by grpc's thread; never read from here on
                q.put(_append(i + 2, i))
            q.put(None)
            # bob is at his stream quota until the server cuts the stream that is not read
            deadline = time.monotonic() + CUT_WAIT_S
            while (code := _stream_quota_code(s, md)) == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert time.monotonic() < deadline, "the stream that is not read was never cut off"
                time.sleep(0.2)
            assert code == grpc.StatusCode.OK
            assert _rss_mib(server.pid) - rss < 64
            got = 0
            try:  # reading now: the answers that had gone out, then the status
                for _ in call:
                    got += 1
                raise AssertionError("the stream ended without an error")
            except grpc.RpcError as e:
                err = e
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert "client is not reading" in (err.details() or "")
            # The session is kept: every append the server answered or not, it applied exactly
            # once in order, and the position says how far it got.
            info = s.GetSession(svc.GetSessionRequest(session_id=sid), metadata=md).session
            assert 0 < info.position < APPENDS
            assert got < info.position  # some answers never went out; the session has them all
            for oq, ocall in others:
                oq.put(None)
                ocall.cancel()
    finally:
        server.terminate()
