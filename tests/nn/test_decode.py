"""The offline reference decoders: greedy and sampled equal the server's completions; beam search
equals a brute-force enumeration of every completion on a tiny model."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch
from cellserve.engine.types import CompletionRequest
from cellserve.nn.checkpoint import load_model
from cellserve.nn.decode import (
    MIN_TEMPERATURE,
    Suggestion,
    beam_search,
    beam_search_batch,
    complete,
    greedy,
    is_word_char,
    state_after,
)
from cellserve.nn.kernels import onednn
from cellserve.nn.random_model import save_random_model
from cellserve.nn.vocab import Vocab

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from _engine_helpers import engine, offline_greedy, run  # noqa: E402

PROMPT = "def main(x):\n    return"


async def _server_texts(eng: object, model: str, context: str, req: CompletionRequest) -> list[str]:
    s = (await eng.open_session(model)).session_id  # type: ignore[attr-defined]
    if context:
        await eng.append(s, 0, context)  # type: ignore[attr-defined]
    out = [""] * req.n
    async for c in eng.complete(s, req):  # type: ignore[attr-defined]
        out[c.alternative] += c.text
    return out


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
def test_greedy_and_sampled_equal_the_server(model_dir: Path, model: str) -> None:
    requests = [
        CompletionRequest(max_chars=16),
        CompletionRequest(max_chars=16, temperature=MIN_TEMPERATURE / 2, seed=3),  # below the floor: greedy
        CompletionRequest(max_chars=24, temperature=1.0, seed=7, n=3),
        CompletionRequest(max_chars=24, temperature=0.7, top_k=5, seed=11, n=2),
        CompletionRequest(max_chars=24, temperature=1.3, top_p=0.6, seed=12, n=2),
        CompletionRequest(max_chars=24, temperature=1.0, top_k=8, top_p=0.9, seed=13, stop=("e",)),
    ]

    async def body() -> None:
        async with engine(model_dir) as eng:
            lm = eng.repository.get(model)
            for context in (PROMPT, ""):
                for r in requests:
                    got = await _server_texts(eng, model, context, r)
                    assert r.seed is not None or r.temperature == 0
                    want = complete(
                        lm.model,
                        lm.vocab,
                        context,
                        max_chars=r.max_chars,
                        stop=r.stop,
                        temperature=r.temperature,
                        top_k=r.top_k,
                        top_p=r.top_p,
                        seed=r.seed or 0,
                        n=r.n,
                    )
                    assert got == want, (context, r)

    run(body)
    lm = load_model(model_dir / model)
    assert greedy(lm.model, lm.vocab, PROMPT, 12) == offline_greedy(lm, PROMPT, 12)


def test_sampling_differs_by_seed_and_alternative(model_dir: Path) -> None:
    """Guards the test above against a sampler that is secretly greedy."""
    lm = load_model(model_dir / "tiny-lstm")
    a = complete(lm.model, lm.vocab, PROMPT, max_chars=24, temperature=1.0, seed=1, n=3)
    b = complete(lm.model, lm.vocab, PROMPT, max_chars=24, temperature=1.0, seed=2, n=3)
    assert len(set(a)) > 1 and a != b
    assert complete(lm.model, lm.vocab, PROMPT, max_chars=24, temperature=1.0, seed=1, n=3) == a


# -- beam search against brute force ------------------------------------------------------------

TINY_VOCAB = ["", "\n", " ", "(", "_", "a", "b"]  # word chars: _ a b; ends: ( space newline unknown


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Vocab]:
    d = tmp_path_factory.mktemp("tiny")
    save_random_model(d, "t", "lstm", TINY_VOCAB, layers=2, hidden=8, embedding=4, seed=5, weight_scale=2.5)
    lm = load_model(d / "t")
    return lm.model, lm.vocab


def brute_force(model: torch.nn.Module, vocab: Vocab, context: str, until: str, max_chars: int) -> list[Suggestion]:
    """Every completion of 1..max_chars characters, scored by full forwards from the zero state."""

    def cont(ch: str) -> bool:
        return is_word_char(ch) if until == "word" else ch != "\n"

    chars = [c for c in vocab.chars[1:] if cont(c)]
    out = []
    for k in range(1, max_chars + 1):
        for combo in itertools.product(chars, repeat=k):
            text = "".join(combo)
            ids = vocab.encode_tensor(context + text)
            with torch.no_grad(), onednn(False):  # many tiny calls: the native kernel is faster
                logits, _ = model(ids[None])
                lp = torch.log_softmax(logits[0], -1)
            n0 = len(context)  # > 0: the prediction after the context is at n0 - 1
            total = sum(float(lp[n0 + j - 1, ids[n0 + j]]) for j in range(k))
            if k < max_chars:
                end_ids = [i for i, c in enumerate(vocab.chars) if not (i > 0 and cont(c))]
                if until == "line":
                    end_ids = [vocab.id("\n")]
                total += float(torch.logsumexp(lp[n0 + k - 1, end_ids], 0))
            out.append(Suggestion(text, total))
    return sorted(out, key=lambda s: -s.logprob)


@pytest.mark.parametrize(
    ("context", "until", "max_chars"), [("x a", "word", 4), ("ab(", "word", 3), ("a\n", "line", 3)]
)
def test_beam_equals_brute_force(tiny: tuple[torch.nn.Module, Vocab], context: str, until: str, max_chars: int) -> None:
    model, vocab = tiny
    every = brute_force(model, vocab, context, until, max_chars)
    want = every[:5]
    # wide enough to hold every prefix: beam search is then exact
    got = beam_search(model, vocab, context, n=5, width=6**max_chars, until=until, max_chars=max_chars)  # type: ignore[arg-type]
    assert [s.text for s in got] == [s.text for s in want]
    for g, w in zip(got, want, strict=True):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
    # a narrow beam may miss some, but what it returns is ranked and scored exactly
    narrow = beam_search(model, vocab, context, n=3, width=3, until=until, max_chars=max_chars)  # type: ignore[arg-type]
    exact = {s.text: s.logprob for s in every}
    assert [s.logprob for s in narrow] == sorted((s.logprob for s in narrow), reverse=True)
    for s in narrow:
        assert s.logprob == pytest.approx(exact[s.text], abs=1e-4)


def test_beam_batch_equals_one_query_at_a_time(tiny: tuple[torch.nn.Module, Vocab]) -> None:
    model, vocab = tiny
    contexts = ["a", "x ab", "b_", "(a", "a b a"]
    states = [state_after(model, vocab, c) for c in contexts]  # type: ignore[arg-type]
    batched = tuple(torch.cat([s[i] for s in states], dim=1) for i in range(2))
    together = beam_search_batch(model, vocab, batched, n=3, width=4, max_chars=5)  # type: ignore[arg-type]
    for c, got in zip(contexts, together, strict=True):
        alone = beam_search(model, vocab, c, n=3, width=4, max_chars=5)  # type: ignore[arg-type]
        assert [s.text for s in got] == [s.text for s in alone]
        assert [s.logprob for s in got] == pytest.approx([s.logprob for s in alone], abs=1e-5)


def test_beam_never_suggests_empty_or_unknown(model_dir: Path) -> None:
    lm = load_model(model_dir / "tiny-gru")
    for until in ("word", "line"):
        got = beam_search(lm.model, lm.vocab, "import o", n=4, until=until, max_chars=12)  # type: ignore[arg-type]
        assert len(got) == 4
        for s in got:
            assert s.text and "\ufffd" not in s.text and "\n" not in s.text
            if until == "word":
                assert all(is_word_char(ch) for ch in s.text)
