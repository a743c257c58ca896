"""Batch- and cut-invariant int8 recurrent layers for CPU serving.

``torch.ao.quantization.quantize_dynamic`` picks the activation scale of each call from the
values in that call (every row of the batch and, for a sequence call, every time step), so a
row's numbers there depend on its batch companions and on how its text was cut into calls.
These layers fix the activation scale instead:

- Every int8 GEMM input lies in [-1, 1]: the recurrent input h is a tanh output (LSTM) or a
  convex mix of tanh outputs (GRU), and layers above the first take the h of the layer below.
  Each GEMM quantizes its input with fixed parameters, those of the range [-1, 1]
  (``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``: bit for bit what
  ``quantized::linear_dynamic`` computes for an input whose min/max is [-1, 1]), so they never
  change, the int8 GEMM is exact integer arithmetic, and each row's output is bitwise
  independent of the other rows. A state from outside is clamped to [-1, 1] once per call (a
  corrupt row computes as its clamped self); an h computed here can pass 1 only by float
  rounding, far below half a quantization step, and quantizes as 1 does.
- The first layer's input projection is not quantized at all: ``embed.weight @ W_ih^T + b_ih``
  is a table [V, gates * H] computed once (in float64, rounded to fp32), looked up per token.
  ``rnn_forward`` receives embeddings (the engine's calling convention), so the token ids are
  recovered from them by exact match (``EmbeddingIds``; ``TokenProjection`` gathers each
  embedding row beside its table row and verifies the match with ``torch.equal``).
- Each layer runs its input GEMM over every time step of the call at once (row-independent, so
  the same arithmetic as one step at a time; it keeps one layer's recurrent weights in cache
  through the time loop), then steps time one step at a time in one loop for every phase
  (single steps, whole and chunked sequences, PackedSequences of mixed lengths), with the same
  fp32 elementwise gate math in the same op order, so a character costs exactly the same
  arithmetic whatever the batch and the cut. The gate math runs in place on each step's GEMM
  output and writes h and c straight into the call's outputs (LSTM gates stored i f o g, so one
  sigmoid covers three): few tensor ops per step, since at one row each op's Python call costs
  about as much as its arithmetic. Rows of gates * H and H elements (H a multiple
  of 32 in the shipped and test models) keep every row on torch's vectorized elementwise path
  (tests/nn/test_int8.py checks it bitwise, with 1 and 3 torch threads).
- The projection lookup, the whole time loop of every layer, and the engine's keystroke step by
  token id (``step_ids``) are TorchScript functions (``nn/scripted.py``): each runs its ops in
  C++ with the interpreter lock released once, instead of once per op (the same ops, so the
  same numbers; tests/nn/test_scripted.py compares them with their eager form).
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
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .charlm import CharLM
from .scripted import scripted


@contextmanager
def _quiet() -> Iterator[None]:
    """torch marks the quantized ops' Python entry points deprecated in favour of torchao (not a
    dependency); the ops are what the gain was measured with. Silence that here only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*", category=UserWarning)
        yield


# The input quantization every int8 GEMM takes: [-1, 1] on 7 bits (``reduce_range``, as fbgemm's
# dynamic linear, to keep its u8 x s8 pair sums clear of int16 saturation). These are exactly the
# parameters ``quantized::linear_dynamic`` chooses for an input whose min/max is [-1, 1]
# (scale (1 - -1) / 127, zero point round-half-even(63.5)); tests/nn/test_int8.py checks the two
# agree bit for bit.
INPUT_SCALE = 2.0 / 127.0
INPUT_ZERO_POINT = 64
# The fp32-in, fp32-out int8 GEMM with those input parameters, called as the op's C++ entry point
# where torch exposes it (``_op``): torch.ops' Python wrapper first looks through every call's
# arguments for fake script objects, a few microseconds a call at four calls a keystroke
_LINEAR_OP = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32.default
_LINEAR = getattr(_LINEAR_OP, "_op", _LINEAR_OP)


def _plain_tensors() -> AbstractContextManager[None]:
    """The context the int8 modules run in: no tensor subclass's ``__torch_function__``. Their
    tensors are plain, and torch probes every call's non-tensor arguments for that hook; the
    packed weights of a quantized GEMM are a ScriptObject, whose failed attribute lookup raises
    and catches a C++ exception, about 15 microseconds a GEMM call in a smoke (a third of a
    one-row GEMM), which this context skips. Torch function modes stay in effect."""
    return torch._C.DisableTorchFunctionSubclass()


class FixedRangeLinear:
    """``y = x @ W^T + b`` with int8 per-channel weights and inputs quantized on the fixed
    range [-1, 1] (clamped), so every row's output is independent of the other rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        w = weight.detach().float().contiguous()
        self.in_features = w.shape[1]
        self.out_features = w.shape[0]
        scales = (w.abs().amax(dim=1).clamp(min=1e-8) / 127.0).double()
        zeros = torch.zeros(w.shape[0], dtype=torch.long)
        with _quiet():
            qw = torch.quantize_per_channel(w, scales, zeros, axis=0, dtype=torch.qint8)
            b = None if bias is None else bias.detach().float().contiguous()
            self.packed = torch.ops.quantized.linear_prepack(qw, b)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in_features] -> [N, out_features] (fp32); x itself is left as it is. The clamp
        keeps an out-of-range row (a corrupt state) its clamped self rather than an
        out-of-range integer."""
        return self.in_range(torch.clamp(x, -1.0, 1.0))

    def in_range(self, x: torch.Tensor) -> torch.Tensor:
        """As calling it, for an x already in [-1, 1] (an h the recurrent layers computed: tanh
        outputs and their products or convex mixes), so no clamp: a float rounding beyond +-1 is
        far below half a quantization step (1/127) and quantizes as +-1 does."""
        # the op quantizes with the given parameters, no min/max of its own: one call, and no
        # calibration columns to append
        y: torch.Tensor = _LINEAR(x, INPUT_SCALE, INPUT_ZERO_POINT, self.packed)
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
        """x [N, E] -> ids [N], or None when some row is not an embedding row (or no column
        has distinct values)."""
        if self.column < 0:
            return None
        pos = torch.searchsorted(self.keys, x[:, self.column].contiguous())  # V: above every key
        ids = self.order[pos.clamp_(max=self.keys.numel() - 1)]
        return ids if torch.equal(self.weight[ids], x) else None


class TokenProjection:
    """Layer 1's input projection looked up by token: each embedding row in key order beside its
    projection (``embed.weight @ W_ih^T + b_ih``, in float64, rounded to fp32 once), so one
    gather finds both and the embedding half verifies the match."""

    def __init__(self, embed: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor) -> None:
        emb = embed.detach()
        self.width = emb.shape[1]
        self.ids = EmbeddingIds(emb)
        table = (emb.double() @ w_ih.double().T + b_ih.double()).float()  # [V, G * H]
        order = self.ids.order if self.ids.column >= 0 else torch.arange(emb.shape[0])
        rows = torch.cat([emb.float(), table], dim=1)[order]  # [V, E + G * H]
        # a last row of NaN (equal to nothing) for a key above every key: no clamp per call
        self.rows = torch.cat([rows, torch.full((1, rows.shape[1]), float("nan"))]).contiguous()
        self.w_ih, self.b_ih = w_ih, b_ih  # for inputs that are not embedding rows
        self._keys = self.ids.keys if self.ids.column >= 0 else torch.empty(0)  # (unused without a column)
        # by token id, for callers holding ids (the engine's keystroke steps): the same rows, so
        # the same numbers as looking up the id's embedding; None when a lookup by embedding
        # could not match (no distinct column: the fp32 projection is used instead)
        self.by_id = self.rows[:-1][torch.argsort(order)].contiguous() if self.ids.column >= 0 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding rows [N, E] -> [N, G * H], a new tensor (its rows are the callers' to
        overwrite); inputs that are not embedding rows are projected in fp32 (correct, but
        not batch-invariant). One scripted call."""
        return _project(x, self.ids.column, self._keys, self.rows, self.width, self.w_ih, self.b_ih)


def _project_eager(
    x: torch.Tensor,
    column: int,
    keys: torch.Tensor,
    rows: torch.Tensor,
    width: int,
    w_ih: torch.Tensor,
    b_ih: torch.Tensor,
) -> torch.Tensor:
    """``TokenProjection``'s lookup: x [N, E] -> [N, G * H]; column: the embedding column whose
    values are distinct keys (sorted: ``keys``), -1 for none; rows: embedding and projection
    rows in key order, NaN last."""
    if column >= 0:
        found = rows[torch.searchsorted(keys, x[:, column].contiguous())]
        if torch.equal(found[:, :width], x):
            return found[:, width:]
    return torch.addmm(b_ih, x.float(), w_ih.T)


def _lstm_gate_order(t: torch.Tensor) -> torch.Tensor:
    """Rows (dim 0) of an LSTM gate tensor from torch's order (i f g o) to (i f o g): the three
    sigmoid gates side by side, so one call computes them and none is computed twice."""
    i, f, g, o = t.chunk(4, dim=0)
    return torch.cat([i, f, o, g]).contiguous()


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
        if self.cell == "lstm":
            p = {name: _lstm_gate_order(t) for name, t in p.items()}
        # layer 1's input projection: a table by token, exact up to one fp32 rounding
        self.project = TokenProjection(model.embed.weight, p["weight_ih_l0"], p["bias_ih_l0"])
        # per layer: the recurrent GEMM, and (above layer 1) the input GEMM, kept apart so the
        # input projection of every time step of a call runs as one GEMM before the time loop
        # (packed, as the recurrence kernel takes them)
        self._hh = [FixedRangeLinear(p[f"weight_hh_l{k}"], p[f"bias_hh_l{k}"]).packed for k in range(self.layers)]
        self._ih = [FixedRangeLinear(p[f"weight_ih_l{k}"], p[f"bias_ih_l{k}"]).packed for k in range(1, self.layers)]

    def forward(
        self, x: torch.Tensor | PackedSequence, state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        with _plain_tensors():
            return self._forward(x, state)

    def step_ids(
        self, ids: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None:
        """One time step of B rows given by token id, in ONE scripted call (nn/scripted.py): ids
        [B] int64, state ([L, B, H] x arity) -> top-layer h [B, H], new state. The same numbers
        as ``forward`` on the ids' embeddings. None when the projection has no table by id
        (call ``forward``)."""
        table = self.project.by_id
        if table is None:
            return None
        out, h_n, c_n = _step_by_id(
            ids,
            table,
            self.project.width,
            state[0],
            state[1] if len(state) > 1 else None,
            self._hh,
            self._ih,
            self.hidden,
        )
        return out, ((h_n,) if c_n is None else (h_n, c_n))

    def _forward(
        self, x: torch.Tensor | PackedSequence, state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(x, PackedSequence):
            data, sizes = x.data, x.batch_sizes.tolist()
            batch = sizes[0]
        else:
            batch, steps = x.shape[0], x.shape[1]
            data = x[:, 0] if steps == 1 else x.transpose(0, 1).reshape(batch * steps, x.shape[2])
            sizes = [batch] * steps
        if not sizes:
            raise ValueError("FixedRangeRNN needs at least one time step")
        n = self.hidden
        if state is None:
            z = torch.zeros(self.layers, batch, n)
            st: tuple[torch.Tensor, ...] = (z, z)  # read only: never written in place
        else:
            st = state if isinstance(state, tuple) else (state,)
        h0, c0 = st[0], (st[1] if self.cell == "lstm" else None)
        if isinstance(x, PackedSequence) and x.sorted_indices is not None:
            h0 = h0.index_select(1, x.sorted_indices)
            c0 = None if c0 is None else c0.index_select(1, x.sorted_indices)
        below = self.project(data)  # [N, G * H]: layer 1's input projection, time-major
        every, lasts, c_n = _recurrence(below, sizes, h0, c0, self._hh, self._ih, n)
        if isinstance(x, PackedSequence):
            h_n = torch.stack([self._last(e, x.batch_sizes) for e in every])
            if x.unsorted_indices is not None:
                h_n = h_n.index_select(1, x.unsorted_indices)
                c_n = None if c_n is None else c_n.index_select(1, x.unsorted_indices)
            out_state = h_n if c_n is None else (h_n, c_n)
            return PackedSequence(every[-1], x.batch_sizes, x.sorted_indices, x.unsorted_indices), out_state
        h_n = torch.stack(lasts)
        top = every[-1]
        out = top.unsqueeze(1) if steps == 1 else top.view(steps, batch, n).transpose(0, 1)
        return out, (h_n if c_n is None else (h_n, c_n))

    @staticmethod
    def _last(seq: torch.Tensor, batch_sizes: torch.Tensor) -> torch.Tensor:
        """Each row's h at its own last step, from a packed layer output [N, H] (row r's
        length is the number of steps with more than r rows)."""
        rows = torch.arange(int(batch_sizes[0]))
        lengths = (batch_sizes[None, :] > rows[:, None]).sum(dim=1)
        starts = torch.cumsum(batch_sizes, 0) - batch_sizes  # where each step's rows begin
        return seq.index_select(0, starts[lengths - 1] + rows)


class FixedRangeHead(nn.Module):
    """The output Linear at int8 with the fixed input range (its input is the top layer's h)."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.lin = FixedRangeLinear(head.weight, head.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with _plain_tensors():
            if h.dim() == 2:  # a step's rows [B, H]: the keystroke path, no reshaping calls
                return self.lin(h)
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


# ---- the recurrence as scripted kernels (nn/scripted.py): one lock release per call ---------
if TYPE_CHECKING:  # a packed int8 GEMM's weights (TorchScript resolves the name at runtime)
    from typing import Any as LinearPacked
else:
    LinearPacked = torch.classes.quantized.LinearPackedParamsBase


def _fixed_linear(x: torch.Tensor, packed: LinearPacked) -> torch.Tensor:
    """``FixedRangeLinear.in_range`` on its packed weights (x already in [-1, 1]). The input
    parameters are written out: TorchScript reads no float from the module (``_LITERALS``)."""
    y: torch.Tensor = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x, 2.0 / 127.0, 64, packed)
    return y


_LITERALS = (2.0 / 127.0, 64)
assert _LITERALS == (INPUT_SCALE, INPUT_ZERO_POINT), "_fixed_linear's literals are the input parameters"


def _recurrence_eager(
    below: torch.Tensor,
    sizes: list[int],
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    hh: list[LinearPacked],
    ih: list[LinearPacked],
    n: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
    """Every layer's time loop. below [N, G * H]: layer 1's input projection, time-major (ours
    to overwrite); sizes: the rows of each time step (sorted longest first, so step t's rows are
    the first sizes[t] of step t - 1's, and a row that has ended keeps its last state); h0, c0
    [L, B, H] (c0 None: a GRU); hh, ih: the packed recurrent GEMMs per layer and the input GEMMs
    above layer 1. -> per layer, h at every step [N, H] and h at the last step [sizes[-1], H];
    the final c [L, B, H] (None for a GRU).

    The GEMMs take h in [-1, 1]: a state from outside is clamped once here (a corrupt state
    computes as its clamped self); every h computed below is in range already. Each layer runs
    its input GEMM over every time step at once (row-independent, so the same arithmetic as
    one step at a time), then the steps; the gate math runs in place on each step's GEMM output
    and writes h and c straight into the outputs."""
    layers, batch = len(hh), h0.shape[1]
    h_in = torch.clamp(h0, -1.0, 1.0)
    c_n: torch.Tensor | None = None
    if c0 is not None:
        c_n = torch.empty(layers, batch, n)
    every: list[torch.Tensor] = []
    lasts: list[torch.Tensor] = []
    for layer in range(layers):
        xg = below if layer == 0 else _fixed_linear(below, ih[layer - 1])  # [N, G * H], ours to overwrite
        below = torch.empty(xg.shape[0], n)  # this layer's h at every step
        xs = xg.split_with_sizes(sizes) if len(sizes) > 1 else [xg]
        hs = below.split_with_sizes(sizes) if len(sizes) > 1 else [below]
        packed, h = hh[layer], h_in[layer]
        if c0 is not None and c_n is not None:
            c, cw = c0[layer], c_n[layer]
            for t in range(len(sizes)):
                b = sizes[t]
                if b != h.shape[0]:
                    h, c, cw = h[:b], c[:b], cw[:b]
                _lstm_step(packed, xs[t], h, c, cw, hs[t], n)
                h, c = hs[t], cw
        else:
            for t in range(len(sizes)):
                b = sizes[t]
                if b != h.shape[0]:
                    h = h[:b]
                _gru_step(packed, xs[t], h, hs[t], n)
                h = hs[t]
        every.append(below)
        lasts.append(hs[-1])
    return every, lasts, c_n


def _lstm_step(
    packed: LinearPacked,
    xg: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    c_out: torch.Tensor,
    h_out: torch.Tensor,
    n: int,
) -> None:
    """One LSTM step of b rows: input projection xg [b, 4H] (i f o g), state h, c [b, H]
    -> c_out, h_out [b, H] (c_out may be c itself). Gate math in place, in the order
    f * c + i * g, then o * tanh(c), whatever the step and the batch."""
    gates = _fixed_linear(h, packed).add_(xg)  # a new tensor: computed in place from here
    gates[:, : 3 * n].sigmoid_()
    i, f, o, g = gates.chunk(4, dim=1)
    g.tanh_()
    torch.mul(f, c, out=c_out).addcmul_(i, g)
    torch.mul(o, torch.tanh(c_out, out=g), out=h_out)


def _gru_step(packed: LinearPacked, xg: torch.Tensor, h: torch.Tensor, h_out: torch.Tensor, n: int) -> None:
    """One GRU step of b rows: input projection xg [b, 3H] (r z n, with b_ih; overwritten),
    state h [b, H] -> h_out [b, H]."""
    gh = _fixed_linear(h, packed)  # [b, 3H] r z n (with b_hh)
    rz = gh[:, : 2 * n].add_(xg[:, : 2 * n]).sigmoid_()
    cand = xg[:, 2 * n :].addcmul_(rz[:, :n], gh[:, 2 * n :]).tanh_()  # x_n + r * h_n
    torch.lerp(cand, h, rz[:, n:], out=h_out)  # (1 - z) * cand + z * h


def _step_by_id_eager(
    ids: torch.Tensor,
    table: torch.Tensor,
    width: int,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    hh: list[LinearPacked],
    ih: list[LinearPacked],
    n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``FixedRangeRNN.step_ids``: table [V, E + G * H] by id (``TokenProjection.by_id``)."""
    below = table.index_select(0, ids)[:, width:]  # [B, G * H], a new tensor: ours to overwrite
    # the state as ``forward``'s callers pass it: contiguous (the same kernels on the same layout)
    c = c0.contiguous() if c0 is not None else None
    every, lasts, c_n = _recurrence_eager(below, [ids.shape[0]], h0.contiguous(), c, hh, ih, n)
    return every[-1], torch.stack(lasts), c_n


_project = scripted(_project_eager)
_recurrence = scripted(_recurrence_eager)
_step_by_id = scripted(_step_by_id_eager)
