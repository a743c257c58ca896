"""Reference cells, written from the gate equations, equal nn.LSTM / nn.GRU."""

from __future__ import annotations

import pytest
import torch
from cellserve.nn.cells import GRUCellRef, LSTMCellRef, run_with_gates
from cellserve.nn.charlm import CharLM


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_reference_cell_equals_torch(cell: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    layers, hidden, inp, batch, steps = 1 + seed % 3, 8 + 4 * seed, 5 + seed, 3, 17
    rnn_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    torch.manual_seed(seed)
    rnn = rnn_cls(inp, hidden, layers, batch_first=True)
    with torch.no_grad():  # random weights well outside the default init range
        for p in rnn.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    x = torch.randn(batch, steps, inp, generator=g)
    state = tuple(torch.randn(layers, batch, hidden, generator=g) for _ in range(2 if cell == "lstm" else 1))
    with torch.no_grad():
        out, ref_state = rnn(x, state if cell == "lstm" else state[0])
    ref_state = ref_state if cell == "lstm" else (ref_state,)
    ref = LSTMCellRef(rnn) if cell == "lstm" else GRUCellRef(rnn)
    st = state
    outs = []
    for t in range(steps):
        st, gates = ref.step(x[:, t], st)
        outs.append(st[0][-1])
        assert set(gates.gates) == set(ref.names)
        for v in gates.gates.values():
            assert v.shape == (layers, batch, hidden)
    torch.testing.assert_close(torch.stack(outs, 1), out, rtol=0, atol=1e-5)
    for a, b in zip(st, ref_state, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_lstm_gates_obey_their_equations() -> None:
    torch.manual_seed(3)
    rnn = torch.nn.LSTM(4, 6, 2, batch_first=True)
    ref = LSTMCellRef(rnn)
    state = (torch.randn(2, 1, 6), torch.randn(2, 1, 6))
    (h, c), g = ref.step(torch.randn(1, 4), state)
    f, i, gg, o = (g.gates[n] for n in "figo")
    torch.testing.assert_close(g.gates["c"], f * state[1] + i * gg)
    torch.testing.assert_close(h, o * c.tanh())
    assert ((f > 0) & (f < 1)).all() and ((gg > -1) & (gg < 1)).all()


def test_gru_update_gate_keeps_old_state_when_one() -> None:
    """PyTorch's z: z -> 1 keeps h_{t-1} (Cho et al. write it the other way round)."""
    torch.manual_seed(4)
    rnn = torch.nn.GRU(3, 5, 1, batch_first=True)
    with torch.no_grad():
        rnn.bias_ih_l0[5:10] = 50.0  # saturate z at 1
    h0 = torch.randn(1, 2, 5)
    (h1,), gates = GRUCellRef(rnn).step(torch.randn(2, 3), (h0,))
    assert torch.allclose(gates.gates["z"], torch.ones(1, 2, 5))
    torch.testing.assert_close(h1, h0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_run_with_gates_equals_model(cell: str) -> None:
    torch.manual_seed(5)
    model = CharLM(cell, 30, 8, 16, 2).eval()  # type: ignore[arg-type]
    tokens = torch.randint(0, 30, (2, 12))
    logits, state, trace = run_with_gates(model, tokens)
    with torch.no_grad():
        want, want_state = model(tokens)
    torch.testing.assert_close(logits, want, rtol=0, atol=1e-5)
    assert len(trace) == 12
    for a, b in zip(state, want_state, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
