"""A silent stream is closed after --stream-idle-timeout with a clear status; its slot and the
tenant's stream quota come back, and its session is kept."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from servers import start_server

from .conftest import BOB_QUOTA, KEY_ENV, Tokens
from .wire import bearer, stub

IDLE_S = 2.0


def test_silent_streams_are_closed_and_give_their_slots_back(model_dir: Path, tokens: Tokens) -> None:
    server = start_server(
        model_dir, "--auth-tokens-file", str(tokens.path), "--stream-idle-timeout", str(IDLE_S), env=KEY_ENV
    )
    try:
        with grpc.insecure_channel(server.target) as ch:
            s, md = stub(ch), bearer(tokens.tokens["bob"])
            held, sids = [], []
            for _ in range(BOB_QUOTA["max_streams"]):
                q: queue.Queue[svc.SessionRequest | None] = queue.Queue()
                call = s.Session(iter(q.get, None), metadata=md, timeout=60)
                q.put(svc.SessionRequest(request_id=1, open=svc.SessionRequest.Open()))
                sids.append(next(call).opened.session.session_id)
                held.append((q, call))
            started = time.monotonic()
            for _, call in held:  # then silence: each ends by itself (bounded by the deadline)
                try:
                    next(call)
                    raise AssertionError("the silent stream answered")
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                    assert "idle" in (e.details() or "") and "attach" in (e.details() or "")
            assert time.monotonic() - started >= IDLE_S - 0.5
            for sid in sids:  # the sessions live on
                assert s.GetSession(svc.GetSessionRequest(session_id=sid), metadata=md).session.position == 0
            # The quota came back: bob attaches again on as many streams as before.
            for sid in sids:
                q2: queue.Queue[svc.SessionRequest | None] = queue.Queue()
                call = s.Session(iter(q2.get, None), metadata=md, timeout=60)
                q2.put(svc.SessionRequest(request_id=1, attach=svc.SessionRequest.Attach(session_id=sid)))
                assert next(call).WhichOneof("result") == "opened"
                q2.put(None)
                call.cancel()
            for q, _ in held:
                q.put(None)
    finally:
        server.terminate()
