"""One error table: each client-facing error class carries its gRPC code name and retry rule,
and both the gRPC mapping and the internal wire read it (no table of their own)."""

from __future__ import annotations

import pytest
from cellserve.api.status import status_of
from cellserve.errors import (
    BY_CODE,
    CLIENT_ERRORS,
    CapacityExceeded,
    CellserveError,
    ModelFileError,
    OffsetConflict,
    Retry,
    Unavailable,
)
from cellserve.multiproc import messages


def _instance(cls: type[CellserveError]) -> CellserveError:
    if cls is OffsetConflict:
        return OffsetConflict(4, 2)
    return cls("words for the client")


@pytest.mark.parametrize("cls", CLIENT_ERRORS, ids=lambda c: c.__name__)
def test_each_class_is_its_code_on_grpc_and_on_the_wire(cls: type[CellserveError]) -> None:
    exc = _instance(cls)
    assert status_of(exc).code.name == cls.code
    err = messages.error_reply(9, exc)
    assert (err.id, err.code) == (9, cls.code)
    back = messages.error_of(err)
    assert type(back) is cls and str(back) == str(exc)
    assert BY_CODE[cls.code] is cls


def test_codes_are_distinct_and_retry_rules_say_what_to_do() -> None:
    assert len(BY_CODE) == len(CLIENT_ERRORS)
    assert CapacityExceeded.retry is Retry.AFTER_HINT
    assert Unavailable.retry is Retry.AGAIN
    assert OffsetConflict.retry is Retry.AT_EXPECTED_OFFSET
    # operator-facing: never mapped to a client status, crosses the wire as INTERNAL
    assert ModelFileError not in CLIENT_ERRORS
    assert messages.error_reply(1, ModelFileError("/secret/model.json", "f", "bad")).code == messages.INTERNAL
