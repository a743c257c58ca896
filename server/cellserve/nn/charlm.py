"""Character language model: Embedding -> nn.LSTM | nn.GRU (batch_first) -> Linear.

The attribute names ``embed``, ``rnn`` and ``head`` are part of the file format: the weights
file's tensor names are exactly this module's ``state_dict()`` keys, so plain torch.nn modules
with the same attributes load them without cellserve.

State layout is exactly nn.LSTM's / nn.GRU's: ``h`` [layers, batch, hidden] (and ``c`` for
LSTM). ``State`` is always a tuple: ``(h, c)`` for LSTM, ``(h,)`` for GRU, so the engine can
keep every session's state in one slot-indexed pool without branching on the cell type.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Cell = Literal["lstm", "gru"]
State = tuple[torch.Tensor, ...]


class CharLM(nn.Module):
    def __init__(
        self,
        cell: Cell,
        vocab_size: int,
        embedding: int,
        hidden: int,
        layers: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"unknown cell {cell!r}; expected 'lstm' or 'gru'")
        self.cell: Cell = cell
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.layers = layers
        self.embed = nn.Embedding(vocab_size, embedding)
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        # dropout acts between stacked layers in training only; eval() turns it off.
        self.rnn = rnn_cls(embedding, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, vocab_size)

    @property
    def state_arity(self) -> int:
        """Number of state tensors: 2 for LSTM (h, c), 1 for GRU (h)."""
        return 2 if self.cell == "lstm" else 1

    @property
    def device(self) -> torch.device:
        """Where the model runs (read from the embedding, which every serving precision keeps
        a plain tensor: a quantized head's ``weight`` is a method)."""
        return self.embed.weight.device

    def init_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zero state: ``state_arity`` tensors of [layers, batch, hidden] (the embedding's dtype:
        fp32 at every serving precision)."""
        ref = self.embed.weight
        z = torch.zeros(self.layers, batch, self.hidden, device=device or ref.device, dtype=dtype or ref.dtype)
        return (z, z.clone()) if self.cell == "lstm" else (z,)

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """tokens [B, T] int64, state ([L, B, H] x arity) -> logits [B, T, V], new state."""
        x = self.embed(tokens)  # [B, T, E]
        out, new = self.rnn_forward(x, state)  # out [B, T, H]
        return self.head(out), new  # [B, T, V]

    def rnn_forward(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """Runs the recurrent core on embeddings x [B, T, E] (or a PackedSequence)."""
        if self.cell == "lstm":
            out, (h, c) = self.rnn(x, None if state is None else (state[0], state[1]))
            return out, (h, c)
        out, h = self.rnn(x, None if state is None else state[0])
        return out, (h,)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
