"""`cellserve eval`: bits/char and keystroke savings of models, against a prefix-trie baseline.

Keystroke savings simulate a user typing the text. At each position *inside* a word (an
identifier: letters, digits, underscore; at least one of its characters already typed), a
completer offers the rest of the current word. The user accepts an offer when it is exactly the
real rest of the word and accepting saves keystrokes, then continues after the word; otherwise
they type the next character themselves. Savings = keystrokes saved / characters in the text.

- greedy: the model's greedy completion of the word (``cellserve.nn.decode``), one key (Tab).
- top-3: the model's 3 most probable word completions (beam search): the first costs one key,
  the second or third two (a key to pick, Tab).
- trie: the most frequent word of the training corpus with the typed prefix, one key.

How it stays fast: the text is read once, in pieces, by fused full-sequence forwards that give
the full state after every character (``cellserve.nn.along``); bits/char come from the same
pass. A greedy offer equals the rest exactly when the argmax after each character of the rest is
the next character of the rest, and the argmax after the last is not a word character: the
greedy chain, while right, runs through the real text's states, so the pass answers it with no
extra forward. Top-3 offers need beam searches: they fork the states of a piece in batches,
one round per typed character of the words still unaccepted (a word accepted after its second
character never asks at its third).
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .memory.mixer import Mixer
from .memory.reference import ForkMixing, mix_along
from .memory.settings import MemorySettings
from .memory.window import SessionMemory
from .nn.along import Along, StatesAlong
from .nn.checkpoint import LoadedModel
from .nn.decode import StepMix, beam_search_batch, is_word_char

LN2 = math.log(2.0)
MAX_WORD = 32  # longest completion offered, in characters
PIECE = 8192  # characters per forward pass (ends at a non-word character)
MEMORY_PIECE = 2048  # with the memory: beams fork it this far back at most (cheaper chain walks)
WORD = re.compile(r"\w+")  # str patterns: alphanumerics (str.isalnum) and "_", as is_word_char


def word_end(text: str, p: int) -> int:
    while p < len(text) and is_word_char(text[p]):
        p += 1
    return p


def offer_positions(text: str) -> list[int]:
    """Positions p with text[p-1] and text[p] both word characters: inside a word, with the
    word's rest (text[p:word_end]) still to type."""
    return [p for p in range(1, len(text)) if is_word_char(text[p]) and is_word_char(text[p - 1])]


def words_of(text: str) -> list[tuple[int, int]]:
    """(start, end) of every word with at least two characters (the ones with offers)."""
    return [(m.start(), m.end()) for m in WORD.finditer(text) if m.end() - m.start() >= 2]


class WordTrie:
    """Most frequent word for every prefix (a trie flattened into a dict of prefixes)."""

    def __init__(self, words: Counter[str], only: set[str] | None = None) -> None:
        """``only``: the prefixes that will be asked for (saves time and memory on big corpora)."""
        best: dict[str, tuple[int, str]] = {}
        for w, n in words.items():
            for k in range(1, min(len(w), MAX_WORD)):
                pre = w[:k]
                if only is not None and pre not in only:
                    continue
                cur = best.get(pre)
                if cur is None or (n, w) > cur:  # ties: the lexicographically larger, deterministic
                    best[pre] = (n, w)
        self._best = {p: w for p, (_, w) in best.items()}
        self.words = len(words)

    @classmethod
    def from_text(cls, text: str, only: set[str] | None = None) -> WordTrie:
        return cls(Counter(WORD.findall(text)), only)

    def complete(self, prefix: str) -> str:
        w = self._best.get(prefix)
        return w[len(prefix) :] if w else ""


def simulate(text: str, offers: dict[int, str]) -> int:
    """Keystrokes saved when offers[p] (the rest of the word offered at p) is accepted exactly
    when it equals the real rest of the word (one key)."""
    saved, p = 0, 0
    while p < len(text):
        rest = text[p : word_end(text, p)] if p in offers else ""
        if rest and offers[p] == rest:
            saved += len(rest) - 1  # one Tab instead of len(rest) characters
            p += len(rest)
        else:
            p += 1
    return saved


def simulate_top(text: str, positions: Iterable[int], suggest: Callable[[int], list[str]]) -> int:
    """Keystrokes saved with ranked offers, typing position by position (the naive reference of
    the batched top-n count): at an offer position, ``suggest(p)`` lists the word completions;
    the first costs one key, the others two, and one is taken only if it saves."""
    at = set(positions)
    saved, p = 0, 0
    while p < len(text):
        if p in at:
            rest = text[p : word_end(text, p)]
            sugg = suggest(p)
            cost = 1 if sugg[:1] == [rest] else 2 if rest in sugg else None
            if cost is not None and len(rest) > cost:
                saved += len(rest) - cost
                p += len(rest)
                continue
        p += 1
    return saved


def trie_prefixes(text: str) -> set[str]:
    return {text[s:p] for s, e in words_of(text) for p in range(s + 1, e)}


def trie_saved(text: str, trie: WordTrie) -> int:
    offers = {}
    for s, e in words_of(text):
        for p in range(s + 1, e):
            offers[p] = trie.complete(text[s:p])
    return simulate(text, offers)


@dataclass
class PartResult:
    part: str
    model: str
    chars: int
    offers: int  # positions inside words
    bits_per_char: float
    bzip2_bits_per_char: float
    xz_bits_per_char: float
    saved_greedy: float  # fraction of characters
    saved_top3: float
    saved_trie: float
    # with the session memory (the model's mixer; None where the model has none)
    bits_per_char_memory: float | None = None
    saved_greedy_memory: float | None = None
    saved_top3_memory: float | None = None
    zpaq_bits_per_char: float | None = None  # zpaq -m5 on the same text; None without zpaq


@dataclass
class _Tally:
    bits: float = 0.0
    scored: int = 0
    greedy: int = 0
    top: int = 0


def pieces(text: str, size: int = PIECE) -> list[tuple[int, int]]:
    """Consecutive [a, b) covering the text, each ending after a non-word character (or at the
    end), so no word crosses a piece."""
    out, a = [], 0
    while a < len(text):
        b = min(len(text), a + size)
        while b < len(text) and is_word_char(text[b - 1]):
            b += 1
        out.append((a, b))
        a = b
    return out


@torch.no_grad()
def evaluate_model(
    loaded: LoadedModel,
    text: str,
    *,
    top_n: int = 3,
    width: int = 4,
    piece: int = PIECE,
    progress: Callable[[int], None] | None = None,
    mixer: Mixer | None = None,
    memory: MemorySettings | None = None,
) -> _Tally:
    """Bits and keystrokes saved (greedy, top-n) over ``text``, read from the zero state. With
    a ``mixer``: of the served distribution, the model mixed with a session memory that reads
    the text as it goes (beams fork it per generated text)."""
    model, vocab = loaded.model, loaded.vocab
    ids = vocab.encode_tensor(text)
    word_ids = torch.tensor([i > 0 and is_word_char(ch) for i, ch in enumerate(vocab.chars)])
    runner = StatesAlong(model)
    tally = _Tally()
    state = model.init_state(1)
    mem = None
    if mixer is not None:
        piece = min(piece, MEMORY_PIECE)
        # the window the mixer was trained with, unless the caller says otherwise
        trained = loaded.spec.memory
        base = memory or (MemorySettings(window=trained.window) if trained else MemorySettings())
        mem = SessionMemory(base.model_copy(update={"max_rewind": max(base.max_rewind, piece + 2 * MAX_WORD)}))
    ids_list = ids.tolist()
    for a, b in pieces(text, piece):
        along = runner.run(ids[a:b], state)
        state = along.final
        scores = along.logits
        mixing: Callable[[list[int]], StepMix] | None = None
        if mixer is not None and mem is not None:
            scores = mix_along(mem, ids_list[a:b], torch.log_softmax(along.logits.float(), dim=-1), mixer)
            mixing = _fork_mixing(mixer, mem, a, len(vocab))
        targets = ids[a + 1 : b + 1]
        tally.bits += F.cross_entropy(scores[: targets.numel()], targets, reduction="sum").item() / LN2
        tally.scored += targets.numel()
        words = words_of(text[a:b])  # positions within the piece
        tally.greedy += _greedy_saved(scores, ids[a:b], words, word_ids)
        tally.top += _top_saved(loaded, along, text[a:b], words, top_n, width, mixing)
        if progress:
            progress(b - a)
    return tally


def _fork_mixing(mixer: Mixer, mem: SessionMemory, a: int, v: int) -> Callable[[list[int]], StepMix]:
    """For beams asked after piece positions ``at``: forks of the memory as of each position."""

    def make(at: list[int]) -> StepMix:
        return ForkMixing(mixer, [mem.fork(at=a + t + 1) for t in at], v)

    return make


def _greedy_saved(scores: torch.Tensor, ids: torch.Tensor, words: list[tuple[int, int]], word_ids: torch.Tensor) -> int:
    """Greedy offers, answered from the pass (module docstring). ok[t]: the argmax after
    character t is character t + 1; stops[t]: the argmax after t is not a word character.
    With the memory the same holds: while the greedy chain is right, its fork of the memory has
    read exactly the real text, so its distributions are the pass's."""
    top = scores.argmax(-1)  # [T]
    ok = torch.zeros(ids.numel(), dtype=torch.bool)
    ok[:-1] = top[:-1] == ids[1:]
    stops = ~word_ids[top]
    okl, stopl = ok.tolist(), stops.tolist()
    saved = 0
    for s, e in words:
        # offered at p (after p - s typed characters): rest = [p, e); right iff ok on p-1..e-2
        # and stops at e-1, within MAX_WORD characters; scan p from the end to know "all ok after"
        good_tail = True  # ok[t] for every t in [p, e-2]
        first = None
        for p in range(e - 1, s, -1):
            good_tail = good_tail and (p == e - 1 or okl[p])
            rest = e - p
            if rest <= MAX_WORD and okl[p - 1] and good_tail and (stopl[e - 1] or rest == MAX_WORD):
                first = p  # keep the smallest p: the user accepts the first right offer
        if first is not None:
            saved += e - first - 1
    return saved


def _top_saved(
    loaded: LoadedModel,
    along: Along,
    text: str,
    words: list[tuple[int, int]],
    n: int,
    width: int,
    mixing: Callable[[list[int]], StepMix] | None = None,
) -> int:
    """Top-n offers by beam search: round j asks at the (j+1)-th character of each word still
    unaccepted. The first suggestion costs one key, the others two; accepted only if it saves."""
    saved = 0
    active = list(words)
    j = 1
    while active:
        asking = [(s, e) for s, e in active if s + j < e]
        if not asking:
            break
        at = torch.tensor([s + j - 1 for s, _ in asking])  # state after the typed characters
        found = beam_search_batch(
            loaded.model,
            loaded.vocab,
            along.at(at),
            n=n,
            width=width,
            until="word",
            max_chars=MAX_WORD,
            logits=along.logits[at],  # the model's: ``mix`` turns them into the served ones
            mix=None if mixing is None else mixing(at.tolist()),
        )
        active = []
        for (s, e), sugg in zip(asking, found, strict=True):
            rest = text[s + j : e]
            rank = next((k for k, x in enumerate(sugg) if x.text == rest), None)
            cost = None if rank is None else (1 if rank == 0 else 2)
            if cost is not None and len(rest) > cost:
                saved += len(rest) - cost
            else:
                active.append((s, e))
        j += 1
    return saved


@dataclass
class EvalReport:
    rows: list[PartResult]
    baseline: str  # what the trie was built from
    trie_words: int
    max_chars: int
    seconds: float
    top_n: int = 3
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        head = (
            "part",
            "model",
            "chars",
            "bits/char",
            "bzip2 -9",
            "xz -9e",
            "saved greedy",
            f"saved top-{self.top_n}",
            "saved trie",
            "greedy/trie",
            f"top-{self.top_n}/trie",
            *_MEMORY_HEAD(self.top_n),
        )
        lines = [head]
        for r in self.rows:
            lines.append(
                (
                    r.part,
                    r.model,
                    f"{r.chars:,}",
                    f"{r.bits_per_char:.3f}",
                    f"{r.bzip2_bits_per_char:.3f}",
                    f"{r.xz_bits_per_char:.3f}",
                    f"{r.saved_greedy:.1%}",
                    f"{r.saved_top3:.1%}",
                    f"{r.saved_trie:.1%}",
                    _ratio(r.saved_greedy, r.saved_trie),
                    _ratio(r.saved_top3, r.saved_trie),
                    *_memory_cells(r),
                )
            )
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        out = [
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            for row in lines
        ]
        out.insert(1, "  ".join("-" * w for w in widths))
        out.append("")
        out.append(f"baseline: prefix trie of {self.trie_words:,} words from {self.baseline}")
        out.append(
            f"{self.seconds:.0f} s; text: the first {self.max_chars:,} characters of each part"
            if self.max_chars
            else f"{self.seconds:.0f} s"
        )
        out += self.notes
        return "\n".join(out)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def _MEMORY_HEAD(top_n: int) -> tuple[str, ...]:  # noqa: N802 (a constant row, parametrized)
    return (
        "zpaq -m5",
        "bits +mem",
        "vs zpaq",
        "greedy +mem",
        f"top-{top_n} +mem",
        "greedy+m/trie",
        f"top-{top_n}+m/trie",
    )


def _memory_cells(r: PartResult) -> tuple[str, ...]:
    """The memory columns of a row ("-" where the model has no mixer or zpaq is missing)."""
    z = "-" if r.zpaq_bits_per_char is None else f"{r.zpaq_bits_per_char:.3f}"
    if r.bits_per_char_memory is None or r.saved_greedy_memory is None or r.saved_top3_memory is None:
        return (z, "-", "-", "-", "-", "-", "-")
    vs = "-" if r.zpaq_bits_per_char is None else f"{r.bits_per_char_memory / r.zpaq_bits_per_char - 1:+.1%}"
    return (
        z,
        f"{r.bits_per_char_memory:.3f}",
        vs,
        f"{r.saved_greedy_memory:.1%}",
        f"{r.saved_top3_memory:.1%}",
        _ratio(r.saved_greedy_memory, r.saved_trie),
        _ratio(r.saved_top3_memory, r.saved_trie),
    )


def evaluate(
    models: list[LoadedModel],
    parts: dict[str, str],
    trie: WordTrie,
    baseline: str,
    compressor_bits: Callable[[str], tuple[float, float]],
    *,
    max_chars: int = 0,
    top_n: int = 3,
    width: int = 4,
    show_progress: bool = True,
    started: float | None = None,
    mixers: dict[str, Mixer] | None = None,
    memory: MemorySettings | None = None,
    zpaq: Callable[[str], float | None] | None = None,
) -> EvalReport:
    """One row per (part, model), then an "overall" row per model (totals over the parts).
    ``started`` (a ``time.perf_counter()`` value): where the report's time counts from, e.g.
    the command's start, so loading the corpus and the models is counted; default: now.
    ``mixers`` (by model name): also measure with the session memory (``memory`` settings);
    ``zpaq``: bits/char of zpaq -m5 on each part (None: not installed)."""
    from tqdm import tqdm

    t0 = time.perf_counter() if started is None else started
    rows: list[PartResult] = []
    comp = {name: compressor_bits(text) for name, text in parts.items()}
    trie_s = {name: trie_saved(text, trie) for name, text in parts.items()}
    zp = {name: zpaq(text) if zpaq else None for name, text in parts.items()}
    for loaded in models:
        totals, totals_mem = _Tally(), _Tally()
        mixer = (mixers or {}).get(loaded.spec.name)
        offers = 0
        for name, text in parts.items():
            with tqdm(
                total=len(text),
                desc=f"{loaded.spec.name} {name}",
                unit="char",
                unit_scale=True,
                disable=not show_progress,
                file=sys.stderr,
                leave=False,
            ) as bar:
                t = evaluate_model(loaded, text, top_n=top_n, width=width, progress=bar.update)
                tm = None
                if mixer is not None:
                    bar.reset()
                    bar.set_description(f"{loaded.spec.name} {name} +memory")
                    tm = evaluate_model(
                        loaded, text, top_n=top_n, width=width, progress=bar.update, mixer=mixer, memory=memory
                    )
            n_off = sum(e - s - 1 for s, e in words_of(text))
            offers += n_off
            rows.append(_row(name, loaded.spec.name, text, n_off, t, comp[name], trie_s[name]))
            _add_memory(rows[-1], tm, len(text), zp[name])
            _accumulate(totals, t)
            if tm is not None:
                _accumulate(totals_mem, tm)
        if len(parts) > 1:
            chars = sum(len(t) for t in parts.values())
            zb = sum(comp[n][0] * len(t) for n, t in parts.items()) / max(chars, 1)
            zx = sum(comp[n][1] * len(t) for n, t in parts.items()) / max(chars, 1)
            rows.append(
                PartResult(
                    "overall",
                    loaded.spec.name,
                    chars,
                    offers,
                    totals.bits / max(totals.scored, 1),
                    zb,
                    zx,
                    totals.greedy / max(chars, 1),
                    totals.top / max(chars, 1),
                    sum(trie_s.values()) / max(chars, 1),
                )
            )
            zs = [zp[n] for n in parts]
            zall = (
                None
                if any(z is None for z in zs)
                else sum(z * len(parts[n]) for n, z in zip(parts, zs, strict=True) if z) / chars
            )
            _add_memory(rows[-1], totals_mem if mixer is not None else None, chars, zall)
    rows.sort(key=lambda r: (r.part == "overall", list(parts).index(r.part) if r.part in parts else 0))
    return EvalReport(rows, baseline, trie.words, max_chars, time.perf_counter() - t0, top_n)


def _accumulate(into: _Tally, t: _Tally) -> None:
    for k in ("bits", "scored", "greedy", "top"):
        setattr(into, k, getattr(into, k) + getattr(t, k))


def _add_memory(row: PartResult, t: _Tally | None, chars: int, zpaq: float | None) -> None:
    row.zpaq_bits_per_char = zpaq
    if t is not None:
        n = max(chars, 1)
        row.bits_per_char_memory = t.bits / max(t.scored, 1)
        row.saved_greedy_memory = t.greedy / n
        row.saved_top3_memory = t.top / n


def _row(part: str, model: str, text: str, offers: int, t: _Tally, comp: tuple[float, float], trie: int) -> PartResult:
    n = max(len(text), 1)
    return PartResult(
        part, model, len(text), offers, t.bits / max(t.scored, 1), comp[0], comp[1], t.greedy / n, t.top / n, trie / n
    )


def zpaq_bits(text: str) -> float | None:
    """zpaq -m5 bits per character of ``text`` (UTF-8); None when zpaq is not installed.

    The archive's fixed part (block header with the -m5 model, file name, dates) is taken off:
    the size counted is that of the text's archive minus that of a one-byte file's, plus one
    byte, so short texts are not charged for the header (in zpaq's favour)."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("zpaq")
    if exe is None:
        return None

    def size(data: bytes, d: Path) -> int:
        (d / "t").write_bytes(data)
        arc = d / "t.zpaq"
        arc.unlink(missing_ok=True)
        subprocess.run([exe, "a", str(arc), "t", "-m5"], cwd=d, check=True, capture_output=True)
        return arc.stat().st_size

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        raw = text.encode()
        n = size(raw, d) - size(b"x", d) + 1
    return 8 * n / max(len(text), 1)


def read_texts(paths: Iterable[Path], max_chars: int) -> str:
    """The text of files (folders: their *.py, sorted), up to ``max_chars`` characters (0: all)."""
    from .nn.corpus import gather_files

    out: list[str] = []
    total = 0
    for _, p in gather_files(list(paths)):
        t = p.read_bytes().decode("utf-8", errors="replace")
        if t and not t.endswith("\n"):
            t += "\n"
        out.append(t)
        total += len(t)
        if max_chars and total >= max_chars:
            break
    text = "".join(out)
    return text[:max_chars] if max_chars else text
