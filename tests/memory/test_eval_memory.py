"""`cellserve eval` with the session memory equals typing the text position by position with
the offline reference: bits/char from ``mixed_logprobs``; greedy offers and top-3 beams from a
fresh model state and a memory rebuilt from each prefix, mixed at every generated character."""

from __future__ import annotations

import math

import pytest
import torch
from _loops import memory_loops  # noqa: F401  (autouse: every test on both implementations)
from cellserve.config import default_model_dir
from cellserve.evaluation import MAX_WORD, evaluate_model, offer_positions, simulate, simulate_top
from cellserve.memory.mixer import Mixer
from cellserve.memory.reference import ForkMixing, mixed_logprobs, model_logprobs
from cellserve.memory.settings import MemorySettings
from cellserve.memory.window import SessionMemory
from cellserve.nn.checkpoint import LoadedModel, load_model
from cellserve.nn.decode import beam_search_batch, is_word_char, next_logits, state_after

TEXT = (
    "import os\nimport sys\n\n\ndef make_fields(names):\n    return [make_field(n) for n in names]\n\n\n"
    "def make_field(name):\n    return os.path.join(name, sys.argv[0])\n\n\ndef main():\n"
    "    fields = make_fields(sys.argv)\n    return make_fields(fields)\n"
)


@pytest.fixture(scope="module")
def gru() -> tuple[LoadedModel, Mixer]:
    torch.set_num_threads(1)
    folder = default_model_dir() / "python-gru"
    return load_model(folder), Mixer.load(folder)


def greedy_word(lm: LoadedModel, mixer: Mixer, prefix: str) -> str:
    """The served greedy completion of the current word: model step + memory fork, mixed."""
    v = len(lm.vocab)
    state = state_after(lm.model, lm.vocab, prefix)
    fork = SessionMemory.rebuild(lm.vocab.encode(prefix)).fork()
    out = ""
    for _ in range(MAX_WORD):
        lp = torch.log_softmax(next_logits(lm.model, state).float(), -1)
        mixing = ForkMixing(mixer, [fork], v)
        c = int(mixing(lp, None, None).argmax())
        ch = lm.vocab.char(c)
        if c == 0 or not is_word_char(ch):
            break
        out += ch
        fork.push((c,))
        with torch.no_grad():
            _, state = lm.model(torch.tensor([[c]]), state)
    return out


def test_eval_with_memory_equals_the_reference(gru: tuple[LoadedModel, Mixer]) -> None:
    lm, mixer = gru
    got = evaluate_model(lm, TEXT, top_n=3, width=4, piece=48, mixer=mixer, memory=MemorySettings())
    ids = lm.vocab.encode(TEXT)
    ref = mixed_logprobs(model_logprobs(lm, torch.tensor(ids)), ids, mixer)
    want_bits = -sum(float(ref[t, ids[t + 1]]) for t in range(len(ids) - 1)) / math.log(2)
    assert got.bits == pytest.approx(want_bits, rel=1e-4)
    plain = evaluate_model(lm, TEXT, top_n=3, width=4, piece=48)
    assert got.bits < plain.bits  # the repeated names make the memory count

    offers = {p: greedy_word(lm, mixer, TEXT[:p]) for p in offer_positions(TEXT)}
    assert got.greedy == simulate(TEXT, offers)

    def beams(p: int) -> list[str]:
        mixing = ForkMixing(mixer, [SessionMemory.rebuild(lm.vocab.encode(TEXT[:p])).fork()], len(lm.vocab))
        state = state_after(lm.model, lm.vocab, TEXT[:p])
        (found,) = beam_search_batch(lm.model, lm.vocab, state, n=3, width=4, max_chars=MAX_WORD, mix=mixing)
        return [s.text for s in found]

    saved = simulate_top(TEXT, offers, beams)
    assert got.top == saved
    assert got.greedy > plain.greedy and got.top >= plain.top
