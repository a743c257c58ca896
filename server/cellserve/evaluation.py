"""`cellserve eval`: bits/char and keystroke savings of a model, against a word-trie baseline.

Keystroke savings simulate a user typing the text. At each position *inside* a word (an
identifier: letters, digits, underscore; at least one of its characters already typed), the
completer offers the rest of the current word. The model offers its greedy completion up to
the first non-identifier character; the baseline offers the most frequent training-corpus word
that starts with the typed prefix. The user accepts an offer (one keystroke, e.g. Tab) exactly
when it equals the real rest of the word, then continues after the word; otherwise they type
the next character themselves. Savings = keystrokes saved / characters in the text.

The model's offers depend only on the text before each position, so they are computed for
every candidate position up front, in batches (states gathered from one stepwise pass); the
simulation then walks the text and uses them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .nn.charlm import CharLM
from .nn.checkpoint import LoadedModel
from .nn.kernels import onednn
from .nn.vocab import Vocab

LN2 = math.log(2.0)
MAX_WORD = 32  # longest completion offered, in characters


def is_word_char(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


def word_end(text: str, p: int) -> int:
    while p < len(text) and is_word_char(text[p]):
        p += 1
    return p


def offer_positions(text: str) -> list[int]:
    """Positions p with text[p-1] and text[p] both word characters: inside a word, with the
    word's rest (text[p:word_end]) still to type."""
    return [p for p in range(1, len(text)) if is_word_char(text[p]) and is_word_char(text[p - 1])]


class WordTrie:
    """Most frequent word for every prefix (a trie flattened into a dict of prefixes)."""

    def __init__(self, words: Counter[str]) -> None:
        best: dict[str, tuple[int, str]] = {}
        for w, n in words.items():
            for k in range(1, min(len(w), MAX_WORD)):
                cur = best.get(w[:k])
                if cur is None or (n, w) > cur:  # ties: the lexicographically larger, deterministic
                    best[w[:k]] = (n, w)
        self._best = {p: w for p, (_, w) in best.items()}

    @classmethod
    def from_text(cls, text: str) -> WordTrie:
        words: Counter[str] = Counter()
        start = None
        for i, ch in enumerate(text):
            if is_word_char(ch):
                if start is None:
                    start = i
            elif start is not None:
                words[text[start:i]] += 1
                start = None
        if start is not None:
            words[text[start:]] += 1
        return cls(words)

    def complete(self, prefix: str) -> str:
        w = self._best.get(prefix)
        return w[len(prefix) :] if w else ""


def simulate(text: str, offers: dict[int, str]) -> int:
    """Keystrokes saved when offers[p] (the rest of the word offered at p) is accepted exactly
    when it equals the real rest of the word."""
    saved, p = 0, 0
    while p < len(text):
        rest = text[p : word_end(text, p)] if p in offers else ""
        if rest and offers[p] == rest:
            saved += len(rest) - 1  # one Tab instead of len(rest) characters
            p += len(rest)
        else:
            p += 1
    return saved


@torch.no_grad()
def bits_per_char(model: CharLM, ids: torch.Tensor, chunk: int = 1024) -> tuple[float, int]:
    """Total bits and count of predicting ids[1:] from ids[:-1], from the zero state."""
    state = None
    total = 0.0
    for k in range(0, ids.numel() - 1, chunk):
        x = ids[k : k + chunk][None]
        y = ids[k + 1 : k + 1 + chunk][None]
        logits, state = model(x[:, : y.shape[1]], state)
        total += F.cross_entropy(logits[0], y[0], reduction="sum").item() / LN2
    return total, ids.numel() - 1


@torch.no_grad()
def model_offers(model: CharLM, vocab: Vocab, text: str, positions: list[int], batch: int = 256) -> dict[int, str]:
    """Greedy completion of the current word at each position.

    One stepwise pass (batch 1) over the text collects the state at each wanted position; every
    ``batch`` positions, their completions are decoded together, so memory stays bounded.
    """
    if not positions:
        return {}
    ids = vocab.encode_tensor(text)
    wanted = set(positions)
    word_ids = torch.tensor([i > 0 and is_word_char(ch) for i, ch in enumerate(vocab.chars)])
    out: dict[int, str] = {}
    pending: list[tuple[int, tuple[torch.Tensor, ...], torch.Tensor]] = []  # (p, state [L,1,H]..., logits [V])
    state = model.init_state(1)
    with onednn(False):  # oneDNN is slow for batch-1 single steps
        for p in range(1, max(positions) + 1):
            logits, state = model(ids[p - 1 : p][None], state)
            if p in wanted:
                pending.append((p, state, logits[0, -1]))
            if len(pending) == batch or (pending and p == max(positions)):
                out.update(_greedy_words(model, vocab, word_ids, pending))
                pending = []
    return out


def _greedy_words(
    model: CharLM,
    vocab: Vocab,
    word_ids: torch.Tensor,
    pending: list[tuple[int, tuple[torch.Tensor, ...], torch.Tensor]],
) -> dict[int, str]:
    """Decodes, for all pending positions at once, characters until a non-word character."""
    arity = len(pending[0][1])
    cur = tuple(torch.cat([st[i] for _, st, _ in pending], dim=1) for i in range(arity))  # [L, B, H] each
    tok = torch.stack([lg for _, _, lg in pending]).argmax(-1)  # [B]
    alive = word_ids[tok]
    gen = [torch.where(alive, tok, 0)]
    for _ in range(MAX_WORD - 1):
        if not alive.any():
            break
        logits, cur = model(tok[:, None], cur)
        tok = logits[:, -1].argmax(-1)
        alive = alive & word_ids[tok]
        gen.append(torch.where(alive, tok, 0))
    rows = torch.stack(gen, 1).tolist()  # [B, steps]; 0 after the word ends
    out = {}
    for (p, _, _), row in zip(pending, rows, strict=True):
        end = row.index(0) if 0 in row else len(row)
        out[p] = "".join(vocab.chars[t] for t in row[:end])
    return out


@dataclass
class EvalReport:
    model: str
    files: int
    chars: int
    bits_per_char: float
    model_keystrokes_saved: float  # fraction of characters
    baseline_keystrokes_saved: float
    ratio: float  # model / baseline
    offers: int

    def table(self) -> str:
        rows = [
            ("model", self.model),
            ("files / characters", f"{self.files} / {self.chars:,}"),
            ("bits/char", f"{self.bits_per_char:.4f}"),
            ("keystrokes saved, model (greedy word completion)", f"{self.model_keystrokes_saved:.2%}"),
            ("keystrokes saved, baseline (most frequent word with prefix)", f"{self.baseline_keystrokes_saved:.2%}"),
            ("model / baseline", f"{self.ratio:.2f}x"),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def evaluate_texts(loaded: LoadedModel, texts: list[str], trie: WordTrie) -> EvalReport:
    model, vocab = loaded.model, loaded.vocab
    bits = 0.0
    count = chars = saved_m = saved_b = offers = 0
    for text in texts:
        if len(text) < 2:
            continue
        b, n = bits_per_char(model, vocab.encode_tensor(text))
        bits += b
        count += n
        positions = offer_positions(text)
        offers += len(positions)
        m_off = model_offers(model, vocab, text, positions)
        b_off = {p: trie.complete(text[_word_start(text, p) : p]) for p in positions}
        saved_m += simulate(text, m_off)
        saved_b += simulate(text, b_off)
        chars += len(text)
    sm = saved_m / max(chars, 1)
    sb = saved_b / max(chars, 1)
    return EvalReport(
        model=loaded.spec.name,
        files=len(texts),
        chars=chars,
        bits_per_char=bits / max(count, 1),
        model_keystrokes_saved=sm,
        baseline_keystrokes_saved=sb,
        ratio=sm / sb if sb > 0 else float("inf"),
        offers=offers,
    )


def _word_start(text: str, p: int) -> int:
    while p > 0 and is_word_char(text[p - 1]):
        p -= 1
    return p


def read_texts(paths: list[Path], max_chars: int) -> list[str]:
    """Reads files (folders: their *.py), stopping once ``max_chars`` characters are read."""
    from .nn.corpus import gather_files

    texts: list[str] = []
    total = 0
    for _, p in gather_files(paths):
        t = p.read_bytes().decode("utf-8", errors="replace")
        if max_chars and total + len(t) > max_chars:
            t = t[: max_chars - total]
        texts.append(t)
        total += len(t)
        if max_chars and total >= max_chars:
            break
    return texts
