"""ModelInfer with tritonclient (sync): predictions equal the native API's for the same text;
the START/END rules; OFFSET exactly-once; completions; metadata, config, index, statistics."""

from __future__ import annotations

import itertools

import grpc
import numpy as np
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types
from servers import ServerProcess

from .conftest import MODEL, assert_same, native_predictions, offset_input, position, text_input, tg, top

_ids = itertools.count(1000)
PIECES = ["def ", "f", "(x):\n", "    return x", " é中😀"]


def error_of(fn: object, *args: object, **kw: object) -> tg.InferenceServerException:
    with pytest.raises(tg.InferenceServerException) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value


def test_sequence_predictions_equal_the_native_api(
    triton: tg.InferenceServerClient, native: rpc.CellserveServiceStub
) -> None:
    want = native_predictions(native, PIECES)
    seq, end = next(_ids), len(PIECES) - 1
    offset = 0
    for i, piece in enumerate(PIECES):
        r = triton.infer(MODEL, [text_input(piece)], sequence_id=seq, sequence_start=i == 0, sequence_end=i == end)
        offset += len(piece)
        assert position(r) == offset
        assert_same(top(r), want[i])
        assert r.get_response().model_version == "1"


def test_string_sequence_ids_and_top_k(triton: tg.InferenceServerClient, native: rpc.CellserveServiceStub) -> None:
    want = native_predictions(native, ["ab", "c"], top_k=3)
    r = triton.infer(MODEL, [text_input("ab")], sequence_id="user-7", sequence_start=True, parameters={"top_k": 3})
    assert_same(top(r), want[0])
    r = triton.infer(MODEL, [text_input("c")], sequence_id="user-7", sequence_end=True, parameters={"top_k": 3})
    assert_same(top(r), want[1])
    assert position(r) == 3


def test_non_start_for_an_unknown_id_is_refused(triton: tg.InferenceServerClient) -> None:
    e = error_of(triton.infer, MODEL, [text_input("x")], sequence_id=next(_ids))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert "must specify the START flag" in e.message()


def test_start_on_a_live_id_restarts_it_for_its_owner(triton: tg.InferenceServerClient) -> None:
    # A client killed mid-sequence starts its ids again without waiting for the session TTL.
    seq = next(_ids)
    triton.infer(MODEL, [text_input("abc")], sequence_id=seq, sequence_start=True)
    r = triton.infer(MODEL, [text_input("zz")], sequence_id=seq, sequence_start=True)
    assert position(r) == 2  # a new session from position 0: the old one was closed
    r = triton.infer(MODEL, [text_input("d")], sequence_id=seq, sequence_end=True)
    assert position(r) == 3


def test_end_forgets_the_id_and_start_reuses_it(triton: tg.InferenceServerClient) -> None:
    seq = next(_ids)
    triton.infer(MODEL, [text_input("abc")], sequence_id=seq, sequence_start=True, sequence_end=True)
    e = error_of(triton.infer, MODEL, [text_input("d")], sequence_id=seq)
    assert "must specify the START flag" in e.message()
    r = triton.infer(MODEL, [text_input("xy")], sequence_id=seq, sequence_start=True, sequence_end=True)
    assert position(r) == 2  # a new session from position 0


def test_integer_and_string_ids_and_owners_are_separate(triton: tg.InferenceServerClient) -> None:
    seq = next(_ids)
    triton.infer(MODEL, [text_input("abc")], sequence_id=seq, sequence_start=True)
    try:
        e = error_of(triton.infer, MODEL, [text_input("d")], sequence_id=str(seq))
        assert "must specify the START flag" in e.message()
        other = {"authorization": "Bearer someone-else"}
        e = error_of(triton.infer, MODEL, [text_input("d")], sequence_id=seq, headers=other)
        assert "must specify the START flag" in e.message()
        r = triton.infer(
            MODEL, [text_input("d")], sequence_id=seq, sequence_start=True, sequence_end=True, headers=other
        )
        assert position(r) == 1  # the other owner's sequence of the same id
    finally:
        r = triton.infer(MODEL, [text_input("d")], sequence_id=seq, sequence_end=True)
    assert position(r) == 4


def test_requests_without_a_sequence_id_are_refused(triton: tg.InferenceServerClient) -> None:
    e = error_of(triton.infer, MODEL, [text_input("x")])
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "sequence_id" in e.message()


def test_offset_is_exactly_once(triton: tg.InferenceServerClient) -> None:
    seq = next(_ids)
    r = triton.infer(MODEL, [text_input("ab"), offset_input(0)], sequence_id=seq, sequence_start=True)
    first = top(r)
    r = triton.infer(MODEL, [text_input("cd"), offset_input(2)], sequence_id=seq)
    again = triton.infer(MODEL, [text_input("cd"), offset_input(2)], sequence_id=seq)  # a retry: not applied twice
    assert position(again) == position(r) == 4 and top(again) == top(r)
    e = error_of(triton.infer, MODEL, [text_input("ef"), offset_input(9)], sequence_id=seq)
    assert e.status() == "StatusCode.ABORTED" and "expected offset 4" in e.message()
    r = triton.infer(MODEL, [text_input("e")], sequence_id=seq, sequence_end=True)  # no OFFSET: continues
    assert position(r) == 5 and first


def test_completion_equals_the_native_greedy_completion(
    triton: tg.InferenceServerClient, native: rpc.CellserveServiceStub
) -> None:
    sid = native.OpenSession(svc.OpenSessionRequest(model=MODEL), timeout=10).session.session_id
    native.Append(svc.AppendRequest(session_id=sid, offset=0, input=types.Input(text="import o")), timeout=10)
    want = "".join(c.chunk.text for c in native.Complete(svc.CompleteRequest(session_id=sid, max_chars=12), timeout=30))
    native.CloseSession(svc.CloseSessionRequest(session_id=sid), timeout=10)
    r = triton.infer(
        MODEL,
        [text_input("import o")],
        sequence_id=next(_ids),
        sequence_start=True,
        sequence_end=True,
        parameters={"complete_chars": 12, "temperature": 0.0},
    )
    got = r.as_numpy("COMPLETION")
    assert got.shape == (1,) and got[0].decode("utf-8") == want and len(want) == 12
    assert position(r) == len("import o")  # a completion never moves the sequence


def test_requested_outputs_only(triton: tg.InferenceServerClient) -> None:
    r = triton.infer(
        MODEL,
        [text_input("a")],
        sequence_id=next(_ids),
        sequence_start=True,
        sequence_end=True,
        outputs=[tg.InferRequestedOutput("POSITION")],
    )
    assert [o.name for o in r.get_response().outputs] == ["POSITION"] and position(r) == 1
    # COMPLETION without a completion (load tools ask for every output the config lists): empty.
    r = triton.infer(
        MODEL,
        [text_input("a")],
        sequence_id=next(_ids),
        sequence_start=True,
        sequence_end=True,
        outputs=[tg.InferRequestedOutput("COMPLETION"), tg.InferRequestedOutput("TOP_CHARS")],
    )
    assert r.as_numpy("COMPLETION").shape == (0,) and len(r.as_numpy("TOP_CHARS")) == 5


def _tensor(name: str, dtype: str, shape: list[int]) -> tg.InferInput:
    t = tg.InferInput(name, shape, dtype)
    data = {"BYTES": np.array(["a"] * shape[0], dtype=object), "INT32": np.zeros(shape, dtype=np.int32)}
    t.set_data_from_numpy(data.get(dtype, np.zeros(shape, dtype=np.int64)))
    return t


BAD_REQUESTS = {
    "dtype": ([_tensor("TEXT", "INT32", [1])], {}, "input TEXT must be BYTES, not INT32"),
    "shape": ([_tensor("TEXT", "BYTES", [2])], {}, "input TEXT must have shape [1], not [2]"),
    "name": ([_tensor("PROMPT", "BYTES", [1])], {}, "unknown input 'PROMPT'"),
    "missing": ([], {}, "input TEXT (BYTES [1], one UTF-8 piece) is required"),
    "utf8": ([text_input(b"a\xff")], {}, "input TEXT is not valid UTF-8 (at byte 1)"),
    "empty": ([text_input(b"")], {}, "input TEXT is empty"),
    "offset-dtype": ([text_input("a"), _tensor("OFFSET", "INT64", [1])], {}, "input OFFSET must be UINT64, not INT64"),
    "twice": ([text_input("a"), text_input("b")], {}, "input TEXT is given twice"),
    "top-k": ([text_input("a")], {"top_k": 10_000}, "parameter top_k is 10000; it must be 0..64 (max_top_k)"),
    "complete-chars": ([text_input("a")], {"complete_chars": 0}, "parameter complete_chars is 0; it must be 1..256"),
    "orphan": ([text_input("a")], {"temperature": 0.5}, "parameter temperature needs the parameter complete_chars"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_tensors_and_parameters_are_refused_and_change_nothing(triton: tg.InferenceServerClient, case: str) -> None:
    inputs, params, message = BAD_REQUESTS[case]
    seq = next(_ids)
    e = error_of(triton.infer, MODEL, inputs, sequence_id=seq, sequence_start=True, parameters=params)
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and message in e.message(), e.message()
    # Nothing was opened: the START can be sent again.
    r = triton.infer(MODEL, [text_input("a")], sequence_id=seq, sequence_start=True, sequence_end=True)
    assert position(r) == 1


def test_unknown_model_and_version(triton: tg.InferenceServerClient) -> None:
    e = error_of(triton.infer, "no-such-model", [text_input("a")], sequence_id=1, sequence_start=True)
    assert e.status() == "StatusCode.NOT_FOUND" and "unknown model 'no-such-model'" in e.message()
    e = error_of(triton.infer, MODEL, [text_input("a")], model_version="2", sequence_id=1, sequence_start=True)
    assert e.status() == "StatusCode.NOT_FOUND" and "version 1 only" in e.message()
    assert not triton.is_model_ready("no-such-model") and triton.is_model_ready(MODEL, "1")


def test_health_metadata_config_and_index(triton: tg.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata(as_json=True)
    assert meta["name"] == "cellserve" and "sequence" in meta["extensions"]
    index = triton.get_model_repository_index(as_json=True)
    assert {(m["name"], m["state"]) for m in index["models"]} == {("tiny-lstm", "READY"), ("tiny-gru", "READY")}
    md = triton.get_model_metadata(MODEL, as_json=True)
    assert md["platform"] == "cellserve_lstm" and md["versions"] == ["1"]
    assert [(t["name"], t["datatype"]) for t in md["inputs"]] == [("TEXT", "BYTES"), ("OFFSET", "UINT64")]
    config = triton.get_model_config(MODEL, as_json=True)["config"]
    assert "sequence_batching" in config and config.get("max_batch_size", 0) == 0
    assert [i.get("optional", False) for i in config["input"]] == [False, True]
    assert int(config["sequence_batching"]["max_sequence_idle_microseconds"]) == 900_000_000


def test_statistics_count_this_models_requests(triton: tg.InferenceServerClient) -> None:
    """Requests are counted at the front; executions, queue and compute from the engine's
    per-iteration statistics of the same model (the other model's stay as they were)."""

    def counts(model: str) -> dict[str, int]:
        (s,) = triton.get_inference_statistics(model, as_json=True)["model_stats"]
        stats = s.get("inference_stats", {})
        return {
            "inferences": int(s.get("inference_count", 0)),
            "executions": int(s.get("execution_count", 0)),
            "fails": int(stats.get("fail", {}).get("count", 0)),
            "queued": int(stats.get("queue", {}).get("count", 0)),
            "rows": int(stats.get("compute_infer", {}).get("count", 0)),
            "compute_ns": int(stats.get("compute_infer", {}).get("ns", 0)),
        }

    before, other_before = counts("tiny-gru"), counts(MODEL)
    seq = next(_ids)
    for i in range(3):
        triton.infer("tiny-gru", [text_input("a")], sequence_id=seq, sequence_start=i == 0, sequence_end=i == 2)
    error_of(triton.infer, "tiny-gru", [text_input("a")], sequence_id=seq)
    after = counts("tiny-gru")
    delta = {k: after[k] - before[k] for k in after}
    assert (delta["inferences"], delta["fails"]) == (3, 1)
    # Each unary append waits for its answer, so the three ran in one to three engine batches,
    # plus the START's start-state write when it ran alone: in one process the first append
    # joins it (the open returns at once), through a frontend the open's round trip comes first.
    assert 1 <= delta["executions"] <= 4
    assert delta["queued"] >= 3 and delta["rows"] >= 3 and delta["compute_ns"] > 0
    assert counts(MODEL) == other_before
    all_models = triton.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in all_models} == {"tiny-lstm", "tiny-gru"}


def test_unary_errors_are_grpc_statuses(kserver: object) -> None:
    """Below tritonclient: the gRPC status itself (not only tritonclient's rendering of it)."""
    from cellserve_client._proto.inference import grpc_service_pb2 as kpb
    from cellserve_client._proto.inference import grpc_service_pb2_grpc as krpc

    with grpc.insecure_channel(kserver.target) as ch:  # type: ignore[attr-defined]
        stub = krpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(kpb.ModelInferRequest(model_name=MODEL), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_a_start_whose_append_fails_leaves_nothing(triton: tg.InferenceServerClient) -> None:
    """The START's session opened, its append was refused (offset 3 of a new sequence): the
    session is closed again, so the START can be retried as is."""
    seq = next(_ids)
    e = error_of(triton.infer, MODEL, [text_input("ab"), offset_input(3)], sequence_id=seq, sequence_start=True)
    assert e.status() == "StatusCode.ABORTED" and "expected offset 0" in e.message()
    e = error_of(triton.infer, MODEL, [text_input("ab")], sequence_id=seq)
    assert "must specify the START flag" in e.message()
    r = triton.infer(
        MODEL, [text_input("ab"), offset_input(0)], sequence_id=seq, sequence_start=True, sequence_end=True
    )
    assert position(r) == 2


def test_a_sequence_goes_on_from_any_connection(kserver: ServerProcess) -> None:
    # Each request on a connection of its own: with two frontends they land on either, and the
    # sequence id -> session table is the engine core's, so every one finds the sequence.
    seq, pieces = next(_ids), ["ab", "c", "de", "f", "gh", "i"]
    want = 0
    for i, piece in enumerate(pieces):
        client = tg.InferenceServerClient(kserver.target, channel_args=[("grpc.use_local_subchannel_pool", 1)])
        try:
            r = client.infer(
                MODEL, [text_input(piece)], sequence_id=seq, sequence_start=i == 0, sequence_end=i == len(pieces) - 1
            )
        finally:
            client.close()
        want += len(piece)
        assert position(r) == want


def test_owner_restart_reaches_the_sequence_from_any_connection(kserver: ServerProcess) -> None:
    seq = next(_ids)
    for text in ("abc", "zz", "q"):  # every START restarts the live sequence, whichever frontend
        client = tg.InferenceServerClient(kserver.target, channel_args=[("grpc.use_local_subchannel_pool", 1)])
        try:
            assert position(client.infer(MODEL, [text_input(text)], sequence_id=seq, sequence_start=True)) == len(text)
        finally:
            client.close()
    client = tg.InferenceServerClient(kserver.target)
    try:
        assert position(client.infer(MODEL, [text_input("r")], sequence_id=seq, sequence_end=True)) == 2
    finally:
        client.close()
