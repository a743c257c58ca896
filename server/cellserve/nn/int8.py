"""Batch- and cut-invariant int8 recurrent layers for CPU serving.

``torch.ao.quantization.quantize_dynamic`` picks the activation scale of each call from the
values in that call (every row of the batch and, for a sequence call, every time step), so a
row's numbers there depend on its batch companions and on how its text was cut into calls.
These layers fix the activation scale instead:

- Every int8 GEMM input lies in [-1, 1]: the recurrent input h is a tanh output (LSTM) or a
  convex mix of tanh outputs (GRU), and layers above the first take the h of the layer below.
  Inputs are clamped to [-1, 1] anyway (float rounding of the GRU mix), and every row gets two
  extra input columns (-1 and +1, with zero weights), so the dynamic min/max torch computes is
  always [-1, 1]: the quantization parameters never change, the int8 GEMM is exact integer
  arithmetic, and each row's output is bitwise independent of the other rows.
- The first layer's input projection is not quantized at all: ``embed.weight @ W_ih^T + b_ih``
  is a table [V, gates * H] computed once (in float64, rounded to fp32), looked up per token.
  ``rnn_forward`` receives embeddings (the engine's calling convention), so the token ids are
  recovered from them by exact match (``EmbeddingIds``, verified with ``torch.equal``).
- Each layer runs its input GEMM over every time step of the call at once (row-independent, so
  the same arithmetic as one step at a time; it keeps one layer's recurrent weights in cache
  through the time loop), then steps time one step at a time in one loop for every phase
  (single steps, whole and chunked sequences, PackedSequences of mixed lengths), with the same
  fp32 elementwise gate math in the same op order, so a character costs exactly the same
  arithmetic whatever the batch and the cut. Rows of gates * H and H elements (H a multiple
  of 32 in the shipped and test models) keep every row on torch's vectorized elementwise path
  (tests/nn/test_int8.py checks it bitwise, with 1 and 3 torch threads).
- The output head runs the same fixed-range int8 GEMM (its input is the top layer's h): an
  fp32 ``nn.Linear`` is not batch-invariant (its GEMM kernel changes with the batch size).
  ``quantize_head=False`` keeps it fp32.

Weights are quantized per output channel (symmetric qint8) and packed with
``torch.ops.quantized.linear_prepack``; activations are quantized to 7 bits (``reduce_range``,
as fbgemm's dynamic linear does to avoid int16 saturation).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .charlm import CharLM


@contextmanager
def _quiet() -> Iterator[None]:
    """torch marks the quantized ops' Python entry points deprecated in favour of torchao (not a
    dependency); the ops are what the gain was measured with. Silence that here only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*", category=UserWarning)
        yield


class FixedRangeLinear:
    """``y = x @ W^T + b`` with int8 per-channel weights and inputs quantized on the fixed
    range [-1, 1] (clamped), so every row's output is independent of the other rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        w = weight.detach().float().contiguous()
        self.in_features = w.shape[1]
        self.out_features = w.shape[0]
        scales = (w.abs().amax(dim=1).clamp(min=1e-8) / 127.0).double()
        zeros = torch.zeros(w.shape[0], dtype=torch.long)
        # two calibration columns (inputs -1 and +1 in every row, weights 0) pin the dynamic
        # min/max to [-1, 1] and add exactly 0 to the integer accumulators; columns rather than
        # extra rows keep a single step at M = 1 (fbgemm's cheapest shape)
        w = torch.cat([w, torch.zeros(w.shape[0], 2)], dim=1)
        with _quiet():
            qw = torch.quantize_per_channel(w, scales, zeros, axis=0, dtype=torch.qint8)
            b = None if bias is None else bias.detach().float().contiguous()
            self.packed = torch.ops.quantized.linear_prepack(qw, b)
        self.calib = torch.tensor([[-1.0, 1.0]])

    def __call__(self, *parts: torch.Tensor) -> torch.Tensor:
        """``parts`` [N, k_i] concatenated along features (sum k_i = in_features) -> [N, out]."""
        x = torch.cat([*parts, self.calib.expand(parts[0].shape[0], 2)], dim=1)
        x.clamp_(-1.0, 1.0)
        with _quiet():
            y: torch.Tensor = torch.ops.quantized.linear_dynamic(x, self.packed, True)
        return y


class EmbeddingIds:
    """Recovers token ids from embedding rows by exact match: one column whose values are all
    distinct keys a sorted lookup, and the whole rows are then compared (``torch.equal``), so an
    id is returned only for an input that is exactly that token's embedding."""

    def __init__(self, weight: torch.Tensor) -> None:
        w = weight.detach()
        self.weight = w
        self.column = -1
        for j in range(w.shape[1]):
            if torch.unique(w[:, j]).numel() == w.shape[0]:
                self.column = j
                break
        if self.column >= 0:
            self.keys, self.order = torch.sort(w[:, self.column].contiguous())

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """x [N, E] -> ids [N], or None when some row is not an embedding row."""
        if self.column < 0:
            return None
        pos = torch.searchsorted(self.keys, x[:, self.column].contiguous()).clamp_(max=self.keys.numel() - 1)
        ids = self.order[pos]
        return ids if torch.equal(self.weight[ids], x) else None


class FixedRangeRNN(nn.Module):
    """An int8 stand-in for ``nn.LSTM``/``nn.GRU`` (batch_first) as ``CharLM.rnn``: same call
    (``x`` [B, T, E] embeddings or a PackedSequence of them; state (h, c) / h; None = zeros),
    same outputs. Module docstring for why its numbers are batch- and cut-invariant."""

    def __init__(self, model: CharLM) -> None:
        super().__init__()
        rnn = model.rnn
        self.cell = model.cell
        self.hidden = model.hidden
        self.layers = model.layers
        p = {name: t.detach().float() for name, t in rnn.named_parameters()}
        emb = model.embed.weight.detach()
        # layer 1's input projection, exact up to one fp32 rounding
        table = emb.double() @ p["weight_ih_l0"].double().T + p["bias_ih_l0"].double()
        self.table = table.float().contiguous()  # [V, G * H]
        self.w_ih0 = p["weight_ih_l0"]  # fallback for inputs that are not embedding rows
        self.b_ih0 = p["bias_ih_l0"]
        self.ids = EmbeddingIds(emb)
        # per layer: the recurrent GEMM, and (above layer 1) the input GEMM, kept apart so the
        # input projection of every time step of a call runs as one GEMM before the time loop
        self.lin_hh = [FixedRangeLinear(p[f"weight_hh_l{k}"], p[f"bias_hh_l{k}"]) for k in range(self.layers)]
        self.lin_ih = [FixedRangeLinear(p[f"weight_ih_l{k}"], p[f"bias_ih_l{k}"]) for k in range(1, self.layers)]

    def forward(
        self, x: torch.Tensor | PackedSequence, state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        packed = isinstance(x, PackedSequence)
        if isinstance(x, PackedSequence):
            data, sizes = x.data, [int(b) for b in x.batch_sizes]
            batch = sizes[0]
        else:
            batch, steps = x.shape[0], x.shape[1]
            data, sizes = x.transpose(0, 1).reshape(batch * steps, x.shape[2]), [batch] * steps
        proj = self._project(data)  # [N, G * H], time-major
        st: tuple[torch.Tensor, ...]
        if state is None:
            z = torch.zeros(self.layers, batch, self.hidden)
            st = (z, z.clone()) if self.cell == "lstm" else (z,)
        else:
            st = state if isinstance(state, tuple) else (state,)
        if packed and x.sorted_indices is not None:  # type: ignore[union-attr]
            st = tuple(s.index_select(1, x.sorted_indices) for s in st)  # type: ignore[union-attr]
        # layer by layer: the whole input projection first (row-independent, so one GEMM over
        # every time step is the same arithmetic as one step at a time), then the time loop
        hs: list[torch.Tensor] = []
        cs: list[torch.Tensor] = []
        below = proj
        for layer in range(self.layers):
            xg = below if layer == 0 else self.lin_ih[layer - 1](below)  # [N, G * H]
            lin = self.lin_hh[layer]
            h = st[0][layer]
            c = st[1][layer] if self.cell == "lstm" else h  # GRU: c unused
            outs: list[torch.Tensor] = []
            off = 0
            for b in sizes:  # rows finished earlier keep their last state (the tail rows)
                if self.cell == "lstm":
                    new_h, new_c = self._lstm(lin, xg[off : off + b], h[:b], c[:b])
                    c = new_c if b == batch else torch.cat([new_c, c[b:]])
                else:
                    new_h = self._gru(lin, xg[off : off + b], h[:b])
                h = new_h if b == batch else torch.cat([new_h, h[b:]])
                outs.append(new_h)
                off += b
            below = torch.cat(outs)
            hs.append(h)
            cs.append(c)
        out = below
        h_n = torch.stack(hs)
        c_n = torch.stack(cs) if self.cell == "lstm" else None
        if packed and x.unsorted_indices is not None:  # type: ignore[union-attr]
            h_n = h_n.index_select(1, x.unsorted_indices)  # type: ignore[union-attr]
            c_n = None if c_n is None else c_n.index_select(1, x.unsorted_indices)  # type: ignore[union-attr]
        new_state = h_n if c_n is None else (h_n, c_n)
        if isinstance(x, PackedSequence):
            return PackedSequence(out, x.batch_sizes, x.sorted_indices, x.unsorted_indices), new_state
        return out.view(steps, batch, self.hidden).transpose(0, 1), new_state

    def _project(self, data: torch.Tensor) -> torch.Tensor:
        """Layer 1's input projection of embedding rows [N, E]: the table rows of their tokens
        (inputs that are not embedding rows: computed in fp32, not batch-invariant)."""
        ids = self.ids(data)
        if ids is None:
            return torch.addmm(self.b_ih0, data.float(), self.w_ih0.T)
        return self.table[ids]

    def _lstm(
        self, lin: FixedRangeLinear, xg: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM step of b rows: input projection xg [b, 4H] (i f g o), state h, c [b, H]."""
        n = self.hidden
        gates = xg + lin(h)
        sig = torch.sigmoid(gates)  # the g quarter is wasted: one call instead of three
        g = torch.tanh(gates[:, 2 * n : 3 * n])
        c_new = torch.addcmul(sig[:, n : 2 * n] * c, sig[:, :n], g)  # f * c + i * g
        return sig[:, 3 * n :] * torch.tanh(c_new), c_new

    def _gru(self, lin: FixedRangeLinear, xg: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One GRU step of b rows: input projection xg [b, 3H] (r z n, with b_ih), state h [b, H]."""
        n = self.hidden
        gh = lin(h)  # [b, 3H] (with b_hh)
        rz = torch.sigmoid(xg[:, : 2 * n] + gh[:, : 2 * n])
        cand = torch.tanh(torch.addcmul(xg[:, 2 * n :], rz[:, :n], gh[:, 2 * n :]))  # x_n + r * h_n
        return torch.lerp(cand, h, rz[:, n:])  # (1 - z) * cand + z * h


class FixedRangeHead(nn.Module):
    """The output Linear at int8 with the fixed input range (its input is the top layer's h)."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.lin = FixedRangeLinear(head.weight, head.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        shape = h.shape
        return self.lin(h.reshape(-1, shape[-1])).view(*shape[:-1], self.lin.out_features)


def batch_invariant_int8(model: CharLM, *, quantize_head: bool = True) -> CharLM:
    """A serving copy of ``model`` (CPU) with ``FixedRangeRNN`` as its recurrent core; the
    embedding is shared with ``model`` (a lookup, never converted), the head is fp32 unless
    ``quantize_head``."""
    q = CharLM(model.cell, model.vocab_size, model.embed.embedding_dim, model.hidden, model.layers)
    q.embed = model.embed
    q.head = FixedRangeHead(model.head) if quantize_head else model.head  # type: ignore[assignment]
    q.rnn = FixedRangeRNN(model)  # type: ignore[assignment]
    return q.eval()
