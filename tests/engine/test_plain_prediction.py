"""``types.plain_prediction`` builds a keystroke's Prediction without the frozen dataclass's
``__init__`` (the hot path's cheaper construction): it must be the constructor's object in
every way, including for fields added to Prediction later."""

from __future__ import annotations

import dataclasses

import pytest
from cellserve.engine.types import Prediction, plain_prediction


def test_it_is_the_constructors_prediction() -> None:
    top = (("a", 0.5), ("b", 0.25))
    fast, slow = plain_prediction(7, top), Prediction(7, top)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert vars(fast) == vars(slow)  # every field set, at the constructor's defaults
    assert {f.name for f in dataclasses.fields(Prediction)} == set(vars(fast))
    assert dataclasses.replace(fast, replayed=True) == Prediction(7, top, replayed=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.position = 8  # type: ignore[misc]
