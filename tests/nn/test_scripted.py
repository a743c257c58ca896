"""The TorchScript kernels (nn/scripted.py) compute exactly what their eager source computes,
bit for bit (torch.equal): the int8 recurrence (LSTM and GRU; one step, a sequence, a packed
batch of mixed lengths), the projection lookup, the keystroke step by token id (against the
module's own forward on the ids' embeddings), the memory mixer and the runner's pick. Scripting
falls back to the eager function when it is turned off or fails."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from cellserve.engine import runner
from cellserve.memory import mixer as mixer_mod
from cellserve.memory.features import EXPERTS, HOST_FEATURES
from cellserve.memory.mixer import EPS, Mixer
from cellserve.nn import int8, scripted
from cellserve.nn import precision as prec
from cellserve.nn.charlm import CharLM

VOCAB = 103
MODELS = Path(__file__).resolve().parents[2] / "models"


def served(cell: str) -> CharLM:
    torch.manual_seed(5)
    m = CharLM(cell, VOCAB, 16, 32, 2).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for p in m.rnn.parameters():
            p.mul_(3.0)
    return prec.convert(m, "int8")


def state(q: CharLM, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(q.layers, rows, q.hidden, generator=g).tanh()
    c = torch.randn(q.layers, rows, q.hidden, generator=g) * 3 if q.cell == "lstm" else None
    return h, c


def test_the_kernels_are_scripted() -> None:
    """torch 2.13 scripts them all: a silent fall back to eager would cost the speed."""
    for k in (int8._recurrence, int8._step_by_id, int8._project, mixer_mod._mix, runner._points):
        assert isinstance(k, torch.jit.ScriptFunction), k


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("sizes", [[5], [5, 5, 5, 5], [6, 6, 4, 3, 3, 1]], ids=["step", "sequence", "packed"])
def test_recurrence_scripted_equals_eager(cell: str, sizes: list[int]) -> None:
    q = served(cell)
    rnn = q.rnn
    assert isinstance(rnn, int8.FixedRangeRNN)
    ids = torch.randint(0, VOCAB, (sum(sizes),), generator=torch.Generator().manual_seed(1))
    below = rnn.project(q.embed(ids))
    h0, c0 = state(q, sizes[0], 2)
    outs = [
        k(below.clone(), sizes, h0, c0, rnn._hh, rnn._ih, q.hidden) for k in (int8._recurrence, int8._recurrence_eager)
    ]
    (every_a, lasts_a, c_a), (every_b, lasts_b, c_b) = outs
    assert all(torch.equal(a, b) for a, b in zip(every_a + lasts_a, every_b + lasts_b, strict=True))
    assert (c_a is None and c_b is None) or (c_a is not None and c_b is not None and torch.equal(c_a, c_b))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_step_by_id_equals_the_forward_on_embeddings(cell: str) -> None:
    q = served(cell)
    rnn = q.rnn
    assert isinstance(rnn, int8.FixedRangeRNN)
    ids = torch.tensor([3, 0, 102, 3, 57, 9, 9])
    h0, c0 = state(q, len(ids), 3)
    st = (h0,) if c0 is None else (h0, c0)
    # the engine passes a slice of its gathered states: not contiguous
    wide = tuple(torch.cat([s, s], dim=1)[:, : len(ids)] for s in st)
    got = rnn.step_ids(ids, wide)
    assert got is not None
    out, new = q.rnn_forward(q.embed(ids[:, None]), st)
    assert torch.equal(got[0], out[:, 0])
    assert all(torch.equal(a, b) for a, b in zip(got[1], new, strict=True))
    for k in (int8._step_by_id, int8._step_by_id_eager):
        o, h_n, c_n = k(ids, rnn.project.by_id, rnn.project.width, h0, c0, rnn._hh, rnn._ih, q.hidden)  # type: ignore[arg-type]
        assert torch.equal(o, out[:, 0]) and torch.equal(h_n, new[0])


def test_the_projection_scripted_equals_eager() -> None:
    q = served("lstm")
    p = q.rnn.project  # type: ignore[union-attr]
    x = q.embed(torch.arange(VOCAB))
    not_rows = x + 0.5  # not embedding rows: the fp32 projection
    for inp in (x, not_rows):
        a = int8._project(inp, p.ids.column, p._keys, p.rows, p.width, p.w_ih, p.b_ih)
        b = int8._project_eager(inp, p.ids.column, p._keys, p.rows, p.width, p.w_ih, p.b_ih)
        assert torch.equal(a, b)


def mixer_inputs(n: int, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    lp = torch.log_softmax(torch.randn(n, v, generator=g) * 3, -1)
    dists = torch.softmax(torch.randn(n, EXPERTS, v, generator=g) * 3, -1)
    host = torch.rand(n, HOST_FEATURES, generator=g)
    host[: n // 2, :3] = 0.0  # some experts absent
    return lp, dists, host


def test_the_mixer_scripted_equals_eager() -> None:
    m = Mixer.load(MODELS / "python-lstm")
    lp, dists, host = mixer_inputs(9, VOCAB)
    w = m.weights(torch.device("cpu"))
    assert torch.equal(m.mix(lp, dists, host), mixer_mod.mix_log_probs(lp, dists, host, w, EPS))


@pytest.mark.parametrize("mixing, normalized", [(True, False), (False, False), (False, True)])
def test_the_pick_scripted_equals_eager(mixing: bool, normalized: bool) -> None:
    """(``normalized``: log-probs mixed on the host come in, taken as they are.)"""
    m = Mixer.load(MODELS / "python-lstm")
    logits = torch.randn(9, VOCAB, generator=torch.Generator().manual_seed(4)) * 4
    _, dists, host = mixer_inputs(4, VOCAB)
    none = torch.empty(0, dtype=torch.long)
    mix = (torch.tensor([1, 3, 4, 8]), dists, host) if mixing else (none, none, none)
    gate = m.weights(torch.device("cpu")) if mixing else (none,) * 5
    if normalized:
        logits = torch.log_softmax(logits, dim=-1)
    args = (logits, mixing, *mix, gate, EPS, torch.tensor([0, 3, 8]), 5, torch.tensor([1, 3]), torch.tensor([7, 0]))
    (flat_a, lsm_a), (flat_b, lsm_b) = runner._points(*args, normalized), runner._points_eager(*args, normalized)
    assert torch.equal(lsm_a, lsm_b) and len(flat_a) == len(flat_b) == 3
    if normalized:  # taken as they are, not normalised again
        assert torch.equal(lsm_a, logits)
    assert all(torch.equal(a, b) for a, b in zip(flat_a, flat_b, strict=True))


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x + 1


_SCALE = 2.5


def _unscriptable(x: torch.Tensor) -> torch.Tensor:
    return x * _SCALE  # a float global: TorchScript refuses it


def test_scripting_falls_back_to_the_eager_function(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(scripted.scripted(_plain), torch.jit.ScriptFunction)
    with caplog.at_level(logging.WARNING, logger="cellserve.nn.scripted"):
        assert scripted.scripted(_unscriptable) is _unscriptable
    assert "running it eagerly" in caplog.text
    monkeypatch.setenv("CELLSERVE_TORCHSCRIPT", "0")
    assert scripted.scripted(_plain) is _plain
