"""The tensor contract of cellserve's models on the KServe v2 surface: inputs decoded from a
``ModelInferRequest`` (raw or typed contents), outputs encoded as raw contents.

Inputs: ``TEXT`` BYTES [1] (one UTF-8 piece), optional ``OFFSET`` UINT64 [1] (exactly-once).
Outputs: ``TOP_CHARS`` BYTES [k], ``TOP_PROBS`` FP32 [k], ``POSITION`` UINT64 [1], and with a
completion ``COMPLETION`` BYTES [n]. Errors are ``InvalidInput`` naming the tensor.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ...engine.types import Prediction
from ...errors import InvalidInput
from .pb import kpb, mc

TEXT, OFFSET = "TEXT", "OFFSET"
TOP_CHARS, TOP_PROBS, POSITION, COMPLETION = "TOP_CHARS", "TOP_PROBS", "POSITION", "COMPLETION"
INPUTS: dict[str, str] = {TEXT: "BYTES", OFFSET: "UINT64"}  # name -> datatype; shape [1] each
OUTPUTS: dict[str, tuple[str, int]] = {  # name -> (datatype, dim: -1 varies)
    TOP_CHARS: ("BYTES", -1),
    TOP_PROBS: ("FP32", -1),
    POSITION: ("UINT64", 1),
    COMPLETION: ("BYTES", -1),
}
CONFIG_TYPES = {"BYTES": mc.TYPE_STRING, "UINT64": mc.TYPE_UINT64, "FP32": mc.TYPE_FP32}
_LEN = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class Inputs:
    text: str
    offset: int | None  # None: the sequence's next position


def decode_inputs(request: kpb.ModelInferRequest, max_chars: int) -> Inputs:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input, in order"
        )
    seen: dict[str, int | str] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name not in INPUTS:
            raise InvalidInput(
                f"unknown input {name!r}; the inputs are TEXT (BYTES [1]) and optional OFFSET (UINT64 [1])"
            )
        if name in seen:
            raise InvalidInput(f"input {name} is given twice")
        if tensor.datatype != INPUTS[name]:
            raise InvalidInput(f"input {name} must be {INPUTS[name]}, not {tensor.datatype or 'unset'}")
        if list(tensor.shape) != [1]:
            raise InvalidInput(f"input {name} must have shape [1], not {list(tensor.shape)}")
        if raw and tensor.HasField("contents"):
            raise InvalidInput(f"input {name} has both contents and raw_input_contents; give one")
        if name == TEXT:
            seen[name] = _text(raw[i] if raw else None, tensor, max_chars)
        else:
            seen[name] = _offset(raw[i] if raw else None, tensor)
    if TEXT not in seen:
        raise InvalidInput("input TEXT (BYTES [1], one UTF-8 piece) is required")
    offset = seen.get(OFFSET)
    return Inputs(str(seen[TEXT]), offset if isinstance(offset, int) else None)


def _text(raw: bytes | None, tensor: kpb.ModelInferRequest.InferInputTensor, max_chars: int) -> str:
    if raw is not None:
        if len(raw) < _LEN.size or _LEN.unpack_from(raw)[0] != len(raw) - _LEN.size:
            raise InvalidInput(
                "input TEXT raw contents must be one element: a 4-byte little-endian length, then that many bytes"
            )
        data = raw[_LEN.size :]
    else:
        items = tensor.contents.bytes_contents
        if len(items) != 1:
            raise InvalidInput(f"input TEXT must hold one element in contents.bytes_contents, not {len(items)}")
        data = items[0]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"input TEXT is not valid UTF-8 (at byte {e.start})") from None
    if not text:
        raise InvalidInput("input TEXT is empty")
    if len(text) > max_chars:
        raise InvalidInput(f"input TEXT has {len(text)} characters; the limit is {max_chars} (max_append_chars)")
    return text


def _offset(raw: bytes | None, tensor: kpb.ModelInferRequest.InferInputTensor) -> int:
    if raw is not None:
        if len(raw) != _U64.size:
            raise InvalidInput(f"input OFFSET raw contents must be 8 bytes (one little-endian UINT64), not {len(raw)}")
        value: int = _U64.unpack(raw)[0]
        return value
    items = tensor.contents.uint64_contents
    if len(items) != 1:
        raise InvalidInput(f"input OFFSET must hold one element in contents.uint64_contents, not {len(items)}")
    return int(items[0])


def requested_outputs(request: kpb.ModelInferRequest, completing: bool) -> list[str]:
    """The outputs to send, in the order asked (every applicable one when none is named).
    COMPLETION asked for without a completion (load tools ask for every output the config
    lists) is sent empty, shape [0]."""
    if not request.outputs:
        return [n for n in OUTPUTS if n != COMPLETION or completing]
    names: list[str] = []
    for out in request.outputs:
        if out.name not in OUTPUTS:
            raise InvalidInput(f"unknown output {out.name!r}; the outputs are {', '.join(OUTPUTS)}")
        if out.name not in names:
            names.append(out.name)
    return names


def _bytes_elements(items: Sequence[str]) -> bytes:
    parts: list[bytes] = []
    for item in items:
        data = item.encode("utf-8")
        parts += (_LEN.pack(len(data)), data)
    return b"".join(parts)


def add_outputs(
    response: kpb.ModelInferResponse, names: Sequence[str], pred: Prediction, completions: Sequence[str]
) -> None:
    """Appends the named outputs to ``response`` as raw contents (what tritonclient reads)."""
    for name in names:
        if name == TOP_CHARS:
            shape, raw = len(pred.top_k), _bytes_elements([c for c, _ in pred.top_k])
        elif name == TOP_PROBS:
            shape, raw = len(pred.top_k), struct.pack(f"<{len(pred.top_k)}f", *(p for _, p in pred.top_k))
        elif name == POSITION:
            shape, raw = 1, _U64.pack(pred.position)
        else:
            shape, raw = len(completions), _bytes_elements(completions)
        response.outputs.add(name=name, datatype=OUTPUTS[name][0], shape=[shape])
        response.raw_output_contents.append(raw)
