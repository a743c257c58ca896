"""ModelStreamInfer with tritonclient, sync (callback) and grpc.aio: interleaved sequences answer
in request order with the native API's predictions; a failed request is answered in-band
(error_message) and the stream goes on."""

from __future__ import annotations

import asyncio
import itertools
import queue
from collections.abc import AsyncIterator
from typing import Any

import tritonclient.grpc.aio as tga
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from servers import ServerProcess

from .conftest import MODEL, assert_same, native_predictions, position, text_input, tg, top

_ids = itertools.count(9000)
TEXTS = {"a": ["for ", "i in", " range(3):"], "b": ["héllo", " wörld", "!"]}
WAIT_S = 60.0


def test_sync_stream_interleaved_sequences_and_in_band_errors(
    triton: tg.InferenceServerClient, native: rpc.CellserveServiceStub
) -> None:
    want = {k: native_predictions(native, v) for k, v in TEXTS.items()}
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    triton.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        seqs = {k: next(_ids) for k in TEXTS}
        sent: list[tuple[str, int]] = []
        for i in range(3):
            for k, pieces in TEXTS.items():
                triton.async_stream_infer(
                    MODEL, [text_input(pieces[i])], sequence_id=seqs[k], sequence_start=i == 0, sequence_end=i == 2,
                    request_id=f"{k}{i}",
                )  # fmt: skip
                sent.append((k, i))
            if i == 1:  # a bad request between good ones: answered in-band, in order
                triton.async_stream_infer(MODEL, [text_input("x")], sequence_id=next(_ids), request_id="bad")
                sent.append(("bad", 0))
        for k, i in sent:
            result, error = results.get(timeout=WAIT_S)
            if k == "bad":
                assert result is None and "must specify the START flag" in error.message()
                continue
            assert error is None, error
            assert result.get_response().id == f"{k}{i}"
            assert_same(top(result), want[k][i])
            assert position(result) == sum(len(p) for p in TEXTS[k][: i + 1])
    finally:
        triton.stop_stream()


def test_aio_unary_and_stream(kserver: ServerProcess, native: rpc.CellserveServiceStub) -> None:
    pieces = TEXTS["a"]
    want = native_predictions(native, pieces)

    async def run() -> None:
        client = tga.InferenceServerClient(kserver.target)
        try:
            assert await client.is_server_ready()
            seq = next(_ids)
            r = await client.infer(MODEL, [text_input(pieces[0])], sequence_id=seq, sequence_start=True)
            assert_same(top(r), want[0])

            async def requests() -> AsyncIterator[dict[str, Any]]:
                for i, piece in enumerate(pieces[1:], start=1):
                    yield {"model_name": MODEL, "inputs": [text_input(piece)], "sequence_id": seq,
                           "sequence_end": i == len(pieces) - 1}  # fmt: skip
                yield {"model_name": MODEL, "inputs": [text_input("z")], "sequence_id": seq}  # ended: refused

            answers = []
            async for result, error in client.stream_infer(requests(), stream_timeout=WAIT_S):
                answers.append((result, error))
                if len(answers) == len(pieces):
                    break
            for i, (result, error) in enumerate(answers[:-1], start=1):
                assert error is None, error
                assert_same(top(result), want[i])
            result, error = answers[-1]
            assert result is None and "must specify the START flag" in error.message()
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(run(), WAIT_S))


def test_stream_error_carries_the_code_and_request_id(kserver: ServerProcess) -> None:
    """Below tritonclient: the in-band error names the request and its status code."""
    import grpc
    from cellserve_client._proto.inference import grpc_service_pb2 as kpb
    from cellserve_client._proto.inference import grpc_service_pb2_grpc as krpc

    req = kpb.ModelInferRequest(model_name=MODEL, id="r1")
    req.parameters["sequence_id"].int64_param = next(_ids)
    with grpc.insecure_channel(kserver.target) as ch:
        (response,) = list(krpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(iter([req]), timeout=WAIT_S))
    assert "input TEXT" in response.error_message
    assert response.infer_response.id == "r1"
    assert response.infer_response.parameters["error_code"].string_param == "INVALID_ARGUMENT"
