"""The full state at every position of a text, from fused full-sequence forwards.

nn.LSTM / nn.GRU over a sequence return only the top layer's h at each step. Evaluation forks
completions from the state at many positions, so it needs every layer's h (and, for an LSTM,
c) at each of them. Running the layers one at a time gives each layer's h along the text from
the fused kernel; an LSTM's c then follows from the gates, which need only matrix products over
the whole text at once (x_t and h_{t-1} are known) plus the elementwise recurrence
c_t = f_t * c_{t-1} + i_t * g_t. That is orders of magnitude faster than stepping the model
one character at a time (batch 1), and equal to it to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .charlm import CharLM, State


@dataclass
class Along:
    """For a text of T characters read from a start state:

    ``logits`` [T, V]: the prediction after each character; ``states``: ``arity`` tensors of
    [L, T, H], the state after each character (index t: after characters 0..t); ``final``: the
    state after the last one ([L, 1, H] each), to continue with."""

    logits: torch.Tensor
    states: tuple[torch.Tensor, ...]
    final: State

    def at(self, index: torch.Tensor) -> State:
        """The states after the characters at ``index`` [Q], as a batch: [L, Q, H] each."""
        return tuple(s[:, index].contiguous() for s in self.states)


def _single_layers(model: CharLM) -> list[nn.LSTM | nn.GRU]:
    rnn = model.rnn
    cls = nn.LSTM if model.cell == "lstm" else nn.GRU
    out = []
    for k in range(model.layers):
        m = cls(rnn.input_size if k == 0 else rnn.hidden_size, rnn.hidden_size, 1, batch_first=True)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(m, f"{name}_l0").copy_(getattr(rnn, f"{name}_l{k}"))
        out.append(m.eval().to(model.device))
    return out


class StatesAlong:
    """Computes ``Along`` for successive pieces of one text (carrying the state between them)."""

    def __init__(self, model: CharLM) -> None:
        self.model = model
        self.layers = _single_layers(model)

    @torch.no_grad()
    def run(self, ids: torch.Tensor, start: State) -> Along:
        """ids [T] int64 (T >= 1); start: [L, 1, H] each."""
        x = self.model.embed(ids)[None]  # [1, T, E]
        hs, cs, final_h, final_c = [], [], [], []
        for k, layer in enumerate(self.layers):
            h0 = start[0][k : k + 1]
            if isinstance(layer, nn.LSTM):
                c0 = start[1][k : k + 1]
                out, (h, c) = layer(x, (h0, c0))
                cs.append(self._cells(layer, x[0], out[0], h0[0, 0], c0[0, 0]))
                final_c.append(c)
            else:
                out, h = layer(x, h0)
            hs.append(out[0])
            final_h.append(h)
            x = out
        logits = self.model.head(x[0])
        states = (torch.stack(hs),) + ((torch.stack(cs),) if cs else ())
        final = (torch.cat(final_h),) + ((torch.cat(final_c),) if final_c else ())
        return Along(logits, states, final)

    @staticmethod
    def _cells(layer: nn.LSTM, x: torch.Tensor, h: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        """c_t for every t of one layer: x [T, in] its input, h [T, H] its output."""
        w_ih, w_hh, b_ih, b_hh = (getattr(layer, f"{n}_l0") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        h_prev = torch.cat([h0[None], h[:-1]])
        pre = x @ w_ih.T + b_ih + h_prev @ w_hh.T + b_hh
        i, f, g, _ = pre.chunk(4, dim=-1)  # PyTorch's gate order: i, f, g, o
        ig = i.sigmoid() * g.tanh()
        f = f.sigmoid()
        c = torch.empty_like(ig)
        prev = c0
        for t in range(c.shape[0]):  # one elementwise op per character: cheap next to the products
            torch.addcmul(ig[t], f[t], prev, out=c[t])
            prev = c[t]
        return c
