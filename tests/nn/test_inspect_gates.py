"""The gate inspection (``cellserve.inspection``) agrees with nn.LSTM/nn.GRU: the gates it
reports reproduce the module's own states through the cell equations, its next-character
probabilities are the module's, and a reported tail read after a fast prefix equals the same
characters read through the reference cells all the way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cellserve.inspection import inspect_gates
from cellserve.nn.cells import run_with_gates
from cellserve.nn.checkpoint import load_model

TEXT = "def f(x):\n    return x + 1\n"


@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-gru"])
def test_probabilities_equal_the_torch_module(model_dir: Path, name: str) -> None:
    loaded = load_model(model_dir / name)
    first, rows = inspect_gates(loaded, TEXT, top_k=4)
    assert first == 0 and "".join(r.char for r in rows) == TEXT
    with torch.no_grad():
        probs = loaded.model(loaded.vocab.encode_tensor(TEXT)[None])[0][0].softmax(-1)  # nn.LSTM / nn.GRU
    for t, r in enumerate(rows):
        want_p, want_i = probs[t].topk(4)
        assert [c for c, _ in r.top] == [loaded.vocab.char(i) for i in want_i.tolist()]
        torch.testing.assert_close(torch.tensor([p for _, p in r.top]), want_p, rtol=0, atol=1e-5)


def test_lstm_gates_reproduce_the_module_cell_state(model_dir: Path) -> None:
    """c_t = f * c_{t-1} + i * g with the module's c: the gates are the module's own."""
    loaded = load_model(model_dir / "tiny-lstm")
    model, tokens = loaded.model, loaded.vocab.encode_tensor(TEXT)[None]
    _, _, steps = run_with_gates(model, tokens)
    state = model.init_state(1)
    with torch.no_grad():
        for t, step in enumerate(steps):
            _, new = model(tokens[:, t : t + 1], state)  # the fused module, one character
            f, i, g = (step.gates[n] for n in "fig")
            torch.testing.assert_close(new[1], f * state[1] + i * g, rtol=0, atol=1e-5)
            state = new
    _, rows = inspect_gates(loaded, TEXT, top_units=0)
    for t, r in enumerate(rows):
        for layer in range(model.layers):
            for n in "fio":
                assert r.mean(layer, n) == pytest.approx(float(steps[t].gates[n][layer, 0].mean()), abs=1e-6)


def test_gru_update_gate_reproduces_the_module_state(model_dir: Path) -> None:
    """h_t = (1 - z) * n + z * h_{t-1} with the module's h (PyTorch's z: 1 keeps the state)."""
    loaded = load_model(model_dir / "tiny-gru")
    model, tokens = loaded.model, loaded.vocab.encode_tensor(TEXT)[None]
    _, _, steps = run_with_gates(model, tokens)
    state = model.init_state(1)
    with torch.no_grad():
        for t, step in enumerate(steps):
            _, new = model(tokens[:, t : t + 1], state)
            z, n = step.gates["z"], step.gates["n"]
            torch.testing.assert_close(new[0], (1 - z) * n + z * state[0], rtol=0, atol=1e-5)
            state = new
    _, rows = inspect_gates(loaded, TEXT)
    assert [g.name for g in rows[0].layers[0]] == ["r", "z"]


@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-gru"])
def test_tail_after_a_fast_prefix_equals_the_full_reference_run(model_dir: Path, name: str) -> None:
    loaded = load_model(model_dir / name)
    _, full = inspect_gates(loaded, TEXT, top_units=3)
    first, tail = inspect_gates(loaded, TEXT, last_chars=7, top_units=3)
    assert first == len(TEXT) - 7 and len(tail) == 7
    for a, b in zip(full[first:], tail, strict=True):
        assert a.char == b.char
        for la, lb in zip(a.layers, b.layers, strict=True):
            for ga, gb in zip(la, lb, strict=True):
                assert ga.mean == pytest.approx(gb.mean, abs=1e-5)
                assert [u.unit for u in ga.top_units] == [u.unit for u in gb.top_units]
                assert all(u.change is not None for u in gb.top_units)  # the prefix gives a previous value


def test_top_units_are_the_units_that_moved_most(model_dir: Path) -> None:
    loaded = load_model(model_dir / "tiny-lstm")
    _, _, steps = run_with_gates(loaded.model, loaded.vocab.encode_tensor(TEXT)[None])
    _, rows = inspect_gates(loaded, TEXT, top_units=5)
    for layer in range(2):
        first = rows[0].layers[layer][0]  # f of the first character: no previous value
        assert all(u.change is None for u in first.top_units)
        f0 = steps[0].gates["f"][layer, 0]
        assert [u.unit for u in first.top_units] == (f0 - 0.5).abs().topk(5).indices.tolist()
        for t in range(1, len(TEXT)):
            cur, prev = steps[t].gates["f"][layer, 0], steps[t - 1].gates["f"][layer, 0]
            got = rows[t].layers[layer][0].top_units
            assert [u.unit for u in got] == (cur - prev).abs().topk(5).indices.tolist()
            for u in got:
                assert u.value == pytest.approx(float(cur[u.unit]), abs=1e-6)
                assert u.change == pytest.approx(float(cur[u.unit] - prev[u.unit]), abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-gru"])
def test_inspection_on_cuda_equals_cpu(model_dir: Path, name: str) -> None:
    """A served model lives on the GPU: the inspection runs there and agrees with the CPU."""
    cpu = inspect_gates(load_model(model_dir / name), TEXT, last_chars=9, top_units=2)
    gpu = inspect_gates(load_model(model_dir / name, "cuda"), TEXT, last_chars=9, top_units=2)
    assert cpu[0] == gpu[0]
    for a, b in zip(cpu[1], gpu[1], strict=True):
        assert [c for c, _ in a.top] == [c for c, _ in b.top]
        for la, lb in zip(a.layers, b.layers, strict=True):
            for ga, gb in zip(la, lb, strict=True):
                assert ga.mean == pytest.approx(gb.mean, abs=1e-4)
