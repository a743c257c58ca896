"""The learned mixer: one distribution from the model's and the memory's.

    p = g_0 * p_model + sum_e g_e * q_e,     g = softmax(gate(features)) over present experts

``q_e`` are the memory's expert distributions (``features.memory_arrays``); the gate is a small
MLP over the model's entropy and top log-probability, each expert's agreement with the model
(log of sum_v q_e(v) p_model(v)) and the memory's host features (counts, match length). The
model always keeps a positive weight and a floor of ``EPS / V`` is mixed in, so every symbol
has probability > 0: the result is always a proper distribution.

Two paths compute the same thing: ``Mixer.mix`` (torch, batched, on the distribution's
device: on a GPU only the memory's small arrays travel to it; its ``mix_log_probs`` is what
the served pick kernel calls too) and ``Mixer.mix_row`` (numpy in float64, one row: a
reference the tests hold ``Mixer.mix`` to).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..nn.scripted import scripted
from .features import EXPERTS, HOST_FEATURES
from .window import ORDERS

EPS = 1e-6
HIDDEN = 32
MODEL_FEATURES = 2 + EXPERTS  # entropy, top log-prob, agreement per expert
FEATURES = MODEL_FEATURES + HOST_FEATURES
MIXER_FILE = "mixer.safetensors"
_PRESENT = [3 * j for j in range(len(ORDERS))] + [HOST_FEATURES - 3]
_PRESENT_AT = torch.tensor(_PRESENT)  # the same, as an index
# the gate as the mixing kernels take it (``Mixer.weights``): w1, b1, w2, b2, _PRESENT_AT
Gate = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Mixer(nn.Module):
    """Gate MLP: FEATURES -> HIDDEN -> 1 + EXPERTS logits (model first)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(FEATURES, HIDDEN)
        self.out = nn.Linear(HIDDEN, 1 + EXPERTS)
        with torch.no_grad():  # untrained: trust the model (the memory's weights start small)
            self.out.weight.zero_()
            self.out.bias.copy_(torch.tensor([3.0] + [0.0] * EXPERTS))
        self._present_at: torch.Tensor | None = None  # _PRESENT_AT on the device mixing

    # --- torch path --------------------------------------------------------------------
    @staticmethod
    def features(logprobs: torch.Tensor, dists: torch.Tensor, host: torch.Tensor) -> torch.Tensor:
        """[B, FEATURES] from logprobs [B, V], dists [B, E, V], host [B, HOST_FEATURES]."""
        return _features(logprobs, dists, host, _PRESENT_AT.to(host.device))

    def gates(self, feats: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[B, 1 + E] mixture weights; absent experts get exactly 0."""
        return _masked_softmax(self.out(torch.relu(self.hidden(feats))), present)

    @torch.no_grad()
    def mix(self, logprobs: torch.Tensor, dists: torch.Tensor, host: torch.Tensor) -> torch.Tensor:
        """Mixed log-probabilities [B, V] (float32) from the model's logprobs [B, V] and the
        memory's arrays (dists [B, E, V], host [B, HOST_FEATURES]) on the same device.

        Each row's result is independent of the other rows, bit for bit: the gate's layers run
        as ``_row_linear`` instead of ``nn.Linear``, whose GEMM takes another kernel for a
        single row (one row alone and the same row beside others differed in the last bits), so
        a served distribution would depend on its batch companions. Speculative keystrokes
        (engine/speculation.py) answer from a batch of guesses and must equal the keystroke's
        own step exactly. One scripted call (nn/scripted.py)."""
        return _mix(logprobs, dists, host, self.weights(host.device), EPS)

    def weights(self, device: torch.device) -> Gate:
        """``mix_log_probs``'s gate: the hidden and out layers' weights and biases, and
        ``_PRESENT_AT`` on ``device``."""
        at = self._present_at
        if at is None or at.device != device:
            at = self._present_at = _PRESENT_AT.to(device)
        h, o = self.hidden, self.out
        return h.weight, h.bias, o.weight, o.bias, at

    def host_weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The gate's w1, b1, w2, b2 as contiguous float32 arrays for the host mixing kernel
        (engine/memory_mix.py: ``mix_on_host``), made once: a served mixer never changes."""
        if getattr(self, "_host", None) is None:
            self._host = tuple(
                np.ascontiguousarray(t.detach().cpu().float().numpy())
                for t in (self.hidden.weight, self.hidden.bias, self.out.weight, self.out.bias)
            )
        return self._host  # type: ignore[return-value]

    # --- numpy path (one row) ----------------------------------------------------------
    def numpy_weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if getattr(self, "_np", None) is None:
            self._np = tuple(
                t.detach().cpu().double().numpy()
                for t in (self.hidden.weight, self.hidden.bias, self.out.weight, self.out.bias)
            )
        return self._np  # type: ignore[return-value]

    def mix_row(self, logprobs: np.ndarray, dists: np.ndarray, host: np.ndarray) -> np.ndarray:
        """One row: logprobs [V], dists [E, V], host [HOST_FEATURES] -> mixed logprobs [V]."""
        w1, b1, w2, b2 = self.numpy_weights()
        lp = logprobs.astype(np.float64)
        p = np.exp(lp)
        present = host[_PRESENT].astype(np.float64)
        agree = np.log(dists @ p + 1e-6) / 8.0 * present
        f = np.concatenate([[-(p * lp).sum() / 4.0, lp.max() / 4.0], agree, host])
        z = w2 @ np.maximum(w1 @ f + b1, 0.0) + b2
        z[1:][present == 0] = -np.inf
        g = np.exp(z - z.max())
        g /= g.sum()
        mixed = g[0] * p + g[1:] @ dists
        out: np.ndarray = np.log(mixed * (1.0 - EPS) + EPS / lp.shape[0])
        return out

    # --- files -------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(folder / MIXER_FILE), metadata={"format": "cellserve-mixer"})

    @classmethod
    def load(cls, folder: Path | str, device: torch.device | str = "cpu") -> Mixer:
        from safetensors.torch import load_file

        m = cls()
        m.load_state_dict(load_file(str(Path(folder) / MIXER_FILE)))
        return m.to(device).eval()


def _features(
    logprobs: torch.Tensor, dists: torch.Tensor, host: torch.Tensor, present_at: torch.Tensor
) -> torch.Tensor:
    """``Mixer.features``; present_at: ``_PRESENT_AT`` (the host features saying whether each
    expert is present) on the arrays' device."""
    p = logprobs.exp()
    entropy = -(p * logprobs).sum(-1, keepdim=True) / 4.0
    top = logprobs.max(-1, keepdim=True).values / 4.0
    present = host.index_select(1, present_at)
    agree = torch.log((dists * p[:, None, :]).sum(-1) + 1e-6) / 8.0 * present
    return torch.cat([entropy, top, agree, host], dim=-1)


def mix_log_probs(
    logprobs: torch.Tensor,
    dists: torch.Tensor,
    host: torch.Tensor,
    gate: Gate,
    eps: float,
) -> torch.Tensor:
    """``Mixer.mix`` with the ``gate`` (``Mixer.weights``: hidden w1, b1; out w2, b2; the
    presence columns) and the floor ``eps``, as a plain function a scripted kernel can call."""
    w1, b1, w2, b2, present_at = gate
    lp = logprobs.float()
    feats = _features(lp, dists, host, present_at)
    logits = _row_linear(torch.relu(_row_linear(feats, w1, b1)), w2, b2)
    g = _masked_softmax(logits, host.index_select(1, present_at))
    mixed = g[:, :1] * lp.exp() + (g[:, 1:, None] * dists).sum(1)
    v = lp.shape[-1]
    return torch.log(mixed * (1.0 - eps) + eps / v)


def _row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A linear layer ([B, in] -> [B, out]) computed row by row the same way whatever B: an
    elementwise product and a sum over the last dimension (the layers are tiny)."""
    return (x[:, None, :] * weight).sum(-1) + bias


def _masked_softmax(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Softmax over [model, experts...] with absent experts at exactly 0."""
    keep = torch.cat([torch.ones_like(present[:, :1]), present], dim=-1) > 0
    return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)


_mix = scripted(mix_log_probs)


def bits(logprob: float) -> float:
    return -logprob / math.log(2.0)
