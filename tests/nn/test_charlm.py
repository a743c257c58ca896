"""The model's contract: stepwise serving equals the full-sequence forward."""

from __future__ import annotations

import pytest
import torch
from cellserve.nn.charlm import CharLM


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stepwise_equals_full_sequence(cell: str) -> None:
    torch.manual_seed(0)
    model = CharLM(cell, vocab_size=50, embedding=12, hidden=24, layers=3).eval()  # type: ignore[arg-type]
    tokens = torch.randint(0, 50, (4, 40))
    with torch.no_grad():
        full, full_state = model(tokens)
        state = model.init_state(4)
        steps = []
        for t in range(tokens.shape[1]):
            logits, state = model(tokens[:, t : t + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
    for a, b in zip(state, full_state, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell,arity", [("lstm", 2), ("gru", 1)])
def test_state_layout_is_torchs(cell: str, arity: int) -> None:
    model = CharLM(cell, 10, 4, 8, 2)  # type: ignore[arg-type]
    state = model.init_state(3)
    assert len(state) == arity == model.state_arity
    assert all(s.shape == (2, 3, 8) for s in state)
    logits, new = model(torch.zeros(3, 5, dtype=torch.long), state)
    assert logits.shape == (3, 5, 10)
    assert [s.shape for s in new] == [s.shape for s in state]


def test_unknown_cell_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown cell 'rnn'"):
        CharLM("rnn", 10, 4, 8, 1)  # type: ignore[arg-type]
