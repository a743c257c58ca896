"""``Client.inspect_gates``: typed gate detail from the server, and its errors as SDK exceptions."""

from __future__ import annotations

import asyncio

import pytest
from cellserve_client import AsyncClient, Cell, Client, InvalidInput, ModelNotFound
from servers import ServerProcess


def test_inspect_gates_is_typed(server: ServerProcess) -> None:
    with Client(server.target) as c:
        r = c.inspect_gates("import o", top_units=2, top_k=3)
        assert r.model == "tiny-lstm" and r.cell is Cell.LSTM and r.first_index == 0
        assert "".join(ch.character for ch in r.characters) == "import o"
        last = r.characters[-1]
        assert [[g.name for g in layer] for layer in last.layers] == [["f", "i", "o"]] * 2
        assert len(last.gate(1, "o").top_units) == 2 and last.gate(1, "o").top_units[0].change is not None
        assert r.characters[0].gate(0, "f").top_units[0].change is None  # nothing before the first character
        assert len(last.top) == 3 and 0 < last.top[0][1] <= 1
        g = c.inspect_gates("hello", model="tiny-gru", last_chars=2)
        assert g.cell is Cell.GRU and g.first_index == 3 and [x.name for x in g.characters[0].layers[0]] == ["r", "z"]


def test_inspect_gates_errors(server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(server.target) as c:
            with pytest.raises(ModelNotFound):
                await c.inspect_gates("abc", model="nope")
            with pytest.raises(InvalidInput, match="last_chars"):
                await c.inspect_gates("x" * 1000)

    asyncio.run(main())
