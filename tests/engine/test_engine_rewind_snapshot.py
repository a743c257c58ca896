"""Rewind equals recompute; snapshot -> resume on another engine is bit-exact; bad blobs refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from _engine_helpers import assert_prediction_matches, engine, offline_probs, run
from cellserve.engine import snapshot as snap
from cellserve.engine.types import AppendOptions
from cellserve.errors import InvalidInput, PreconditionFailed
from conftest import write_random_model


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
def test_rewind_equals_recompute(model_dir: Path, model: str) -> None:
    async def body() -> None:
        async with engine(model_dir, checkpoint_every=8, rewind_window=40) as eng:
            lm = eng.repository.get(model)
            s = (await eng.open_session(model)).session_id
            rng = random.Random(3)
            text = ""
            rewound = False
            for _ in range(60):  # keystrokes and small pastes, so checkpoints land at piece ends
                piece = "".join(rng.choice("abcdef é漢\n") for _ in range(rng.choice([1, 1, 2, 5, 13])))
                await eng.append(s, len(text), piece)
                text += piece
                if rng.random() < 0.3:
                    reach = (await eng.get_session(s)).rewindable
                    assert reach == min(40, len(text)) or rewound  # full window until the first rewind
                    if reach < len(text):
                        with pytest.raises(PreconditionFailed):
                            await eng.rewind(s, reach + 1)
                    if reach == 0:
                        continue
                    n = rng.randint(1, reach)
                    rewound = True
                    info = await eng.rewind(s, n)
                    text = text[:-n]
                    assert info.position == len(text)
                    snap_blob = await eng.snapshot(s)  # the state must be exactly the recomputed one
                    probe = await eng.append(s, len(text), "x", AppendOptions(top_k=8))
                    assert_prediction_matches(lm, probe, offline_probs(lm, text + "x")[-1], 8, tol=1e-6)
                    text += "x"
                    assert snap_blob
            hist = eng.core.sessions[s].history  # bounded: window / every + 2 checkpoints
            assert len(hist.checkpoints) <= 40 // 8 + 2
            assert len(hist.text) <= 40 + 8 + 13
            assert rewound
            with pytest.raises(PreconditionFailed):
                await eng.rewind(s, 41)
            with pytest.raises(InvalidInput):
                await eng.rewind(s, 0)
            pos = (await eng.get_session(s)).position
            with pytest.raises(InvalidInput):
                await eng.rewind(s, pos + 1)
            assert (await eng.get_session(s)).position == pos

    run(body)


def test_rewind_then_reset(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            lm = eng.repository.get()
            s = (await eng.open_session()).session_id
            await eng.append(s, 0, "hello there")
            assert (await eng.reset(s)).position == 0
            with pytest.raises(InvalidInput):
                await eng.rewind(s, 1)  # nothing to rewind after a reset
            pred = await eng.append(s, 0, "abc")
            assert_prediction_matches(lm, pred, offline_probs(lm, "abc")[-1], 5)

    run(body)


def test_snapshot_resume_bit_exact_on_second_engine(model_dir: Path) -> None:
    async def body() -> None:
        key = "k" * 32
        async with engine(model_dir, snapshot_key=key) as a:
            s = (await a.open_session()).session_id
            await a.append(s, 0, "some text é🙂 and more\n" * 5)
            blob = await a.snapshot(s)
            pos = (await a.get_session(s)).position
            pa = await a.append(s, pos, "tail", AppendOptions(top_k=10, want_logprobs=True))
            blob_after = await a.snapshot(s)
        async with engine(model_dir, snapshot_key=key) as b:
            info, pb = await b.resume(blob, "tail", AppendOptions(top_k=10, want_logprobs=True))
            assert info.session_id != s and info.position == pos + 4
            assert pb is not None and pb.top_k == pa.top_k and pb.logprobs == pa.logprobs  # bit-exact
            blob_b = await b.snapshot(info.session_id)
            # same state bytes (the header's created_at and so the signature differ)
            assert snap.decode(blob_b, key.encode()).tensors == snap.decode(blob_after, key.encode()).tensors
            info2, none = await b.resume(blob)
            assert none is None and info2.position == pos
            with pytest.raises(PreconditionFailed):  # cannot rewind past the resume point
                await b.rewind(info2.session_id, 1)

            tampered = bytearray(blob)
            tampered[len(tampered) // 2] ^= 1
            with pytest.raises(InvalidInput):
                await b.resume(bytes(tampered))
            with pytest.raises(InvalidInput):
                await b.resume(blob[:-1])
            with pytest.raises(InvalidInput):
                await b.resume(b"garbage")
        async with engine(model_dir, snapshot_key="another key") as c:
            with pytest.raises(InvalidInput):  # signed with another key
                await c.resume(blob)

    run(body)


def test_snapshot_of_other_weights_refused(model_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "models"
    write_random_model(other, "tiny-lstm", "lstm", seed=99)  # same name, other weights

    async def body() -> None:
        async with engine(model_dir, snapshot_key="k") as a:
            s = (await a.open_session()).session_id
            await a.append(s, 0, "abc")
            blob = await a.snapshot(s)
        async with engine(other, snapshot_key="k") as b:
            with pytest.raises(PreconditionFailed):
                await b.resume(blob)
            assert (await b.stats()).active_sessions == 0

    run(body)
