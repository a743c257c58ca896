"""The host mixing kernel (memory/_window.c: ``mix``, through ``engine.memory_mix.mix_on_host``),
what a CPU server mixes every keystroke with: it gives what ``Mixer.mix`` (the torch reference,
the GPU path) gives to float32 rounding, from the predictions themselves, a row mixes to the
same bits whatever rows share the call, rows not named stay as they were, and malformed input
is refused with an exception."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _loops import NATIVE
from cellserve.engine.memory_mix import mix_on_host
from cellserve.memory.features import _LOG_MATCH_OF, _LOG_OCC_OF, memory_arrays_many
from cellserve.memory.mixer import EPS, Mixer
from cellserve.memory.settings import MemorySettings
from cellserve.memory.window import MemoryPrediction, SessionMemory

pytestmark = pytest.mark.skipif(NATIVE is None, reason="the memory's C extension is not built")

V = 103


def _text() -> bytes:
    """Code-like text that repeats itself as source does, the same in every run: generated
    from a fixed seed rather than read from a source file, whose edits would change the data."""
    rng = np.random.default_rng(0)
    words = [b"self.", b"value", b" = ", b"return ", b"(x, y)", b"\n    ", b"if ", b"not ", b"rows", b"[i]",
             b"def ", b"torch.", b"tensor", b": ", b"None", b"len(", b")", b", ", b"for ", b" in "]  # fmt: skip
    return b"".join(words[int(i)] for i in rng.integers(0, len(words), 6000))


TEXT = _text()


def predictions(n: int, seed: int) -> list[MemoryPrediction]:
    """Predictions of real memories at many points of real text: absent orders, long and short
    next-character lists, matches and none (the first points of a text predict nothing)."""
    ids = [b % V for b in TEXT]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start, length = int(rng.integers(0, len(ids) - 600)), int(rng.integers(0, 500))
        m = SessionMemory.rebuild(ids[start : start + length], MemorySettings(window=256, max_rewind=8))
        out.append(m.predict())
    return out


def gate(seed: int, scale: float) -> Mixer:
    mixer = Mixer()
    if scale:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # far from the initial gate: the memory can take most of the weight
            for p in mixer.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return mixer


def model_logprobs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.1, 3.0, 40.0]).repeat(n)[:n, None]  # flat, typical and peaked rows
    return torch.log_softmax(torch.randn(n, V, generator=g) * scale, dim=-1)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_host_mixing_equals_the_torch_mixer(scale: float) -> None:
    preds = predictions(40, seed=1)
    assert any(p.match_char < 0 for p in preds) and any(p.match_char >= 0 for p in preds)
    mixer = gate(7, scale)
    lp = model_logprobs(40, seed=2)
    dists, host = memory_arrays_many(preds, V)
    with torch.inference_mode():
        want = mixer.mix(lp, torch.from_numpy(dists), torch.from_numpy(host))
        got = lp.clone()
        mix_on_host(mixer, got, list(range(40)), preds)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.exp().sum(-1), torch.ones(40), atol=1e-5)
    # The kernel sums in double, Mixer.mix in float32; gate weights at 3x their scale amplify
    # that rounding through the gate's MLP: up to 3e-5 measured on slices of this repository's
    # sources, about 1e-6 here. A wrong formula is off by 1e-3 or more.
    assert (got - want).abs().max().item() < 1e-4


def test_a_row_mixes_the_same_bits_whatever_rows_share_the_call() -> None:
    preds = predictions(30, seed=3)
    mixer = gate(4, 2.0)
    lp = model_logprobs(30, seed=4)
    whole = lp.clone()
    mix_on_host(mixer, whole, list(range(30)), preds)
    for b in (1, 2, 11):
        for i in range(0, 30 - b, 5):
            part = lp[i : i + b].clone()
            mix_on_host(mixer, part, list(range(b)), preds[i : i + b])
            assert torch.equal(part, whole[i : i + b])


def test_rows_not_named_are_left_as_they_were() -> None:
    preds = predictions(12, seed=5)
    mixer = gate(5, 1.0)
    lp = model_logprobs(20, seed=6)
    at = [0, 3, 4, 9, 10, 11, 12, 13, 14, 15, 18, 19]
    got = lp.clone()
    mix_on_host(mixer, got, at, preds)
    alone = lp[at].clone()
    mix_on_host(mixer, alone, list(range(12)), preds)
    others = [r for r in range(20) if r not in at]
    assert torch.equal(got[others], lp[others])
    assert torch.equal(got[at], alone)


def test_malformed_input_is_refused() -> None:
    assert NATIVE is not None
    mixer = gate(1, 1.0)
    w1, b1, w2, b2 = mixer.host_weights()
    lp = model_logprobs(2, seed=1).numpy().copy()
    good = predictions(2, seed=8)
    tables = (_LOG_OCC_OF, _LOG_MATCH_OF)
    NATIVE.mix(lp, good, w1, b1, w2, b2, V, EPS, *tables)  # as served: no error
    with pytest.raises(ValueError):  # lp has rows for 2 predictions, not 1
        NATIVE.mix(lp, good[:1], w1, b1, w2, b2, V, EPS, *tables)
    with pytest.raises(ValueError):  # a gate of another shape
        NATIVE.mix(lp, good, w2, b1, w1, b2, V, EPS, *tables)
    beyond = MemoryPrediction(tuple(bytes([V + 1]) if j == 0 else b"" for j in range(8)), -1, 0)
    with pytest.raises(ValueError):  # a character id past the vocabulary
        NATIVE.mix(lp, [beyond, beyond], w1, b1, w2, b2, V, EPS, *tables)
    with pytest.raises(ValueError):  # a match past the vocabulary
        NATIVE.mix(lp, [MemoryPrediction((b"",) * 8, V, 3)] * 2, w1, b1, w2, b2, V, EPS, *tables)
    with pytest.raises(TypeError):
        NATIVE.mix(lp, [("not", "a", "prediction")] * 2, w1, b1, w2, b2, V, EPS, *tables)
