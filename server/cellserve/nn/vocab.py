"""Character vocabulary: index 0 is reserved for every character outside the vocabulary.

The vocabulary is the most frequent characters of the training corpus, capped. Anything else
(emoji, other scripts, control characters the corpus never used) encodes to index 0 ("unknown")
and decodes to U+FFFD. Every known character round-trips through encode/decode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch

UNKNOWN_ID = 0
UNKNOWN_CHAR = "\ufffd"  # what decode() prints for index 0


class Vocab:
    """Ordered characters; ``chars[0] == ""`` stands for the unknown slot."""

    def __init__(self, chars: Sequence[str]) -> None:
        if not chars or chars[0] != "":
            raise ValueError('vocabulary entry 0 must be "" (the unknown slot)')
        seen: set[str] = set()
        for i, ch in enumerate(chars[1:], start=1):
            if len(ch) != 1:
                raise ValueError(f"vocabulary entry {i} must be exactly one character, got {ch!r}")
            if ch in seen:
                raise ValueError(f"vocabulary entry {i} repeats {ch!r}")
            seen.add(ch)
        self.chars: list[str] = list(chars)
        # what ``char`` returns per id, as one table (the answers' top-k read it per keystroke)
        self.served: tuple[str, ...] = (UNKNOWN_CHAR, *self.chars[1:])
        self._index = {ch: i for i, ch in enumerate(self.chars) if i > 0}

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: object) -> bool:
        return ch in self._index

    @classmethod
    def from_counts(cls, counts: Counter[str], max_size: int, min_count: int = 1) -> Vocab:
        """The ``max_size - 1`` most frequent characters seen at least ``min_count`` times.

        Ties break by code point so the result is deterministic.
        """
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        keep = [ch for ch, n in ranked if n >= min_count][: max_size - 1]
        return cls([""] + sorted(keep))

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_size: int, min_count: int = 1) -> Vocab:
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(t)
        return cls.from_counts(counts, max_size, min_count)

    def id(self, ch: str) -> int:
        return self._index.get(ch, UNKNOWN_ID)

    def encode(self, text: str) -> list[int]:
        get = self._index.get
        return [get(ch, UNKNOWN_ID) for ch in text]

    def encode_tensor(self, text: str) -> torch.Tensor:
        """[len(text)] int64."""
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] if i > 0 else UNKNOWN_CHAR for i in ids)

    def char(self, i: int) -> str:
        return self.chars[i] if i > 0 else UNKNOWN_CHAR
