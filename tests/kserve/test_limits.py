"""Native limits apply to sequences (a server with small caps): the session cap refuses a START
with RESOURCE_EXHAUSTED; the stream cap refuses a second stream; an idle sequence expires with
its session and then needs START again."""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import start_server

from .conftest import MODEL, position, text_input, tg

MAX_SESSIONS = 2
IDLE_TTL_S = 2.0
WAIT_S = 60.0
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def small_target(model_dir: Path) -> Iterator[str]:
    s = start_server(
        model_dir,
        "--max-sessions", str(MAX_SESSIONS),
        "--max-concurrent-streams", "1",
        "--session-idle-ttl", str(IDLE_TTL_S),
        "--set", "session_sweep_interval_s=0.2",
    )  # fmt: skip
    try:
        yield s.target
    finally:
        s.terminate()


@pytest.fixture
def small(small_target: str) -> Iterator[tg.InferenceServerClient]:
    client = tg.InferenceServerClient(small_target)
    try:
        yield client
    finally:
        client.close()


def test_session_cap_refuses_a_start(small: tg.InferenceServerClient) -> None:
    seqs = [next(_ids) for _ in range(MAX_SESSIONS)]
    for seq in seqs:
        small.infer(MODEL, [text_input("a")], sequence_id=seq, sequence_start=True)
    try:
        with pytest.raises(tg.InferenceServerException) as info:
            small.infer(MODEL, [text_input("a")], sequence_id=next(_ids), sequence_start=True)
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "retry after" in info.value.message()
    finally:
        for seq in seqs:
            small.infer(MODEL, [text_input("b")], sequence_id=seq, sequence_end=True)


def test_an_end_frees_its_session_by_the_time_it_is_answered(small: tg.InferenceServerClient) -> None:
    """The END's close is submitted with its append and applied right after it, before the
    answer is read: back-to-back one-request sequences never meet the session cap."""
    for _ in range(3 * MAX_SESSIONS):
        r = small.infer(MODEL, [text_input("a")], sequence_id=next(_ids), sequence_start=True, sequence_end=True)
        assert int(r.as_numpy("POSITION")[0]) == 1


def test_stream_cap(small: tg.InferenceServerClient, small_target: str) -> None:
    first: queue.Queue[tuple[Any, Any]] = queue.Queue()
    small.start_stream(callback=lambda result, error: first.put((result, error)))
    try:
        small.async_stream_infer(
            MODEL, [text_input("a")], sequence_id=next(_ids), sequence_start=True, sequence_end=True
        )
        result, error = first.get(timeout=WAIT_S)  # the stream is open on the server now
        assert error is None and position(result) == 1
        other = tg.InferenceServerClient(small_target)
        second: queue.Queue[tuple[Any, Any]] = queue.Queue()
        other.start_stream(callback=lambda result, error: second.put((result, error)))
        try:
            try:  # the server refuses the stream as it opens: the send may already see that
                other.async_stream_infer(MODEL, [text_input("a")], sequence_id=next(_ids), sequence_start=True)
            except tg.InferenceServerException as e:
                assert "no longer in valid state" in e.message()
            result, error = second.get(timeout=WAIT_S)
            assert result is None and "too many concurrent streams" in str(error)
        finally:
            other.stop_stream()
            other.close()
    finally:
        small.stop_stream()


def test_idle_sequence_expires(small: tg.InferenceServerClient) -> None:
    older, newer = next(_ids), next(_ids)
    small.infer(MODEL, [text_input("abc")], sequence_id=older, sequence_start=True)
    small.infer(MODEL, [text_input("abc")], sequence_id=newer, sequence_start=True)
    # A START on a live id restarts it, so it cannot probe liveness; the session count can: both
    # sessions hold the whole cap until the sweep has expired them.
    deadline = time.monotonic() + WAIT_S
    while _at_the_cap(small):  # bounded: ends once the sweep has expired one
        assert time.monotonic() < deadline, "the idle sequences never expired"
        time.sleep(0.2)
    # The older one idled longer: expired, so a request without START is refused.
    with pytest.raises(tg.InferenceServerException) as info:
        small.infer(MODEL, [text_input("d")], sequence_id=older)
    assert "must specify the START flag" in info.value.message()


def _at_the_cap(client: tg.InferenceServerClient) -> bool:
    """True while a new sequence is refused for the session cap (the probe ends at once)."""
    try:
        client.infer(MODEL, [text_input("x")], sequence_id=next(_ids), sequence_start=True, sequence_end=True)
    except tg.InferenceServerException as e:
        assert e.status() == "StatusCode.RESOURCE_EXHAUSTED"
        return True
    return False
