"""The session memory on the served path: every served distribution of a model that ships a
mixer equals the offline reference (``memory/reference.py``: the model's full-sequence
log-probs mixed with a memory that read the same text), whatever the batching, chunking,
rewinds, resets, snapshots and completions; the switches turn it off."""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from _engine_helpers import char_id, engine, offline_probs, run
from cellserve.config import Settings
from cellserve.engine import core as core_module
from cellserve.engine import snapshot as snap
from cellserve.engine.completion_stream import CompletionStream
from cellserve.engine.memory_mix import memory_settings
from cellserve.engine.plan import Plan
from cellserve.engine.runner import ModelRunner
from cellserve.engine.types import AppendOptions, CompletionRequest, Prediction, SuggestRequest
from cellserve.memory.features import memory_arrays
from cellserve.memory.mixer import Mixer
from cellserve.memory.reference import ForkMixing, mixed_logprobs, model_logprobs
from cellserve.memory.window import SessionMemory
from cellserve.nn.checkpoint import LoadedModel
from cellserve.nn.decode import beam_search_batch, state_after

MODEL = "tiny-mem"
# repetitive text, so the memory's experts have something to say
WORDS = ["def ", "self", ".value", " = ", "return ", "import os\n", "(x, y)", "\n    ", "value", "if x:"]


@pytest.fixture
def mem_dir(memory_model_dir: Path) -> Path:
    """A random LSTM that ships a mixer with random gate weights (the model never dominates)."""
    return memory_model_dir


def typed(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(WORDS) for _ in range(n))


def reference(eng_settings: Settings, lm: LoadedModel, text: str) -> torch.Tensor:
    """[len(text), V] probabilities: the model mixed with a memory over ``text``, offline."""
    assert lm.folder is not None
    mixer = Mixer.load(lm.folder)
    ids = lm.vocab.encode(text)
    lp = model_logprobs(lm, torch.tensor(ids, device=lm.model.head.weight.device))
    return mixed_logprobs(lp, ids, mixer.to(lp.device), memory_settings(eng_settings)).double().exp().cpu()


def assert_top_k(lm: LoadedModel, pred: Prediction, probs_at: torch.Tensor, k: int, tol: float = 1e-5) -> None:
    want = probs_at.topk(k).values.tolist()
    got = [p for _, p in pred.top_k]
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < tol, (got, want)
    for ch, p in pred.top_k:
        assert abs(probs_at[char_id(lm, ch)].item() - p) < tol


def assert_logprobs(lm: LoadedModel, pred: Prediction, probs: torch.Tensor, start: int, piece: str) -> None:
    for j, ch in enumerate(piece):
        pos = start + j
        if pos == 0:
            continue  # the first character: no distribution before it offline
        want = probs[pos - 1][char_id(lm, ch)].log().item()
        assert abs(pred.logprobs[j] - want) < 1e-4, (pos, pred.logprobs[j], want)


CUDA = pytest.param(
    700, "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
)


@pytest.mark.parametrize(("batch_tokens", "device"), [(700, "cpu"), (40, "cpu"), CUDA])  # 40: in chunks
def test_appends_serve_the_mixed_distribution(mem_dir: Path, batch_tokens: int, device: str) -> None:
    """On CUDA the mixing runs on the device (only the memory's arrays travel to it)."""
    rng = random.Random(batch_tokens)

    async def body() -> None:
        async with engine(mem_dir, max_batch_tokens=batch_tokens, memory_window=256, device=device) as eng:
            lm = eng.repository.get(MODEL)
            ids = [(await eng.open_session(MODEL)).session_id for _ in range(6)]
            texts = {sid: "" for sid in ids}
            answers: list[tuple[str, int, str, AppendOptions, Prediction]] = []

            async def send(sid: str, offset: int, piece: str, opts: AppendOptions) -> None:
                answers.append((sid, offset + len(piece), piece, opts, await eng.append(sid, offset, piece, opts)))

            for _ in range(8):
                tasks = []
                for sid in rng.sample(ids, rng.randint(1, len(ids))):
                    for _ in range(rng.choice([1, 1, 2])):
                        piece = rng.choice([rng.choice("abc( )=.\n"), typed(rng, rng.randint(1, 12))])
                        opts = AppendOptions(top_k=rng.choice([1, 5]), want_logprobs=rng.random() < 0.5)
                        tasks.append(send(sid, len(texts[sid]), piece, opts))
                        texts[sid] += piece
                await asyncio.gather(*tasks)
            stats = await eng.stats()
            settings = eng.settings

        assert stats.memory_bytes > 0 and stats.state_bytes > stats.memory_bytes
        probs = {sid: reference(settings, lm, t) for sid, t in texts.items() if t}
        model_only = {sid: offline_probs(lm, t) for sid, t in texts.items() if t}
        moved = 0.0
        for sid, end, piece, opts, pred in answers:
            assert_top_k(lm, pred, probs[sid][end - 1], opts.top_k)
            if opts.want_logprobs:
                assert_logprobs(lm, pred, probs[sid], end - len(piece), piece)
            moved = max(moved, (probs[sid][end - 1] - model_only[sid][end - 1]).abs().max().item())
        assert moved > 0.05  # the memory is really mixed in (these texts repeat themselves)

    run(body)


def test_rewind_and_reset_leave_the_memory_of_the_text_typed(mem_dir: Path) -> None:
    async def body() -> None:
        async with engine(mem_dir, memory_window=128, rewind_window=64, checkpoint_every=16) as eng:
            lm = eng.repository.get(MODEL)
            sid = (await eng.open_session(MODEL)).session_id
            text = ""
            rng = random.Random(1)
            for _ in range(40):  # keystrokes and rewinds, past the memory window
                if text and rng.random() < 0.3:
                    n = rng.randint(1, min(len(text), 40))
                    await eng.rewind(sid, n)
                    text = text[:-n]
                else:
                    piece = typed(rng, rng.randint(1, 3))
                    pred = await eng.append(sid, len(text), piece, AppendOptions(top_k=5, want_logprobs=True))
                    text += piece
                    probs = reference(eng.settings, lm, text)
                    assert_top_k(lm, pred, probs[-1], 5)
                    assert_logprobs(lm, pred, probs, len(text) - len(piece), piece)
            await eng.reset(sid)
            pred = await eng.append(sid, 0, "self.value = value", AppendOptions(top_k=5))
            assert_top_k(lm, pred, reference(eng.settings, lm, "self.value = value")[-1], 5)

    run(body)


def test_switches_turn_the_memory_off(mem_dir: Path) -> None:
    text = "def f(self):\n    return self.value\ndef g(self):\n    return self.va"

    async def body() -> None:
        async with engine(mem_dir) as eng:
            lm = eng.repository.get(MODEL)
            on = (await eng.open_session(MODEL)).session_id
            off = (await eng.open_session(MODEL, memory=False)).session_id
            p_on = await eng.append(on, 0, text, AppendOptions(top_k=5))
            p_off = await eng.append(off, 0, text, AppendOptions(top_k=5))
            p_req = await eng.append(on, len(text), "l", AppendOptions(top_k=5, memory=False))
            assert (await eng.stats()).memory_bytes > 0
            mixed = reference(eng.settings, lm, text + "l")
            plain = offline_probs(lm, text + "l")
        assert_top_k(lm, p_on, mixed[len(text) - 1], 5)
        assert_top_k(lm, p_off, plain[len(text) - 1], 5)
        assert_top_k(lm, p_req, plain[-1], 5)  # per request: the model alone...
        assert (mixed[len(text) - 1] - plain[len(text) - 1]).abs().max() > 0.05

    run(body)

    async def no_memory_server() -> None:  # the server's switch
        async with engine(mem_dir, memory=False) as eng:
            lm = eng.repository.get(MODEL)
            sid = (await eng.open_session(MODEL)).session_id
            pred = await eng.append(sid, 0, text, AppendOptions(top_k=5))
            assert (await eng.stats()).memory_bytes == 0
        assert_top_k(lm, pred, offline_probs(lm, text)[-1], 5)

    run(no_memory_server)


def offline_greedy_mixed(settings: Settings, lm: LoadedModel, text: str, n: int) -> str:
    assert lm.folder is not None
    mixer = Mixer.load(lm.folder)
    ids = lm.vocab.encode(text)
    out = []
    for _ in range(n):
        lp = model_logprobs(lm, torch.tensor(ids))[-1:]
        dists, host = memory_arrays(SessionMemory.rebuild(ids, memory_settings(settings)).predict(), lp.shape[1])
        mixed = mixer.mix(lp, torch.from_numpy(dists)[None], torch.from_numpy(host)[None])
        nxt = int(mixed[0].argmax())
        ids.append(nxt)
        out.append(lm.vocab.char(nxt))
    return "".join(out)


async def texts_of(stream: CompletionStream, n: int) -> list[str]:
    out = [""] * n
    async for chunk in stream:
        out[chunk.alternative] += chunk.text
    return out


def test_completions_mix_their_own_fork(mem_dir: Path) -> None:
    text = "x.value = 1\ny.value = 2\nz.val"

    async def body() -> None:
        async with engine(mem_dir) as eng:
            lm = eng.repository.get(MODEL)
            sid = (await eng.open_session(MODEL)).session_id
            await eng.append(sid, 0, text, AppendOptions(top_k=0))
            got = await texts_of(eng.complete(sid, CompletionRequest(max_chars=12)), 1)
            plain = await texts_of(eng.complete(sid, CompletionRequest(max_chars=12, memory=False)), 1)
            # sampled alternatives run too (several forks at once); the session never moved
            await texts_of(eng.complete(sid, CompletionRequest(max_chars=8, temperature=1.0, seed=3, n=3)), 3)
            after = await eng.append(sid, len(text), "u", AppendOptions(top_k=5))
            settings = eng.settings
        assert got == [offline_greedy_mixed(settings, lm, text, 12)]
        assert got != plain
        assert_top_k(lm, after, reference(settings, lm, text + "u")[-1], 5)

    run(body)


def test_mixed_completions_decode_several_steps_per_iteration(mem_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixed completions running alone take several steps per iteration (multi-step decoding
    mixes each step on the host) and draw exactly what one step per iteration draws: greedy,
    seeded samples, and a memory-off completion in the same iterations. Where the mix does not
    run on the host (the memory's Python fallback, ``CELLSERVE_NATIVE_MEMORY=0``) every
    iteration holding a mixed completion takes one step, with the same draws."""
    text = "x.value = 1\ny.value = 2\nz.value = 3\nw.val"
    bursts: list[tuple[int, int, int]] = []  # per multi-step iteration: steps, rows, mixed rows
    on_host: set[bool] = set()  # the runner's decodes_mixed
    decode = ModelRunner._decode

    def spy(self: ModelRunner, plan: Plan) -> Any:
        bursts.append((1 + len(plan.rows[0].more), len(plan.rows), sum(r.memory is not None for r in plan.rows)))
        return decode(self, plan)

    monkeypatch.setattr(ModelRunner, "_decode", spy)

    async def completions() -> tuple[list[list[str]], Settings, LoadedModel]:
        async with engine(mem_dir) as eng:
            lm = eng.repository.get(MODEL)
            on_host.add(eng.core._runtimes[MODEL].runner.decodes_mixed)  # noqa: SLF001
            sid = (await eng.open_session(MODEL)).session_id
            await eng.append(sid, 0, text, AppendOptions(top_k=0))
            got = await asyncio.gather(
                texts_of(eng.complete(sid, CompletionRequest(max_chars=20)), 1),
                texts_of(eng.complete(sid, CompletionRequest(max_chars=16, temperature=1.0, seed=5, n=3)), 3),
                texts_of(eng.complete(sid, CompletionRequest(max_chars=16, temperature=0.8, seed=9, memory=False)), 1),
            )
            return list(got), eng.settings, lm

    several, settings, lm = asyncio.run(completions())
    assert len(on_host) == 1, on_host
    if on_host == {True}:
        assert any(k > 1 and 0 < m < n for k, n, m in bursts), bursts  # mixed and plain rows, several steps
    else:
        assert not bursts, bursts
    bursts.clear()
    monkeypatch.setattr(core_module, "_decode_steps", lambda rt: 1)
    single, _, _ = asyncio.run(completions())
    assert not bursts
    assert several == single
    assert [len(t) for group in several for t in group] == [20, 16, 16, 16, 16]
    assert several[0] == [offline_greedy_mixed(settings, lm, text, 20)]


def test_snapshot_carries_the_memory(mem_dir: Path) -> None:
    text = "for item in items:\n    total += item.value\nfor item in items:\n    tot"

    async def body() -> None:
        async with engine(mem_dir, snapshot_key="k" * 32) as eng:
            lm = eng.repository.get(MODEL)
            sid = (await eng.open_session(MODEL)).session_id
            await eng.append(sid, 0, text, AppendOptions(top_k=0))
            blob = await eng.snapshot(sid)
            info, pred = await eng.resume(blob, "al", AppendOptions(top_k=5))
            assert info.position == len(text) + 2 and pred is not None
            data = snap.decode(blob, b"k" * 32)
            assert data.memory == bytes(lm.vocab.encode(text))
            # a version-2 blob (before memories) resumes with an empty memory
            v2 = _as_version_2(data, b"k" * 32)
            _, pred2 = await eng.resume(v2, "al", AppendOptions(top_k=5))
            settings = eng.settings
        assert_top_k(lm, pred, reference(settings, lm, text + "al")[-1], 5)
        assert pred2 is not None
        assert pred2.top_k != pred.top_k

    run(body)


def _as_version_2(data: snap.SnapshotData, key: bytes) -> bytes:
    """The blob a server before session memories sealed for the same state."""
    import json
    import os
    import struct

    header = snap.header_of(data)
    del header["memory"]  # version 2 had no memory
    hb = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    plain = struct.pack(">I", len(hb)) + hb + b"".join(data.tensors)
    aad = snap.MAGIC + struct.pack(">H", 2)
    nonce = os.urandom(12)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return aad + nonce + AESGCM(snap.derive_key(key, 2)).encrypt(nonce, plain, aad)


@pytest.mark.parametrize("scope", ["word", "line"])
def test_suggestions_search_the_mixed_distribution(mem_dir: Path, scope: str) -> None:
    text = "self.value = value\nself.values = values\nself.va"
    req = SuggestRequest(n=3, scope=scope, max_chars=10)

    async def body() -> None:
        async with engine(mem_dir) as eng:
            lm = eng.repository.get(MODEL)
            sid = (await eng.open_session(MODEL)).session_id
            await eng.append(sid, 0, text, AppendOptions(top_k=0))
            got = await eng.submit_suggest(sid, req)
            settings = eng.settings
        assert lm.folder is not None
        mixer = Mixer.load(lm.folder)
        memory = SessionMemory.rebuild(lm.vocab.encode(text), memory_settings(settings))
        mix = ForkMixing(mixer, [memory.fork()], len(lm.vocab))
        state = state_after(lm.model, lm.vocab, text)
        want = beam_search_batch(lm.model, lm.vocab, state, n=3, until=scope, max_chars=10, mix=mix)[0]
        assert [s.text for s in got] == [s.text for s in want]
        for g, w in zip(got, want, strict=True):
            assert math.isclose(g.logprob, w.logprob, rel_tol=1e-4, abs_tol=1e-4)
        plain = beam_search_batch(lm.model, lm.vocab, state, n=3, until=scope, max_chars=10)[0]
        assert [(s.text, round(s.logprob, 3)) for s in plain] != [(s.text, round(s.logprob, 3)) for s in got]

    run(body)
