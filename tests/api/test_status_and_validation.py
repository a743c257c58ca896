"""The error mapping and request validation, without a server (the wire tests cover them too)."""

from __future__ import annotations

import logging

import grpc
import pytest
from cellserve.api import validate
from cellserve.api.status import INTERNAL_MESSAGE, status_of
from cellserve.config import Settings
from cellserve.engine.types import AppendOptions
from cellserve.errors import (
    CapacityExceeded,
    InvalidInput,
    ModelFileError,
    NotFound,
    OffsetConflict,
    PreconditionFailed,
    Unavailable,
)
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidInput("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("no such session"), grpc.StatusCode.NOT_FOUND),
        (OffsetConflict(expected=7, got=9), grpc.StatusCode.ABORTED),
        (PreconditionFailed("other weights"), grpc.StatusCode.FAILED_PRECONDITION),
        (CapacityExceeded("full", retry_after_s=0.25), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unavailable("draining"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_each_domain_error_has_one_code(exc: Exception, code: grpc.StatusCode) -> None:
    assert status_of(exc).code == code


def test_offset_conflict_carries_expected_offset() -> None:
    st = status_of(OffsetConflict(expected=7, got=9))
    assert "expected offset 7" in st.message
    assert st.expected_offset == 7 and ("expected-offset", "7") in st.trailing_metadata()


def test_capacity_carries_retry_hint_in_message_and_metadata() -> None:
    st = status_of(CapacityExceeded("too many sessions", retry_after_s=0.25))
    assert st.retry_after_ms == 250 and "retry after 250 ms" in st.message
    assert ("retry-after-ms", "250") in st.trailing_metadata()


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("boom at /secret/path/engine.py"),
        ModelFileError("/models/x/model.json", "cell", "bad"),
        KeyError("k"),
    ],
)
def test_unexpected_errors_are_internal_generic_and_logged_once(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cellserve.api"):
        st = status_of(exc, "/cellserve.v1.CellserveService/Append")
    assert st.code == grpc.StatusCode.INTERNAL and st.message == INTERNAL_MESSAGE
    assert "/secret" not in st.message and "/models" not in st.message
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None


SETTINGS = Settings(max_top_k=16, max_completion_chars=100, max_completion_alternatives=4, max_append_chars=50)


def _complete(**kw: object) -> svc.SessionRequest.Complete:
    return svc.SessionRequest.Complete(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (_complete(max_chars=101), "max_chars is 101"),
        (_complete(max_chars=0), "max_chars is 0"),
        (_complete(n=5), "n is 5"),
        (_complete(n=0), "n is 0"),
        (_complete(temperature=-0.5), "temperature"),
        (_complete(temperature=float("nan")), "temperature"),
        (_complete(temperature=101), "temperature"),
        (_complete(stop=["x" * 65]), "stop[0] has 65 characters"),
        (_complete(top_p=0.0), "top_p"),
        (_complete(top_p=1.5), "top_p"),
        (_complete(top_k=17), "top_k is 17"),
        (_complete(stop=[""]), "stop[0] is empty"),
    ],
)
def test_completion_requests_out_of_range(msg: svc.SessionRequest.Complete, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle.replace("[", r"\[").replace("]", r"\]")):
        validate.completion_request(msg, SETTINGS)


def test_completion_defaults() -> None:
    req = validate.completion_request(_complete(), SETTINGS)
    assert (req.max_chars, req.n, req.temperature, req.top_p, req.top_k, req.seed) == (32, 1, 0.0, 1.0, 0, None)
    req = validate.completion_request(_complete(seed=0, n=4, max_chars=100, top_p=0.5, stop=["\n"]), SETTINGS)
    assert (req.seed, req.n, req.max_chars, req.top_p, req.stop) == (0, 4, 100, 0.5, ("\n",))


def test_append_validation() -> None:
    ok = svc.SessionRequest.Append(input=types.Input(text="ab"))
    assert validate.append_options(ok, SETTINGS).top_k == 5  # unset: the default
    assert validate.append_options(svc.SessionRequest.Append(top_k=0), SETTINGS).top_k == 0
    with pytest.raises(InvalidInput, match="top_k is 17"):
        validate.append_options(svc.SessionRequest.Append(top_k=17), SETTINGS)
    with pytest.raises(InvalidInput, match="51 characters"):
        validate.input_text(types.Input(text="x" * 51), "input", SETTINGS)
    with pytest.raises(InvalidInput, match="input is required"):
        validate.input_text(None, "input", SETTINGS)
    with pytest.raises(InvalidInput, match="empty"):
        validate.input_text(types.Input(text=""), "input", SETTINGS)
    assert validate.input_text(None, "replay", SETTINGS, allow_empty=True) == ""


@pytest.mark.parametrize("only_last", [False, True])
@pytest.mark.parametrize("no_memory", [False, True])
@pytest.mark.parametrize("want", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("top_k", [None, 0, 3, 16])
def test_append_options_are_shared_and_equal_to_new_ones(
    top_k: int | None, want: tuple[bool, bool], no_memory: bool, only_last: bool
) -> None:
    """One object per distinct set of options (built once), equal to what the request asks."""
    logprobs, gates = want
    msg = svc.SessionRequest.Append(top_k=top_k, want_logprobs=logprobs, want_gates=gates, no_memory=no_memory)
    got = validate.append_options(msg, SETTINGS, only_last=only_last)
    expected = AppendOptions(
        top_k=5 if top_k is None else top_k,
        want_logprobs=logprobs,
        want_gates=gates,
        only_last=only_last,
        memory=not no_memory,
    )
    assert got == expected
    assert validate.append_options(msg, SETTINGS, only_last=only_last) is got
    assert validate.append_options(msg, SETTINGS, only_last=not only_last) != got
