"""A keystroke's answer serialized in C (``api/_wire.c``) is protobuf's own serialization of the
same SessionResponse, byte for byte, for every shape an answer takes: request ids and positions
at 0 (left out, as proto3 does) and up to 2**64 - 1, top-k entries of any character (multi-byte
UTF-8, NUL, empty) and any probability (0.0 left out; -0.0, NaN, infinities, subnormals and
values that round to float32 kept as protobuf keeps them), the replayed and superseded flags.
Out-of-range numbers and malformed entries raise instead of writing a wrong message. Bytes
pass the server's response serializer unchanged and parse back to the message; answers with
log-probs or gate traces keep the protobuf path."""

from __future__ import annotations

import math
import random
from pathlib import Path

import cellserve.api.wire as wire
import pytest
from cellserve.api import convert
from cellserve.api.pb import svc
from cellserve.engine.types import GateTrace, Prediction
from extensions import assert_built_from, assert_missing_only_without_a_compiler

NATIVE = wire._native
SOURCE = Path(wire.__file__).with_name("_wire.c")
built = pytest.mark.skipif(NATIVE is None, reason="the C extension is not built")

CHARS = ["a", "e", " ", "\n", "\t", "(", "é", "€", "😀", "\x00", "", "ab"]
PROBS = [0.41, 0.2, 1.0, 0.0, -0.0, 1e-45, 1e-39, 3.4e38, 1e39, math.nan, math.inf, -math.inf, 0.1 + 1e-12, 2.0 / 3.0]
IDS = [0, 1, 127, 128, 300, 16383, 16384, 2**31, 2**32 + 5, 2**63, 2**64 - 1]


def reference(request_id: int, p: Prediction) -> bytes:
    response = svc.SessionResponse(request_id=request_id)
    convert.fill_prediction(response.prediction, p)
    return response.SerializeToString()


@built
def test_the_bytes_are_protobufs() -> None:
    rng = random.Random(7)
    assert NATIVE is not None
    cases = [
        (rid, Prediction(pos, tuple((rng.choice(CHARS), rng.choice(PROBS)) for _ in range(k)), (), (), rep, sup))
        for rid in IDS
        for pos in IDS
        for k in (0, 1, 5)
        for rep, sup in ((False, False), (True, False), (False, True), (True, True))
    ]
    for _ in range(3000):  # random answers, some with many entries (top_k up to the server's cap)
        k = rng.choice([0, 1, 3, 5, 16, 64, 65, 200])
        top = tuple((rng.choice(CHARS), rng.choice([rng.random(), *PROBS])) for _ in range(k))
        cases.append(
            (rng.choice(IDS), Prediction(rng.choice(IDS), top, (), (), rng.random() < 0.1, rng.random() < 0.1))
        )
    for rid, p in cases:
        got = NATIVE.prediction_response(rid, p.position, p.top_k, p.replayed, p.superseded)
        assert got == reference(rid, p), (rid, p)
        assert wire.prediction_response(rid, p) == got


@built
def test_bad_input_raises() -> None:
    assert NATIVE is not None
    for rid, pos in ((-1, 0), (0, -1), (2**64, 0), (0, 2**64)):
        with pytest.raises(ValueError):
            NATIVE.prediction_response(rid, pos, (), False, False)
    for top in ((("a",),), (("a", 0.5, 1),), ((1, 0.5),), (("a", "x"),), ["a"], ("a",)):
        with pytest.raises(TypeError):
            NATIVE.prediction_response(1, 1, top, False, False)  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate has no UTF-8 (protobuf refuses it too)
        NATIVE.prediction_response(1, 1, (("\ud800", 0.5),), False, False)
    with pytest.raises(ValueError):
        NATIVE.prediction_response(1, 1, (("a", 0.5),) * 4097, False, False)


def test_answers_with_logprobs_or_gates_are_messages() -> None:
    with_logprobs = Prediction(3, (("a", 0.5),), (-0.7,))
    gates = (GateTrace(("input", "forget"), ((0.1, 0.2), (0.3, 0.4))),)
    with_gates = Prediction(3, (("a", 0.5),), (), gates)
    for p in (with_logprobs, with_gates):
        got = wire.prediction_response(9, p)
        assert isinstance(got, svc.SessionResponse)
        assert got.SerializeToString() == reference(9, p)


def test_the_serializer_passes_bytes_and_serializes_messages() -> None:
    serialize = wire.serializer(svc.SessionResponse.SerializeToString)
    assert serialize is not None
    message = svc.SessionResponse(request_id=4)
    assert serialize(message) == message.SerializeToString()
    raw = reference(5, Prediction(2, (("x", 0.25),)))
    assert serialize(raw) is raw
    assert svc.SessionResponse.FromString(raw).prediction.top_characters.entries[0].character == "x"
    assert wire.serializer(None) is None


@pytest.mark.skipif(NATIVE is not None, reason="built")
def test_built_where_a_compiler_is() -> None:  # runs only when the extension is missing
    assert_missing_only_without_a_compiler("CELLSERVE_NATIVE_WIRE")


@built
def test_built_from_the_current_source() -> None:
    assert NATIVE is not None
    assert_built_from(NATIVE, SOURCE)
