"""``convert.fill_prediction`` (the per-keystroke path, built in place) against the plain way of
building the same message: keyword constructors, as the proto reads."""

from __future__ import annotations

import pytest
from cellserve.api import convert
from cellserve.api.pb import svc, types
from cellserve.engine.types import GateTrace, Prediction

CASES = [
    Prediction(17, (("a", 0.5), ("b", 0.25), ("\ufffd", 0.125), ("é", 0.0625), ("\n", 0.0625))),
    Prediction(0, ()),  # position 0 and nothing else: the field must still be present
    Prediction(3, (), superseded=True),
    Prediction(9, (("x", 1.0),), replayed=True),
    Prediction(2, (("a", 0.75),), logprobs=(-0.5, -1.25)),
    Prediction(1, (), gates=(GateTrace(("r", "z", "n"), ((0.1, 0.2), (0.3, 0.4), (0.5, 0.6))),)),
]


def plain(p: Prediction) -> types.Prediction:
    return types.Prediction(
        position=p.position,
        replayed=p.replayed,
        superseded=p.superseded,
        logprobs=list(p.logprobs),
        gates=[
            types.GateTrace(gates=[types.Gate(name=n, layers=list(v)) for n, v in zip(g.names, g.values, strict=True)])
            for g in p.gates
        ],
        top_characters=(
            types.TopCharacters(entries=[types.CharProbability(character=c, probability=q) for c, q in p.top_k])
            if p.top_k
            else None
        ),
    )


@pytest.mark.parametrize("p", CASES)
def test_fill_prediction_equals_the_plain_message(p: Prediction) -> None:
    expected = svc.SessionResponse(request_id=7, prediction=plain(p))
    built = svc.SessionResponse(request_id=7)
    convert.fill_prediction(built.prediction, p)
    assert built.WhichOneof("result") == "prediction"
    assert built == expected
    assert built.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    assert convert.prediction(p) == plain(p)
