"""Completions: forked from the session, never change it, greedy = offline greedy, cancellable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _engine_helpers import assert_prediction_matches, engine, offline_greedy, offline_probs, run
from cellserve.engine.types import AppendOptions, CompletionChunk, CompletionRequest
from cellserve.errors import CapacityExceeded, InvalidInput


def texts(chunks: list[CompletionChunk], n: int) -> list[str]:
    return ["".join(c.text for c in chunks if c.alternative == i) for i in range(n)]


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
def test_greedy_equals_offline_and_session_unchanged(model_dir: Path, model: str) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            lm = eng.repository.get(model)
            s = (await eng.open_session(model)).session_id
            other = (await eng.open_session(model)).session_id
            prompt = "def main(x):\n    return"
            await eng.append(s, 0, prompt)
            # a second session typing at the same time: completion steps share its batches
            typing = [eng.append(other, i, "ab"[i % 2]) for i in range(5)]
            stream = eng.complete(s, CompletionRequest(max_chars=12, n=2))
            chunks, _ = await asyncio.gather(_collect(stream), asyncio.gather(*typing))
            assert texts(chunks, 2) == [offline_greedy(lm, prompt, 12)] * 2
            assert [c.finish_reason for c in chunks if c.done] == ["length", "length"]
            info = await eng.get_session(s)
            assert info.position == len(prompt)
            # the session continues exactly as if no completion had run
            pred = await eng.append(s, len(prompt), " 1", AppendOptions(top_k=5))
            assert_prediction_matches(lm, pred, offline_probs(lm, prompt + " 1")[-1], 5)
            assert (await eng.stats()).running_completions == 0
            assert (await eng.stats()).chars_processed["completion"] > 0

    run(body)


async def _collect(stream: object) -> list[CompletionChunk]:
    return [c async for c in stream]  # type: ignore[attr-defined]


def test_completion_from_fresh_session_and_stop_strings(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            s = (await eng.open_session()).session_id
            chunks = await _collect(eng.complete(s, CompletionRequest(max_chars=20)))
            text = texts(chunks, 1)[0]
            assert len(text) == 20
            stop = text[5:7]  # a stop string that greedy decoding is bound to produce
            chunks = await _collect(eng.complete(s, CompletionRequest(max_chars=20, stop=(stop,))))
            got = texts(chunks, 1)[0]
            assert got.endswith(stop) and text.startswith(got) and len(got) <= 7
            assert chunks[-1].done and chunks[-1].finish_reason == "stop"

    run(body)


def test_seeded_sampling_repeats_and_alternatives_differ(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            s = (await eng.open_session()).session_id
            await eng.append(s, 0, "import os\n")
            req = CompletionRequest(max_chars=24, temperature=1.5, top_k=20, top_p=0.95, seed=123, n=3)
            a = texts(await _collect(eng.complete(s, req)), 3)
            b = texts(await _collect(eng.complete(s, req)), 3)
            assert a == b
            assert len(set(a)) > 1  # each alternative has its own stream of draws
            c = texts(await _collect(eng.complete(s, CompletionRequest(max_chars=24, temperature=1.5, seed=124))), 1)
            assert c[0] != a[0]

    run(body)


def test_append_and_aclose_cancel_and_free_slots(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir, max_completion_chars=10_000) as eng:
            s = (await eng.open_session()).session_id
            await eng.append(s, 0, "x")
            used = (await eng.stats()).slots_used
            stream = eng.complete(s, CompletionRequest(max_chars=10_000, n=2))
            first = await stream.__anext__()
            assert not first.done
            assert (await eng.stats()).running_completions == 2
            await eng.append(s, 1, "y")  # a new Append cancels the running completion
            rest = await _collect(stream)
            assert sorted(c.finish_reason for c in rest if c.done) == ["cancelled", "cancelled"]
            assert (await eng.stats()).running_completions == 0 and (await eng.stats()).slots_used == used

            stream = eng.complete(s, CompletionRequest(max_chars=10_000))
            await stream.__anext__()
            await stream.aclose()  # the consumer goes away
            assert (await eng.stats()).running_completions == 0 and (await eng.stats()).slots_used == used

            stream = eng.complete(s, CompletionRequest(max_chars=10_000))
            task = asyncio.ensure_future(_collect(stream))
            await asyncio.sleep(0.05)
            task.cancel()  # cancelling the consumer task cancels the completion
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await eng.stats()).running_completions == 0 and (await eng.stats()).slots_used == used

    run(body)


def test_completion_caps(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir, max_running_completions=3, max_completion_chars=10_000) as eng:
            s = (await eng.open_session()).session_id
            t = (await eng.open_session()).session_id
            stream = eng.complete(s, CompletionRequest(max_chars=10_000, n=2))
            with pytest.raises(CapacityExceeded) as e:  # a refusal: raised by the first chunk
                await anext(eng.complete(t, CompletionRequest(n=2)))
            assert e.value.retry_after_s > 0
            pred = await eng.append(t, 0, "ok")  # other work is unaffected
            assert pred.position == 2
            with pytest.raises(InvalidInput):
                await anext(eng.complete(t, CompletionRequest(max_chars=20_000)))
            with pytest.raises(InvalidInput):
                await anext(eng.complete(t, CompletionRequest(top_p=0.0)))
            await stream.aclose()
            assert (await anext(eng.complete(t, CompletionRequest(n=3)))).text  # capacity is back

    run(body)
