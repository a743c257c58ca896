"""The ``sequences`` workload of the load generator: what perf_analyzer sends with
``--streaming --sequence-length L``, so that the two tools can be compared on the same traffic.

Each concurrent slot runs sequences back to back, closed loop: a sequence is ``L`` requests,
request i appending character i of ``sequence_text`` (one keystroke each), the next request
sent once the previous one is answered. Latency is per request, from sending it to its answer.

Two surfaces (``Workload.surface``):

- ``kserve``: one ``ModelStreamInfer`` stream per slot for all its sequences, exactly like
  perf_analyzer: request 0 carries ``sequence_start``, request L-1 ``sequence_end``, every
  request ``sequence_id`` (unique per sequence) and the ``TEXT`` tensor as raw contents. Its
  first request's latency includes opening the session, its last one's closing it, as in
  perf_analyzer's figures.
- ``native``: cellserve's own ``Session`` stream, which holds one session: per sequence a new
  stream, ``open``, L appends, ``close``. Open and close are not timed (they are no
  inference); a stream is set up per sequence, which perf_analyzer does not do.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING, Any

import grpc
from cellserve_client._proto.inference import grpc_service_pb2 as kpb
from cellserve_client._proto.inference import grpc_service_pb2_grpc as krpc

if TYPE_CHECKING:
    from .loadgen import _Session

_LEN = struct.Struct("<I")
SEQUENCE_ID_BASE = 1 << 40  # far from the small ids tests and examples use


def _kserve_request(model: str, seq_id: int, i: int, length: int, ch: str) -> kpb.ModelInferRequest:
    raw = ch.encode()
    req = kpb.ModelInferRequest(
        model_name=model,
        inputs=[kpb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1])],
        raw_input_contents=[_LEN.pack(len(raw)) + raw],
    )
    req.parameters["sequence_id"].uint64_param = seq_id
    if i == 0:
        req.parameters["sequence_start"].bool_param = True
    if i == length - 1:
        req.parameters["sequence_end"].bool_param = True
    return req


async def kserve_sequences(s: _Session, channel: grpc.aio.Channel) -> None:
    w = s.w
    call: Any = krpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
    s.call = call
    n = 0
    try:
        while s.clock() < s.t_end:
            seq_id = SEQUENCE_ID_BASE + s.index * 1_000_000 + n
            n += 1
            for i in range(w.sequence_length):
                sent = s.clock()
                await call.write(_kserve_request(w.model, seq_id, i, w.sequence_length, w.sequence_text[i]))
                r = await call.read()
                if r is grpc.aio.EOF:
                    raise RuntimeError("stream ended")
                if r.error_message:
                    s.error_text(r.error_message)
                    break  # the sequence is broken: the next one starts afresh
                s.answered(s.clock(), sent, "key", 1)
            # past the window the sequence is still finished (its END closes the session)
    finally:
        try:
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass


async def native_sequences(s: _Session, stub: Any) -> None:
    w = s.w
    while s.clock() < s.t_end:
        if s.call is None:
            await s.open(stub)
        s.offset = 0
        for i in range(w.sequence_length):
            piece = w.sequence_text[i]
            sent = s.clock()
            await s.call.write(s.append(piece))
            r = await s.call.read()
            if r is grpc.aio.EOF:
                raise RuntimeError("stream ended")
            if r.HasField("error"):
                s.error(r)
                break
            s.offset += 1
            s.answered(s.clock(), sent, "key", 1)
            if s.clock() >= s.t_end:
                break  # the close below ends the session
        await s.close()
        s.call = None
