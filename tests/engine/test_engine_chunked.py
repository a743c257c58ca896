"""The budgeted scheduler on a real engine: long pieces are applied in chunks within the
iteration budget, keystrokes go first, and the state after a chunked piece equals the state
after the same piece applied whole (to float rounding); its Prediction comes after the whole."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from _engine_helpers import assert_prediction_matches, engine, offline_probs, run
from cellserve.engine import snapshot as snap
from cellserve.engine.scheduler import GATE_CHAR_COST
from cellserve.engine.types import AppendOptions, IterationStats, Phase, Prediction

KEY = "chunk-test-key"
TEXT = "".join("the quick brown fox jumps over the lazy dog; é\n"[i % 47] for i in range(300))


def _state(blob: bytes) -> np.ndarray:
    return np.concatenate([np.frombuffer(t, "<f4") for t in snap.decode(blob, KEY.encode()).tensors])


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
def test_chunked_piece_equals_whole_piece(model_dir: Path, model: str) -> None:
    opts = AppendOptions(top_k=5, want_logprobs=True, want_gates=True)

    async def apply(budget: int) -> tuple[Prediction, np.ndarray, list[IterationStats]]:
        async with engine(model_dir, max_batch_tokens=budget, snapshot_key=KEY) as eng:
            seen: list[IterationStats] = []
            eng.add_stats_listener(seen.append)
            s = (await eng.open_session(model)).session_id
            await eng.append(s, 0, "ab")
            pred = await eng.append(s, 2, TEXT, opts)
            return pred, _state(await eng.snapshot(s)), seen

    async def body() -> None:
        whole, state_whole, _ = await apply(100_000)
        chunked, state_chunked, seen = await apply(16 * GATE_CHAR_COST)  # 16 gate characters an iteration
        # really chunked: many prefill iterations, none over the budget
        prefill = [n for st in seen for p, n in st.chars if p == Phase.PREFILL]
        assert len(prefill) >= len(TEXT) // 16 and max(prefill) <= 16
        assert chunked.position == whole.position == 2 + len(TEXT)
        assert np.abs(state_chunked - state_whole).max() < 1e-5
        assert len(chunked.logprobs) == len(chunked.gates) == len(TEXT)
        assert max(abs(a - b) for a, b in zip(chunked.logprobs, whole.logprobs, strict=True)) < 1e-4
        for g1, g2 in zip(chunked.gates, whole.gates, strict=True):
            assert np.abs(np.array(g1.values) - np.array(g2.values)).max() < 1e-5
        assert [c for c, _ in chunked.top_k] == [c for c, _ in whole.top_k]

    run(body)


def test_budget_chunks_big_pieces_and_keystrokes_go_first(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir, max_batch_tokens=100, max_append_chars=400) as eng:
            lm = eng.repository.get()
            seen: list[IterationStats] = []
            eng.add_stats_listener(seen.append)
            big = [(await eng.open_session()).session_id for _ in range(3)]
            keys = [(await eng.open_session()).session_id for _ in range(4)]
            answered: list[str] = []
            futs = []
            for kind, sid, text in [*(("paste", s, "y" * 300) for s in big), *(("key", s, "k") for s in keys)]:
                fut = eng.submit_append(sid, 0, text)
                fut.add_done_callback(lambda _f, kind=kind: answered.append(kind))
                futs.append(fut)
            preds = await asyncio.gather(*futs)
            # keystrokes submitted after the pastes are answered before any of them
            assert answered[:4] == ["key"] * 4 and answered[4:] == ["paste"] * 3
            # no iteration ran more prefill characters than the budget; the pastes shared them
            prefill = [n for st in seen for p, n in st.chars if p == Phase.PREFILL]
            assert max(prefill) <= 100 and sum(prefill) == 900 and len(prefill) >= 9
            probs = offline_probs(lm, "y" * 300)
            for pred in preds[:3]:
                assert pred.position == 300
                assert_prediction_matches(lm, pred, probs[-1], 5)

    run(body)
