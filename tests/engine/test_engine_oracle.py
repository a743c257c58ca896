"""The oracle: whatever the interleaving, batching and coalescing, every Prediction equals one
offline full-sequence forward of that session's whole text."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch
from _engine_helpers import assert_prediction_matches, engine, offline_probs, run
from cellserve.engine.types import AppendOptions, Prediction

ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,;:()[]{}=+-*/\n\t\"'éüß"
FOREIGN = "🙂漢字ж€\u0000"  # out of vocabulary: the unknown entry


def random_piece(rng: random.Random) -> str:
    n = rng.choice([1, 1, 1, 2, 3, rng.randint(1, 40), rng.randint(1, 300)])
    return "".join(rng.choice(FOREIGN) if rng.random() < 0.05 else rng.choice(ALPHABET) for _ in range(n))


async def oracle(model_dir: Path, model: str, seed: int, device: str = "cpu") -> None:
    rng = random.Random(seed)
    async with engine(model_dir, device=device, max_batch_tokens=700) as eng:
        rows: list[int] = []
        eng.add_stats_listener(lambda st: rows.append(st.rows))
        lm = eng.repository.get(model)
        ids = [(await eng.open_session(model)).session_id for _ in range(32)]
        texts = {sid: "" for sid in ids}
        queued = {sid: 0 for sid in ids}
        answers: list[tuple[str, int, str, AppendOptions, Prediction]] = []  # (sid, end, piece, opts, pred)

        async def send(sid: str, offset: int, piece: str, opts: AppendOptions) -> None:
            pred = await eng.append(sid, offset, piece, opts)
            answers.append((sid, offset + len(piece), piece, opts, pred))

        for _ in range(10):  # rounds: a random subset types, some pipeline several pieces at once
            tasks = []
            for sid in rng.sample(ids, rng.randint(1, 32)):
                for _ in range(rng.choice([1, 1, 2, 3])):
                    piece = random_piece(rng)
                    opts = AppendOptions(top_k=rng.choice([1, 5, 10]), want_logprobs=rng.random() < 0.3)
                    tasks.append(send(sid, queued[sid], piece, opts))
                    queued[sid] += len(piece)
                    texts[sid] += piece
            await asyncio.gather(*tasks)
        stats = await eng.stats()

    assert len(answers) > 100
    probs = {sid: offline_probs(lm, t) for sid, t in texts.items() if t}
    for sid, end, piece, opts, pred in answers:
        assert pred.position == end
        assert_prediction_matches(lm, pred, probs[sid][end - 1], opts.top_k)
        if opts.want_logprobs:
            start = end - len(piece)
            want = []
            for j, ch in enumerate(piece):
                pos = start + j
                if pos == 0:  # the first character is predicted by the zero state: head(0)
                    with torch.inference_mode():
                        ref = lm.model.head(torch.zeros(lm.model.hidden)).double().log_softmax(-1)
                    want.append(ref[lm.vocab.id(ch)].item())
                else:
                    want.append(probs[sid][pos - 1][lm.vocab.id(ch)].log().item())
            assert max(abs(a - b) for a, b in zip(pred.logprobs, want, strict=True)) < 1e-4
    # the batching really happened: far fewer iterations than appends, with multi-row batches
    assert stats.iterations < len(answers) / 2
    assert max(rows) > 8 and len(rows) == stats.iterations
    assert stats.chars_processed["prefill"] > 0 and stats.chars_processed["step"] > 0


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
def test_oracle_random_interleavings(model_dir: Path, model: str) -> None:
    run(lambda: oracle(model_dir, model, seed={"tiny-lstm": 1, "tiny-gru": 2}[model]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
def test_oracle_on_cuda(model_dir: Path, model: str) -> None:
    run(lambda: oracle(model_dir, model, seed=7, device="cuda"))
