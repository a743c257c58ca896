"""The Session stream's keystroke messages in C (``api/_wire.c``).

A plain Append read in C is what protobuf reads from the same bytes: every Append a client
writes (random fields, texts of any UTF-8) takes that path; other operations, unusual encodings
(repeated or unknown fields, out-of-range values, multi-byte tags) and malformed bytes (not
UTF-8, truncated, corrupted at random) never do, and protobuf reads or refuses them.

A keystroke's answer serialized in C is protobuf's own serialization of the
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
from cellserve.api.pb import svc, types
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


# ---- the request side: a plain Append read in C -------------------------------------------------
TEXTS = ["a", "é", "😀", "ab\ncd", "\x00", "x" * 300, "€" * 40]


def fields_of(request: svc.SessionRequest) -> tuple[object, ...]:
    """What ``AppendRequest`` carries, from protobuf's reading of an Append."""
    a = request.append
    return (
        request.request_id,
        a.offset,
        a.input.text,
        a.top_k if a.HasField("top_k") else None,
        a.want_logprobs,
        a.want_gates,
        a.only_last,
        a.no_memory,
    )


def random_append(rng: random.Random) -> svc.SessionRequest:
    a = svc.SessionRequest.Append(offset=rng.choice(IDS), input=types.Input(text=rng.choice(TEXTS)))
    if rng.random() < 0.5:
        a.top_k = rng.choice([0, 1, 5, 64, 65, 2**32 - 1])
    a.want_logprobs, a.want_gates = rng.random() < 0.2, rng.random() < 0.1
    a.only_last, a.no_memory = rng.random() < 0.3, rng.random() < 0.2
    return svc.SessionRequest(request_id=rng.choice(IDS), append=a)


def check_agrees(raw: bytes) -> object:
    """The C reading of ``raw``, checked against protobuf's: whatever the C accepts, protobuf
    reads the same (an Append with the same fields)."""
    assert NATIVE is not None
    got = NATIVE.append_request(raw)
    if got is not None:
        request = svc.SessionRequest.FromString(raw)  # raises if protobuf would refuse the bytes
        assert request.WhichOneof("op") == "append"
        assert tuple(got) == fields_of(request), raw
        assert type(wire.session_request(raw)) is wire.AppendRequest
    else:
        try:
            parsed = wire.session_request(raw)
        except Exception:  # noqa: BLE001 (protobuf refuses the bytes: the server's guard answers INVALID_ARGUMENT)
            return None
        assert isinstance(parsed, svc.SessionRequest)
    return got


@built
def test_plain_appends_are_read_in_c_as_protobuf_reads_them() -> None:
    rng = random.Random(3)
    for _ in range(3000):
        raw = random_append(rng).SerializeToString()
        assert check_agrees(raw) is not None, raw  # every plain Append a client writes takes the C path


@built
def test_other_messages_go_to_protobuf() -> None:
    assert NATIVE is not None
    others = [
        svc.SessionRequest(request_id=1, open=svc.SessionRequest.Open()),
        svc.SessionRequest(request_id=2, close=svc.SessionRequest.Close()),
        svc.SessionRequest(request_id=3, complete=svc.SessionRequest.Complete(max_chars=4)),
        svc.SessionRequest(request_id=4, rewind=svc.SessionRequest.Rewind(chars=1)),
        svc.SessionRequest(request_id=5),  # no operation
        svc.SessionRequest(request_id=6, append=svc.SessionRequest.Append(offset=1)),  # no input
        svc.SessionRequest(request_id=7, append=svc.SessionRequest.Append(input=types.Input(text=""))),  # empty
    ]
    for request in others:
        raw = request.SerializeToString()
        assert NATIVE.append_request(raw) is None
        assert wire.session_request(raw) == request
    plain = svc.SessionRequest(request_id=9, append=svc.SessionRequest.Append(offset=2, input=types.Input(text="q")))
    raw = plain.SerializeToString()
    unusual = [
        raw + raw,  # every field twice: protobuf merges the appends
        raw + b"\x08\x05",  # request_id twice (the last wins)
        raw + b"\x58\x01",  # an unknown field (11)
        b"\x08\x09\x22\x07\x08\x02\x12\x03\x0a\x01q\x08\x03",  # offset twice
        b"\x08\x09\x22\x05\x12\x03\x0a\x01q\x12\x03\x0a\x01r",  # input twice (merged)
        b"\x08\x09\x22\x07\x12\x03\x0a\x01q\x20\x02",  # want_logprobs = 2 (a bool protobuf reads as true)
        b"\x08\x09\x22\x0b\x12\x03\x0a\x01q\x18\x80\x80\x80\x80\x10",  # top_k past 32 bits
        b"\x08\x09\x22\x08\x12\x06\x0a\x01q\x10\x01",  # an unknown field inside the Input
        b"\x88\x01\x01\x22\x05\x12\x03\x0a\x01q",  # a two-byte tag
    ]
    for raw in unusual:
        assert NATIVE.append_request(raw) is None, raw
        check_agrees(raw)


@built
def test_malformed_bytes_are_never_read_in_c() -> None:
    """Text that is not UTF-8, truncations, overlong varints, and random corruption of plain
    Appends: the C reads nothing protobuf would refuse, and reads what it accepts alike."""
    assert NATIVE is not None
    for bad_text in (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"a\xf4\x90\x80\x80"):
        raw = b"\x08\x01\x22" + bytes([4 + len(bad_text)]) + b"\x12" + bytes([2 + len(bad_text)]) + b"\x0a"
        raw += bytes([len(bad_text)]) + bad_text
        assert NATIVE.append_request(raw) is None
        with pytest.raises(Exception):  # noqa: B017 (protobuf's DecodeError)
            svc.SessionRequest.FromString(raw)
    assert NATIVE.append_request(b"\x08" + b"\xff" * 10 + b"\x01") is None  # a varint past 64 bits
    rng = random.Random(5)
    accepted = 0
    for _ in range(20000):
        raw = bytearray(random_append(rng).SerializeToString())
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            if r < 0.4 and raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            elif r < 0.7 and raw:
                del raw[rng.randrange(len(raw)) :]
            else:
                raw.insert(rng.randrange(len(raw) + 1), rng.randrange(256))
        accepted += check_agrees(bytes(raw)) is not None
    assert accepted > 100  # the corruption left many plain Appends (changed values) to compare
