"""Revocation reaches open streams: once a stream's token is revoked, its next message ends the
stream with UNAUTHENTICATED; the session is kept for its tenant (another valid token of the
tenant attaches to it)."""

from __future__ import annotations

import time

import grpc
import pytest
from cellserve.api.auth import RELOAD_CHECK_S
from cellserve.tokens import new_token
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from servers import ServerProcess

from .conftest import Tokens, _entries
from .test_admission_everywhere import Stream
from .wire import bearer, fresh_channel, stub

TRIES = 100  # x 0.1 s


def _stream_with(target: str, token: str) -> tuple[Stream, str]:
    """A stream authenticated with ``token`` (once its frontend has read it; bounded) and the
    session it opened."""
    for _ in range(TRIES):
        st = Stream(target, token)
        try:
            return st, st.ask(open={}).opened.session.session_id
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            st.end()
            time.sleep(0.1)
    raise AssertionError("the new token was never accepted")


def test_a_revoked_token_ends_its_open_stream_and_the_session_is_kept(
    auth_server: ServerProcess, tokens: Tokens
) -> None:
    stored = tokens.stored  # type: ignore[attr-defined]
    second, second_hash = new_token()
    tokens.write(
        [
            {**e, "tokens": [*e["tokens"], second_hash]} if e["name"] == "alice" else e  # type: ignore[list-item]
            for e in _entries(stored)
        ]
    )
    try:
        st, sid = _stream_with(auth_server.target, second)
        assert st.ask(append={"offset": 0, "input": {"text": "ab"}}).prediction.position == 2
        tokens.write(_entries(stored))  # the second token is revoked; alice's first stays
        time.sleep(RELOAD_CHECK_S + 0.5)  # the stream's frontend checks the file at most once a second
        with pytest.raises(grpc.RpcError) as info:
            st.ask(append={"offset": 2, "input": {"text": "c"}})
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert "revoked" in (info.value.details() or "")  # type: ignore[attr-defined]
        st.end()
        # The session is alice's still, untouched by the refused append: her valid token attaches.
        alice = tokens.tokens["alice"]
        with fresh_channel(auth_server.target) as ch:
            got = stub(ch).GetSession(svc.GetSessionRequest(session_id=sid), metadata=bearer(alice))
            assert got.session.position == 2
        again = Stream(auth_server.target, alice)
        assert again.ask(attach={"session_id": sid}).opened.session.session_id == sid
        assert again.ask(append={"offset": 2, "input": {"text": "c"}}).prediction.position == 3
        again.ask(close={})
        again.end()
    finally:
        tokens.write(_entries(stored))
