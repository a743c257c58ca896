"""Gate-level reference cells, written from the equations with the very weights of nn.LSTM/nn.GRU.

They are slower than cuDNN/oneDNN and exist to make the gates observable (``cellserve inspect``,
Append with ``want_gates``) and to pin down what the fused kernels compute: the tests check them
against nn.LSTM/nn.GRU to 1e-5.

LSTM (PyTorch packs the four gates in the order i, f, g, o: ``weight_ih_l{k}`` is
[4H, in], rows [0:H] input gate, [H:2H] forget gate, [2H:3H] cell candidate, [3H:4H] output)::

    i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)      input gate
    f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)      forget gate
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)   cell candidate (textbook: c̃_t)
    o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)      output gate
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)

This is the textbook LSTM (Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al.
2000), with two bias vectors where the textbook has one (their sum is what matters).

GRU (gate order r, z, n: ``weight_ih_l{k}`` is [3H, in])::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)            reset gate
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)            update gate
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))   candidate (textbook: h̃_t)
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

Two differences from Cho et al. (2014), who write h_t = z_t ⊙ h̃_t + (1 − z_t) ⊙ h_{t−1} and
h̃_t = tanh(W x_t + U (r_t ⊙ h_{t−1})):

- z's role is swapped: in PyTorch z_t ≈ 1 *keeps* the old state (like an LSTM forget gate
  near 1); in Cho's notation z_t ≈ 1 takes the new candidate. ``inspect`` therefore reports
  PyTorch's z as "keep" strength, comparable to the LSTM forget gate.
- the reset gate is applied *after* the recurrent matrix product, r ⊙ (W_hn h + b_hn), as
  cuDNN does, rather than before it, W (r ⊙ h), as in Cho 2014. The two are different
  functions; these cells reproduce PyTorch's (and cuDNN's) exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .charlm import CharLM, State

LSTM_GATES = ("f", "i", "g", "o", "c")
GRU_GATES = ("r", "z", "n")


@dataclass
class StepGates:
    """Gate activations of one time step: ``gates[name]`` is [layers, batch, hidden]."""

    names: tuple[str, ...]
    gates: dict[str, torch.Tensor]


class _RefCell:
    def __init__(self, rnn: nn.LSTM | nn.GRU) -> None:
        if not rnn.batch_first or rnn.bidirectional or getattr(rnn, "proj_size", False):
            raise ValueError("reference cells support unidirectional, batch_first modules without projections")
        self.layers = rnn.num_layers
        # (w_ih [G*H, in], w_hh [G*H, H], b_ih [G*H], b_hh [G*H]) per layer; zeros where bias=False
        self.params: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for k in range(rnn.num_layers):
            w_ih = getattr(rnn, f"weight_ih_l{k}")
            w_hh = getattr(rnn, f"weight_hh_l{k}")
            zeros = torch.zeros(w_ih.shape[0], dtype=w_ih.dtype, device=w_ih.device)
            b_ih = getattr(rnn, f"bias_ih_l{k}", None) if rnn.bias else None
            b_hh = getattr(rnn, f"bias_hh_l{k}", None) if rnn.bias else None
            self.params.append((w_ih, w_hh, zeros if b_ih is None else b_ih, zeros if b_hh is None else b_hh))


class LSTMCellRef(_RefCell):
    """Stacked LSTM, one time step at a time, exposing f, i, g, o and c per layer."""

    names = LSTM_GATES

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: State) -> tuple[State, StepGates]:
        """x [B, in], state (h, c) each [L, B, H] -> new (h, c), gates each [L, B, H]."""
        h_prev, c_prev = state
        hs, cs = [], []
        acc: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        inp = x
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.params):
            pre = inp @ w_ih.T + b_ih + h_prev[k] @ w_hh.T + b_hh  # [B, 4H]
            i, f, g, o = pre.chunk(4, dim=-1)  # PyTorch order: i, f, g, o
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            c = f * c_prev[k] + i * g
            h = o * c.tanh()
            for name, t in zip(self.names, (f, i, g, o, c), strict=True):
                acc[name].append(t)
            hs.append(h)
            cs.append(c)
            inp = h  # inter-layer dropout is a training-time op; eval has none
        gates = {n: torch.stack(v) for n, v in acc.items()}
        return (torch.stack(hs), torch.stack(cs)), StepGates(self.names, gates)


class GRUCellRef(_RefCell):
    """Stacked GRU, one time step at a time, exposing r, z and n per layer (PyTorch's z)."""

    names = GRU_GATES

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: State) -> tuple[State, StepGates]:
        """x [B, in], state (h,) [L, B, H] -> new (h,), gates each [L, B, H]."""
        (h_prev,) = state
        hs = []
        acc: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        inp = x
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.params):
            gi = inp @ w_ih.T + b_ih  # [B, 3H]
            gh = h_prev[k] @ w_hh.T + b_hh  # [B, 3H]
            i_r, i_z, i_n = gi.chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r = (i_r + h_r).sigmoid()
            z = (i_z + h_z).sigmoid()
            n = (i_n + r * h_n).tanh()  # reset applied after the recurrent product (cuDNN form)
            h = (1 - z) * n + z * h_prev[k]
            for name, t in zip(self.names, (r, z, n), strict=True):
                acc[name].append(t)
            hs.append(h)
            inp = h
        gates = {n: torch.stack(v) for n, v in acc.items()}
        return (torch.stack(hs),), StepGates(self.names, gates)


def reference_cell(model: CharLM) -> LSTMCellRef | GRUCellRef:
    return LSTMCellRef(model.rnn) if model.cell == "lstm" else GRUCellRef(model.rnn)


@torch.no_grad()
def run_with_gates(
    model: CharLM, tokens: torch.Tensor, state: State | None = None
) -> tuple[torch.Tensor, State, list[StepGates]]:
    """Runs tokens [B, T] through the reference cell: logits [B, T, V], final state, and the
    gates of each of the T steps. Equal to ``model(tokens, state)`` to float rounding."""
    cell = reference_cell(model)
    st = model.init_state(tokens.shape[0]) if state is None else state
    emb = model.embed(tokens)  # [B, T, E]
    outs, trace = [], []
    for t in range(tokens.shape[1]):
        st, gates = cell.step(emb[:, t], st)
        outs.append(st[0][-1])  # top layer's h: [B, H]
        trace.append(gates)
    logits = model.head(torch.stack(outs, dim=1))  # [B, T, V]
    return logits, st, trace
