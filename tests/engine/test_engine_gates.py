"""want_gates: the slow path on the reference cells gives the same predictions plus gate traces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _engine_helpers import assert_prediction_matches, engine, offline_probs, run
from cellserve.engine.types import AppendOptions
from cellserve.nn.cells import run_with_gates


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
def test_gates_match_reference_cells(model_dir: Path, model: str) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            lm = eng.repository.get(model)
            s = (await eng.open_session(model)).session_id
            await eng.append(s, 0, "ab")
            pred = await eng.append(s, 2, "cde", AppendOptions(want_gates=True, want_logprobs=True))
            assert len(pred.gates) == 3
            assert_prediction_matches(lm, pred, offline_probs(lm, "abcde")[-1], 5)
            with torch.inference_mode():
                _, _, trace = run_with_gates(lm.model, lm.vocab.encode_tensor("abcde")[None])
            for j, g in enumerate(pred.gates):
                step = trace[2 + j]
                assert g.names == step.names
                for gi, name in enumerate(g.names):
                    want = step.gates[name][:, 0].mean(dim=-1).tolist()  # per layer
                    assert max(abs(a - b) for a, b in zip(g.values[gi], want, strict=True)) < 1e-5
            after = await eng.append(s, 5, "f")  # the state written by the slow path is right
            assert_prediction_matches(lm, after, offline_probs(lm, "abcdef")[-1], 5)

    run(body)
