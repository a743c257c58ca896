"""InspectGates on the wire: equals the offline inspection, and bad requests get clear statuses."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cellserve.inspection import inspect_gates
from cellserve.nn.checkpoint import load_model
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .conftest import rpc_error


def _request(text: str | None, **kw: object) -> svc.InspectGatesRequest:
    req = svc.InspectGatesRequest(**kw)  # type: ignore[arg-type]
    if text is not None:
        req.input.text = text
    return req


@pytest.mark.parametrize(("model", "cell", "names"), [("", types.CELL_LSTM, "fio"), ("tiny-gru", types.CELL_GRU, "rz")])
def test_inspect_gates_equals_the_offline_inspection(
    stub: rpc.CellserveServiceStub, model_dir: Path, model: str, cell: int, names: str
) -> None:
    text = "import os\nprint(os.sep)"
    resp = stub.InspectGates(_request(text, model=model, last_chars=10, top_units=3, top_k=4), timeout=60)
    name = model or "tiny-lstm"  # the default: lowest bits/char
    assert resp.model == name and resp.cell == cell and resp.first_index == len(text) - 10
    first, rows = inspect_gates(load_model(model_dir / name), text, last_chars=10, top_units=3, top_k=4)
    assert len(resp.characters) == len(rows) == 10
    for got, want in zip(resp.characters, rows, strict=True):
        assert got.character == want.char
        assert [(e.character, pytest.approx(e.probability, abs=1e-6)) for e in got.next.entries] == list(want.top)
        for gl, wl in zip(got.layers, want.layers, strict=True):
            assert "".join(g.name for g in gl.gates) == names
            for g, w in zip(gl.gates, wl, strict=True):
                assert g.mean == pytest.approx(w.mean, abs=1e-6)
                assert [u.unit for u in g.top_units] == [u.unit for u in w.top_units]
                assert all(u.HasField("change") for u in g.top_units)


def test_first_character_has_no_change(stub: rpc.CellserveServiceStub) -> None:
    resp = stub.InspectGates(_request("ab"), timeout=60)
    assert [c.character for c in resp.characters] == ["a", "b"]
    first, second = (c.layers[0].gates[0].top_units for c in resp.characters)
    assert len(first) == 4 and not any(u.HasField("change") for u in first)  # defaults: 4 units
    assert all(u.HasField("change") for u in second)
    assert len(resp.characters[0].next.entries) == 5  # default top_k


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (_request(None), grpc.StatusCode.INVALID_ARGUMENT, "input is required"),
        (_request(""), grpc.StatusCode.INVALID_ARGUMENT, "input.text is empty"),
        (_request("x" * 600), grpc.StatusCode.INVALID_ARGUMENT, "set last_chars"),
        (_request("x" * 5000, last_chars=10), grpc.StatusCode.INVALID_ARGUMENT, "max_append_chars"),
        (_request("abc", last_chars=0), grpc.StatusCode.INVALID_ARGUMENT, "last_chars is 0"),
        (_request("abc", last_chars=513), grpc.StatusCode.INVALID_ARGUMENT, "at most 512"),
        (_request("abc", top_units=33), grpc.StatusCode.INVALID_ARGUMENT, "top_units is 33"),
        (_request("abc", top_k=100000), grpc.StatusCode.INVALID_ARGUMENT, "max_top_k"),
        (_request("abc", model="no-such-model"), grpc.StatusCode.NOT_FOUND, "unknown model"),
    ],
)
def test_bad_requests_get_clear_statuses(
    stub: rpc.CellserveServiceStub, request_: svc.InspectGatesRequest, code: grpc.StatusCode, words: str
) -> None:
    err = rpc_error(stub.InspectGates, request_, timeout=30)
    assert err.code() == code
    assert words in err.details()
    assert "Traceback" not in err.details() and "/" not in err.details()


def test_text_longer_than_the_span_is_context(stub: rpc.CellserveServiceStub) -> None:
    text = "x = 1\n" * 200  # 1200 characters: only the last 3 are reported
    resp = stub.InspectGates(_request(text, last_chars=3, top_units=0, top_k=0), timeout=60)
    assert resp.first_index == 1197 and [c.character for c in resp.characters] == list(" 1\n")
    assert not resp.characters[0].HasField("next") and not resp.characters[0].layers[0].gates[0].top_units
