"""Ranked suggestions: beam searches on forks of session states, one character per iteration.

A suggest op is ordered in its session's queue like any other op; when the scheduler reaches
it, the iteration copies the session's state to the host (a plan read, as a snapshot does), so
the search runs on a fork and the session's slot is never written. From the next iteration
on, every running search advances one character per engine iteration, all of them (all beams
of all queries of one model) in one forward, in the same ``EngineCore.step()`` as everyone's
keystrokes. So a search never holds up an iteration for more than one batched step.

The rules are those of the offline reference ``cellserve.nn.decode.beam_search`` (its
docstring): a completion's log-probability counts its characters and the end that follows
(a non-word character for ``word``, the newline for ``line``); at ``max_chars`` without an end
the characters alone; never empty; the unknown character never continues. ``width`` beams per
query (``max(n, 4)``, as the reference's default); a beam is dropped once it cannot reach the
query's top n. The reference is kept separate on purpose: the tests compare the two.

Owned by the engine core (``engine/completion_book.py`` steps and answers them): ``add``,
``step`` and ``take_finished`` all run on the core thread, so the list of searches never
changes under a step. ``future`` is the caller's ticket, opaque here as in the core: a
finished search's answer leaves through the core's deliveries.

With a session memory (models that ship a mixer), every step's distribution is the mixed one,
as everywhere a distribution is served: each beam carries a fork of the session's memory that
its own characters advance (the session's memory never changes), and the step's rows of all
searches are mixed with one ``Mixer.mix`` call on the device before the host copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import PreconditionFailed
from ..memory.mixer import Mixer
from ..memory.reference import arrays_of
from ..memory.window import MemoryFork
from ..nn.charlm import CharLM
from ..nn.kernels import step_kernel
from ..nn.vocab import Vocab
from .runner import state_from_bytes
from .types import Suggestion, SuggestRequest

NEG = float("-inf")


def beam_width(n: int) -> int:
    return max(n, 4)


def char_classes(vocab: Vocab, scope: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(continues [V] bool, ends [V] bool) for a scope; entry 0 (unknown) never continues."""
    chars = vocab.chars
    if scope == "word":
        cont = torch.tensor([i > 0 and (ch == "_" or ch.isalnum()) for i, ch in enumerate(chars)])
        return cont, ~cont
    cont = torch.tensor([i > 0 and ch != "\n" for i, ch in enumerate(chars)])
    return cont, torch.tensor([ch == "\n" for ch in chars])


@dataclass(eq=False)
class BeamQuery:
    """One suggest request's search. ``raw`` is the forked state as host bytes until the first
    step turns it into tensors."""

    request: SuggestRequest
    future: Any  # the op's ticket (opaque): the core's deliveries answer it with list[Suggestion]
    raw: Sequence[bytes]
    step: int = 0
    done: bool = False
    texts: list[list[int]] = field(default_factory=lambda: [[]])
    beam_lp: torch.Tensor | None = None  # [B]
    lp_all: torch.Tensor | None = None  # [B, V]: next-character log-probs of each live beam
    state: tuple[torch.Tensor, ...] = ()  # [L, B, H] each
    finished: list[tuple[float, str]] = field(default_factory=list)  # best first, at most n
    error: BaseException | None = None  # the search failed (answered with this)
    forks: list[MemoryFork] | None = None  # per live beam: the session memory plus its text

    def result(self) -> list[Suggestion]:
        return [Suggestion(t, lp) for lp, t in self.finished]


class BeamSearches:
    """The running searches of one model."""

    def __init__(self, model: CharLM, vocab: Vocab) -> None:
        self.model = model
        self.vocab = vocab
        self.device = model.device
        self.running: list[BeamQuery] = []
        self._classes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.mixer: Mixer | None = None  # set by the core when the model serves a session memory

    def add(self, request: SuggestRequest, future: Any, raw: Sequence[bytes], memory: MemoryFork | None = None) -> None:
        """A search on a state read (``raw``); ``memory``: the session's memory as of that
        read (mixed only when this model has a mixer)."""
        forks = [memory] if memory is not None and self.mixer is not None else None
        self.running.append(BeamQuery(request, future, raw, forks=forks))

    def fail_all(self, error: BaseException) -> None:
        for q in self.running:
            q.error, q.done = error, True

    def take_finished(self) -> list[BeamQuery]:
        """Removes and returns the searches that are done."""
        done = [q for q in self.running if q.done]
        self.running = [q for q in self.running if not q.done]
        return done

    # ---- device worker thread --------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> int:
        """Advances every running search by one character with one forward; returns the rows
        it ran (0 when every search ended without needing one)."""
        m = self.model
        parents: list[tuple[torch.Tensor, ...]] = []
        toks: list[torch.Tensor] = []
        stepping: list[BeamQuery] = []
        for q in list(self.running):
            if q.done:
                continue
            if q.forks is not None and not all(f.valid() for f in q.forks):
                q.error = PreconditionFailed("the session was rewound or reset during the suggestion; ask again")
                q.done = True
                continue
            if q.lp_all is None:
                self._start(q)
            picked = self._extend(q)
            if picked is None:
                q.done = True
                continue
            parent, tok = picked
            parents.append(tuple(s[:, parent] for s in q.state))
            toks.append(tok)
            stepping.append(q)
        if not stepping:
            return 0
        state = tuple(torch.cat([p[i] for p in parents], dim=1) for i in range(len(parents[0])))
        tok_all = torch.cat(toks)
        with step_kernel(self.device, tok_all.numel()):
            out, new_state = m(tok_all[:, None].to(self.device), state)
        lp = self._mixed(stepping, torch.log_softmax(out[:, -1].float(), dim=-1)).cpu()
        at = 0
        for q, t in zip(stepping, toks, strict=True):
            b = t.numel()
            q.state = tuple(s[:, at : at + b] for s in new_state)
            q.lp_all = lp[at : at + b]
            at += b
        return tok_all.numel()

    def _start(self, q: BeamQuery) -> None:
        m = self.model
        tensors = state_from_bytes(q.raw, m.layers, m.hidden, self.device)
        q.state = tuple(t[:, None] for t in tensors)  # [L, 1, H]
        q.lp_all = self._mixed([q], torch.log_softmax(m.head(q.state[0][-1]).float(), dim=-1)).cpu()
        q.beam_lp = torch.zeros(1)

    def _mixed(self, queries: list[BeamQuery], lp: torch.Tensor) -> torch.Tensor:
        """The rows of ``lp`` ([beams of the queries, in order, V], on the device) mixed with
        each beam's memory fork, for the queries that carry forks: one ``Mixer.mix`` call."""
        if self.mixer is None or all(q.forks is None for q in queries):
            return lp
        rows: list[int] = []
        forks: list[MemoryFork] = []
        at = 0
        for q in queries:
            b = len(q.texts)
            if q.forks is not None:
                rows.extend(range(at, at + b))
                forks.extend(q.forks)
            at += b
        dists, host = arrays_of(forks, lp.shape[-1])
        idx = torch.tensor(rows, device=lp.device)
        mixed = self.mixer.mix(lp[idx], dists.to(lp.device), host.to(lp.device))
        return lp.index_copy(0, idx, mixed)

    def _extend(self, q: BeamQuery) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Records the live beams' ends, then picks the next beams; None when the search is
        over. Returns (parent beam index, next token) per new beam."""
        r = q.request
        cont, ends = self._classes_for(r.scope)
        assert q.lp_all is not None and q.beam_lp is not None
        if q.step > 0:
            end_lp = q.beam_lp + torch.logsumexp(q.lp_all.masked_fill(~ends, NEG), dim=-1)
            for ids, e in zip(q.texts, end_lp.tolist(), strict=True):
                self._offer(q, e, ids)
        width = beam_width(r.n)
        ext = (q.beam_lp[:, None] + q.lp_all).masked_fill(~cont, NEG)  # [B, V]
        v = ext.shape[1]
        best, idx = ext.reshape(-1).topk(min(width, ext.numel()))
        floor = q.finished[-1][0] if len(q.finished) >= r.n else NEG
        keep = torch.isfinite(best) & (best > floor)
        best, idx = best[keep], idx[keep]
        if best.numel() == 0:
            return None
        parent, tok = idx // v, idx % v
        if q.forks is not None:  # each new beam: its parent's fork plus its character
            q.forks = [_advanced(q.forks[p], t) for p, t in zip(parent.tolist(), tok.tolist(), strict=True)]
        q.texts = [q.texts[p] + [t] for p, t in zip(parent.tolist(), tok.tolist(), strict=True)]
        q.beam_lp = best
        q.step += 1
        if q.step >= r.max_chars:  # at the length limit: the characters alone
            for ids, lp in zip(q.texts, best.tolist(), strict=True):
                self._offer(q, lp, ids)
            return None
        return parent.to(self.device), tok

    def _offer(self, q: BeamQuery, lp: float, ids: list[int]) -> None:
        best, n = q.finished, q.request.n
        if not ids or math.isinf(lp) or (len(best) >= n and lp <= best[-1][0]):
            return
        best.append((lp, self.vocab.decode(ids)))
        best.sort(key=lambda e: -e[0])
        del best[n:]

    def _classes_for(self, scope: str) -> tuple[torch.Tensor, torch.Tensor]:
        if scope not in self._classes:
            self._classes[scope] = char_classes(self.vocab, scope)
        return self._classes[scope]


def _advanced(fork: MemoryFork, token: int) -> MemoryFork:
    f = fork.fork()
    f.push((token,))
    return f
