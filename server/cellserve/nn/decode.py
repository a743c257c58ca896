"""Offline reference decoders on a plain CharLM + Vocab (no engine): greedy, sampled, beam.

They define what the server's completions and suggestions must equal, and ``cellserve eval``
uses the batched forms.

- ``complete``: the server's Complete, one alternative at a time. The first character comes
  from the distribution of the context's state; each drawn character is fed back. An
  alternative ends when its text ends with a stop string or reaches ``max_chars``.
- Sampling follows ``engine/sampling.py`` exactly: temperature-scaled softmax, then the top-k
  and the top-p nucleus (an entry stays while the probability mass strictly above it is below
  ``top_p``; the most probable always stays), then inverse-CDF with one uniform per character
  from ``random.Random(f"{seed}/{alternative}")``, drawn only when temperature > 0. That host
  generator (not a torch.Generator) is what makes a seeded completion repeat on any device, so
  the reference uses the same one. A temperature below ``MIN_TEMPERATURE`` is greedy (argmax):
  below it the scaled logits overflow fp32 for ordinary logit gaps, and the distribution is
  one-hot to fp32 precision anyway.
- ``beam_search``: the n most probable completions of the current word (identifier characters
  up to the first other character) or of the line (up to the newline). A completion's
  log-probability is that of its characters *and* of the end that follows them (a non-word
  character, or the newline), so "print" and "printf" compete fairly; a completion that reaches
  ``max_chars`` without an end counts with the probability of its characters alone. Completions
  are never empty, and in line mode never contain the unknown character. One forward per step
  for all beams of all queries.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .charlm import CharLM, State
from .kernels import step_kernel
from .vocab import Vocab

MIN_TEMPERATURE = 1e-4
Until = Literal["word", "line"]
# Adjusts the log-probabilities of a beam step [B, V]: (logprobs, parent beam index [B] or None
# at the first step, the beam's new character [B] or None) -> logprobs (e.g. the session memory)
StepMix = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Suggestion:
    text: str
    logprob: float  # natural log: characters plus the end that follows them


def is_word_char(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


@torch.no_grad()
def state_after(model: CharLM, vocab: Vocab, context: str) -> State:
    """The state after reading ``context`` from the zero state ([L, 1, H] each)."""
    state = model.init_state(1)
    if context:
        _, state = model(vocab.encode_tensor(context)[None], state)
    return state


@torch.no_grad()
def next_logits(model: CharLM, state: State) -> torch.Tensor:
    """[B, V]: the next-character logits a state predicts (the top layer's h through the head)."""
    out: torch.Tensor = model.head(state[0][-1])
    return out


def choose_one(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, uniform: float) -> int:
    """One row, the server's rule (see the module docstring). logits [V] fp32."""
    if temperature < MIN_TEMPERATURE:
        return int(logits.argmax())
    v = logits.shape[0]
    k = top_k if 0 < top_k < v else v
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_p, order = probs.sort(descending=True)
    before = sorted_p.cumsum(0) - sorted_p
    keep = (torch.arange(v) < k) & ((before < top_p) | (torch.arange(v) == 0))
    cdf = torch.where(keep, sorted_p, torch.zeros_like(sorted_p)).cumsum(0)
    pick = int(torch.searchsorted(cdf, (uniform * cdf[-1]).reshape(1), right=True))
    return int(order[min(pick, v - 1, int(keep.sum()) - 1)])


@torch.no_grad()
def complete(
    model: CharLM,
    vocab: Vocab,
    context: str,
    *,
    max_chars: int = 32,
    stop: Sequence[str] = (),
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    n: int = 1,
) -> list[str]:
    """The texts of the n alternatives the server's Complete returns for a session that has
    read ``context`` (with this seed; greedy ignores it)."""
    start = state_after(model, vocab, context)
    texts = []
    for i in range(n):
        rng = random.Random(f"{seed}/{i}")
        state, logits, text = start, next_logits(model, start)[0], ""
        while True:
            u = rng.random() if temperature > 0 else 0.0
            tok = choose_one(logits.float(), temperature, top_k, top_p, u)
            text += vocab.char(tok)
            if any(text.endswith(s) for s in stop) or len(text) >= max_chars:
                break
            with step_kernel(model.device, 1):
                out, state = model(torch.tensor([[tok]]), state)
            logits = out[0, -1]
        texts.append(text)
    return texts


def greedy(model: CharLM, vocab: Vocab, context: str, max_chars: int = 32) -> str:
    return complete(model, vocab, context, max_chars=max_chars)[0]


def _classes(vocab: Vocab, until: Until) -> tuple[torch.Tensor, torch.Tensor]:
    """(continues [V] bool, ends [V] bool) for a mode; the unknown entry never continues."""
    chars = vocab.chars
    if until == "word":
        cont = [i > 0 and is_word_char(ch) for i, ch in enumerate(chars)]
        return torch.tensor(cont), ~torch.tensor(cont)
    return torch.tensor([i > 0 and ch != "\n" for i, ch in enumerate(chars)]), torch.tensor(
        [ch == "\n" for ch in chars]
    )


@torch.no_grad()
def beam_search_batch(
    model: CharLM,
    vocab: Vocab,
    states: State,
    *,
    n: int = 3,
    width: int | None = None,
    until: Until = "word",
    max_chars: int = 32,
    logits: torch.Tensor | None = None,
    mix: StepMix | None = None,
) -> list[list[Suggestion]]:
    """The n best completions for each of Q queries, each starting from its state in
    ``states`` ([L, Q, H] each); ``logits`` [Q, V] (the states' next-character logits) saves a
    forward when the caller has them. ``width`` beams per query (default ``max(n, 4)``).
    ``mix`` (optional) turns each step's log-probabilities into the served ones (the session
    memory's mixed distribution, with a memory fork per beam).

    Every step runs one forward for the live beams of all queries. A beam is dropped as soon as
    it cannot reach its query's top n (log-probabilities only fall as a completion grows).
    """
    width = max(n, 4) if width is None else width
    if width < n:
        raise ValueError("beam width must be at least n")
    cont, ends = _classes(vocab, until)
    q_count = states[0].shape[1]
    first = next_logits(model, states) if logits is None else logits
    neg = float("-inf")
    # finished[q]: best (logprob, text) so far, sorted, at most n
    finished: list[list[tuple[float, str]]] = [[] for _ in range(q_count)]
    # live beams, flat: query index, token ids so far, log-prob, and their states/logits
    lp_all = torch.log_softmax(first.float(), dim=-1)  # [Q, V]
    if mix is not None:
        lp_all = mix(lp_all, None, None)
    owner = torch.arange(q_count)
    beam_lp = torch.zeros(q_count)
    texts: list[list[int]] = [[] for _ in range(q_count)]
    state = states
    for step in range(max_chars):
        if step > 0:
            # the beams' texts so far end here: record them with the probability of an end
            end_lp = beam_lp + torch.logsumexp(lp_all.masked_fill(~ends, neg), dim=-1)
            for b, (q, e) in enumerate(zip(owner.tolist(), end_lp.tolist(), strict=True)):
                _offer(finished[q], e, texts[b], vocab, n)
        # extend: per query, the best `width` (beam, character) pairs that still continue
        ext = (beam_lp[:, None] + lp_all).masked_fill(~cont, neg)  # [B, V]
        v = ext.shape[1]
        grid = torch.full((q_count, width * v), neg)
        slot = _slot_in_query(owner)  # each live beam's index among its query's beams
        grid.view(q_count, width, v)[owner, slot] = ext
        best, idx = grid.topk(width, dim=-1)  # [Q, W]
        keep = torch.isfinite(best)
        floor = torch.tensor([f[-1][0] if len(f) >= n else neg for f in finished])  # [Q]
        keep &= best > floor[:, None]
        qs, ws = keep.nonzero(as_tuple=True)
        if qs.numel() == 0:
            break
        src_slot, tok = idx[qs, ws] // v, idx[qs, ws] % v
        # map (query, slot) back to the flat live-beam index
        flat = torch.full((q_count, width), -1, dtype=torch.long)
        flat[owner, slot] = torch.arange(owner.numel())
        parent = flat[qs, src_slot]
        texts = [texts[p] + [t] for p, t in zip(parent.tolist(), tok.tolist(), strict=True)]
        owner, beam_lp = qs, best[qs, ws]
        last = step == max_chars - 1
        if last:  # at the length limit: the characters alone
            for b, q in enumerate(owner.tolist()):
                _offer(finished[q], float(beam_lp[b]), texts[b], vocab, n)
            break
        par_state = tuple(s[:, parent] for s in state)
        with step_kernel(model.device, tok.numel()):
            out, state = model(tok[:, None], par_state)
        lp_all = torch.log_softmax(out[:, -1].float(), dim=-1)
        if mix is not None:
            lp_all = mix(lp_all, parent, tok)
    return [[Suggestion(t, lp) for lp, t in f] for f in finished]


def _slot_in_query(owner: torch.Tensor) -> torch.Tensor:
    """For a sorted-by-query flat list of beams, each beam's rank within its query."""
    if owner.numel() == 0:
        return owner
    starts = torch.ones_like(owner, dtype=torch.bool)
    starts[1:] = owner[1:] != owner[:-1]
    first_of_run = torch.cummax(torch.where(starts, torch.arange(owner.numel()), 0), dim=0).values
    return torch.arange(owner.numel()) - first_of_run


def _offer(best: list[tuple[float, str]], lp: float, ids: list[int], vocab: Vocab, n: int) -> None:
    if not ids or math.isinf(lp) or (len(best) >= n and lp <= best[-1][0]):
        return
    best.append((lp, vocab.decode(ids)))
    best.sort(key=lambda e: -e[0])
    del best[n:]


def beam_search(
    model: CharLM,
    vocab: Vocab,
    context: str,
    *,
    n: int = 3,
    width: int | None = None,
    until: Until = "word",
    max_chars: int = 32,
) -> list[Suggestion]:
    """The n most probable completions after ``context``, most probable first."""
    return beam_search_batch(
        model, vocab, state_after(model, vocab, context), n=n, width=width, until=until, max_chars=max_chars
    )[0]
