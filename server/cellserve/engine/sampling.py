"""Batched next-token choice for completion steps, on the device.

Every sampling row carries its own temperature, top-k, top-p and one uniform draw from its
request's seeded generator, so all rows of an iteration are decided by a handful of tensor ops
(inverse-CDF sampling) instead of a ``multinomial`` call per row. The uniform comes from the
host (``random.Random(seed)`` per request), which makes a seeded completion repeat exactly on
any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn.decode import MIN_TEMPERATURE
from .plan import SampleParams


def choose(logits: torch.Tensor, params: Sequence[SampleParams]) -> torch.Tensor:
    """logits [S, V] (fp32) -> token ids [S] int64: argmax where temperature < MIN_TEMPERATURE
    (0 included; see cellserve.nn.decode, the reference), else a draw from the
    temperature-scaled distribution restricted to the top-k and the top-p nucleus."""
    dev = logits.device
    greedy = logits.argmax(dim=-1)  # [S]
    if all(p.temperature < MIN_TEMPERATURE for p in params):
        return greedy
    v = logits.shape[1]
    temp = torch.tensor([p.temperature if p.temperature >= MIN_TEMPERATURE else 1.0 for p in params], device=dev)
    top_k = torch.tensor([p.top_k if 0 < p.top_k < v else v for p in params], device=dev)
    top_p = torch.tensor([p.top_p for p in params], device=dev)
    u = torch.tensor([p.uniform for p in params], device=dev)
    probs = torch.softmax(logits / temp[:, None], dim=-1)  # [S, V]
    sorted_p, order = probs.sort(dim=-1, descending=True)  # [S, V]
    rank = torch.arange(v, device=dev)[None, :]  # [1, V]
    before = sorted_p.cumsum(dim=-1) - sorted_p  # probability mass strictly above each entry
    # keep the top-k, and entries whose preceding mass is below top_p (the first always stays)
    keep = (rank < top_k[:, None]) & ((before < top_p[:, None]) | (rank == 0))
    kept = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    cdf = kept.cumsum(dim=-1)  # [S, V]
    target = (u * cdf[:, -1])[:, None]  # [S, 1]
    pick = torch.searchsorted(cdf, target, right=True).clamp_(max=v - 1)  # [S, 1]
    # searchsorted can land on a zeroed (filtered) entry only by rounding at the very top: clamp
    # into the kept prefix, which is contiguous because the kept set is a prefix in sorted order
    last_kept = keep.sum(dim=-1, keepdim=True) - 1
    pick = torch.minimum(pick, last_kept)
    sampled = order.gather(1, pick).squeeze(1)  # [S]
    is_greedy = torch.tensor([p.temperature < MIN_TEMPERATURE for p in params], device=dev)
    return torch.where(is_greedy, greedy, sampled)
