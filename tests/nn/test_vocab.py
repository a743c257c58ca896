from __future__ import annotations

from collections import Counter

import pytest
from cellserve.nn.vocab import UNKNOWN_CHAR, UNKNOWN_ID, Vocab


def test_most_frequent_capped_and_deterministic() -> None:
    counts = Counter("aaaabbbccd")
    v = Vocab.from_counts(counts, max_size=3)
    assert v.chars == ["", "a", "b"]
    assert Vocab.from_counts(Counter("ba"), max_size=10).chars == ["", "a", "b"]  # ties by code point
    assert Vocab.from_counts(counts, max_size=10, min_count=2).chars == ["", "a", "b", "c"]


def test_round_trip_of_every_known_character() -> None:
    v = Vocab.from_texts(["def f(x):\n\treturn x  # é"], max_size=100)
    known = "".join(v.chars[1:])
    assert v.decode(v.encode(known)) == known
    assert UNKNOWN_ID not in v.encode(known)


@pytest.mark.parametrize("ch", ["😀", "中", "\x00", "\x1b", "\u200b"])
def test_characters_outside_map_to_unknown(ch: str) -> None:
    v = Vocab.from_texts(["abc"], max_size=10)
    assert v.encode("a" + ch + "b") == [v.id("a"), UNKNOWN_ID, v.id("b")]
    assert v.decode([UNKNOWN_ID]) == UNKNOWN_CHAR


def test_invalid_vocabularies() -> None:
    with pytest.raises(ValueError, match="entry 0"):
        Vocab(["a"])
    with pytest.raises(ValueError, match="repeats"):
        Vocab(["", "a", "a"])


def test_the_served_table_is_char_for_every_id() -> None:
    v = Vocab.from_texts(["def f(x):\n\treturn x  # é"], max_size=100)
    assert v.served == tuple(v.char(i) for i in range(len(v)))
    assert v.served[UNKNOWN_ID] == UNKNOWN_CHAR
