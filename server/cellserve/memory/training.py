"""`cellserve train-mixer`: fit a model's mixer on the training corpus, measure it held out.

Rows come from spans of the training text (each read by the model and a fresh memory from its
start, as a session would); for each position the mixer needs only its features and each
expert's probability of the true next character, so the rows are small and the fit is a few
hundred Adam steps on the CPU. The held-out packages are used for the quality figures only.
"""

from __future__ import annotations

import datetime
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..nn.checkpoint import LoadedModel
from .features import HOST_FEATURES
from .mixer import EPS, Mixer
from .reference import BATCH, memory_along, mixed_logprobs, model_logprobs
from .settings import MemorySettings

LN2 = math.log(2.0)


@dataclass
class Rows:
    feats: torch.Tensor  # [N, FEATURES]
    truth: torch.Tensor  # [N, 1 + E]: p_model(next), q_e(next)
    present: torch.Tensor  # [N, E]


def pick_spans(text: str, starts: list[int], count: int, length: int, seed: int) -> list[str]:
    """``count`` spans of ``length`` characters starting at file starts (seeded choice)."""
    ok = [s for s in starts if s + length <= len(text)] or [0]
    rng = random.Random(seed)
    return [text[s : s + length] for s in sorted(rng.sample(ok, min(count, len(ok))))]


@torch.no_grad()
def rows_of(loaded: LoadedModel, spans: list[str], settings: MemorySettings) -> Rows:
    """Training rows of equal-length spans (one batched forward for all of them)."""
    vocab, v = loaded.vocab, len(loaded.vocab)
    ids = torch.stack([vocab.encode_tensor(s) for s in spans])  # [B, S]
    logits, _ = loaded.model(ids, loaded.model.init_state(ids.shape[0]))
    lps = torch.log_softmax(logits.float(), dim=-1)  # [B, S, V]
    feats, truth, present = [], [], []
    for b in range(ids.shape[0]):
        row_ids = ids[b].tolist()
        along = memory_along(row_ids, v, settings)
        n = len(row_ids) - 1  # the last character has no target
        for a in range(0, n, BATCH):
            e = min(n, a + BATCH)
            got = [next(along) for _ in range(a, e)]
            dists = torch.from_numpy(np.stack([g[0] for g in got]))
            host = torch.from_numpy(np.stack([g[1] for g in got]))
            lp = lps[b, a:e]
            tgt = ids[b, a + 1 : e + 1]
            feats.append(Mixer.features(lp, dists, host))
            q = dists.gather(2, tgt[:, None, None].expand(-1, dists.shape[1], 1))[:, :, 0]
            truth.append(torch.cat([lp.gather(1, tgt[:, None]).exp(), q], dim=1))
            present.append(host[:, [3 * j for j in range(dists.shape[1] - 1)] + [HOST_FEATURES - 3]])
    return Rows(torch.cat(feats), torch.cat(truth), torch.cat(present))


def fit(rows: Rows, vocab_size: int, *, steps: int = 600, batch: int = 8192, seed: int = 0) -> tuple[Mixer, float]:
    """Adam on the mean bits of the true next character; returns (mixer, training bits/char)."""
    torch.manual_seed(seed)
    mixer = Mixer()
    opt = torch.optim.Adam(mixer.parameters(), lr=3e-3)
    n = rows.feats.shape[0]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        loss = _loss(mixer, rows, idx, vocab_size)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    with torch.no_grad():
        full = float(_loss(mixer, rows, torch.arange(n), vocab_size)) / LN2
    return mixer.eval(), full


def _loss(mixer: Mixer, rows: Rows, idx: torch.Tensor, v: int) -> torch.Tensor:
    g = mixer.gates(rows.feats[idx], rows.present[idx])
    p = (g * rows.truth[idx]).sum(-1) * (1.0 - EPS) + EPS / v
    return -torch.log(p).mean()


@torch.no_grad()
def heldout_bits(loaded: LoadedModel, mixer: Mixer, text: str, settings: MemorySettings) -> tuple[float, float]:
    """(bits/char memory off, memory on) over a text read from the zero state."""
    ids = loaded.vocab.encode_tensor(text)
    lp = model_logprobs(loaded, ids)
    mixed = mixed_logprobs(lp, ids.tolist(), mixer, settings)
    tgt = ids[1:]
    off = -lp[:-1].gather(1, tgt[:, None]).sum() / LN2
    on = -mixed[:-1].gather(1, tgt[:, None]).sum() / LN2
    n = max(tgt.numel(), 1)
    return float(off) / n, float(on) / n


@dataclass
class TrainResult:
    mixer: Mixer
    rows: int
    train_bits: float
    seconds: float
    date: str


def train_mixer(
    loaded: LoadedModel,
    train_text: str,
    starts: list[int],
    *,
    spans: int,
    span_chars: int,
    steps: int,
    seed: int,
    settings: MemorySettings,
    progress: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    t0 = time.perf_counter()
    chosen = pick_spans(train_text, starts, spans, span_chars, seed)
    progress(f"reading {len(chosen)} spans of {span_chars:,} characters")
    rows = rows_of(loaded, chosen, settings)
    progress(f"fitting on {rows.feats.shape[0]:,} rows")
    mixer, bits = fit(rows, len(loaded.vocab), steps=steps, seed=seed)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return TrainResult(mixer, rows.feats.shape[0], bits, time.perf_counter() - t0, date)
