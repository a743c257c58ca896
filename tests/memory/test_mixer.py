"""The mixer always gives a proper distribution, its two paths agree, the offline reference
equals the per-keystroke path, a beam's fork mixing equals the reference, and the shipped
mixers improve held-out bits/char over their models alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _loops import memory_loops  # noqa: F401  (autouse: every test on both implementations)
from cellserve.config import default_model_dir
from cellserve.evaluation import read_texts
from cellserve.memory.features import EXPERTS, HOST_FEATURES, memory_arrays
from cellserve.memory.mixer import MIXER_FILE, Mixer
from cellserve.memory.reference import ForkMixing, mixed_logprobs, model_logprobs
from cellserve.memory.settings import MemorySettings
from cellserve.memory.training import heldout_bits
from cellserve.memory.window import SessionMemory
from cellserve.nn.checkpoint import load_model
from cellserve.nn.corpus import _package_root
from cellserve.nn.decode import beam_search_batch, state_after

V = 103


def random_inputs(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, V, generator=g) * torch.tensor([0.1, 5.0, 60.0]).repeat(b)[:b, None].clone()
    lp = torch.log_softmax(logits, -1)
    counts = (torch.rand(b, EXPERTS, V, generator=g) > 0.95).float()
    present = (torch.rand(b, EXPERTS, generator=g) > 0.3).float()
    counts = counts * present[:, :, None]
    dists = counts / counts.sum(-1, keepdim=True).clamp(min=1)
    present = (dists.sum(-1) > 0).float()
    host = torch.rand(b, HOST_FEATURES, generator=g)
    host[:, [3 * j for j in range(EXPERTS - 1)] + [HOST_FEATURES - 3]] = present
    return lp, dists, host


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_is_a_proper_distribution_on_both_paths(seed: int) -> None:
    torch.manual_seed(seed)
    mixer = Mixer()
    with torch.no_grad():  # a gate far from its initial state: the memory can take most weight
        for p in mixer.parameters():
            p.normal_(0, 2.0)
    lp, dists, host = random_inputs(12, seed)
    out = mixer.mix(lp, dists, host)
    assert out.shape == (12, V) and torch.isfinite(out).all()
    assert (out.exp() > 0).all()
    assert torch.allclose(out.exp().sum(-1), torch.ones(12), atol=1e-5)
    for r in range(12):
        row = mixer.mix_row(lp[r].numpy(), dists[r].numpy(), host[r].numpy())
        np.testing.assert_allclose(row, out[r].numpy(), atol=2e-5)


SHIPPED = ["python-gru", "python-lstm"]  # both ship a mixer (cellserve train-mixer)


@pytest.fixture(scope="module")
def heldout_sample() -> str:
    root = _package_root("_pytest")
    if root is None:
        pytest.skip("pytest's sources are not installed")
    return read_texts([root], 4000)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_mixer_beats_the_model_alone_held_out(name: str, heldout_sample: str) -> None:
    torch.set_num_threads(1)
    folder = default_model_dir() / name
    loaded = load_model(folder)
    off, on = heldout_bits(loaded, Mixer.load(folder), heldout_sample, MemorySettings())
    assert on < off - 0.1, (off, on)


@pytest.mark.parametrize("threads", [1, 3])
def test_a_row_mixes_the_same_bits_whatever_its_batch(threads: int) -> None:
    """Speculative keystrokes answer from a batch of guesses: each row's mix must not depend
    on the rows beside it (nn.Linear's GEMM took another kernel for a single row)."""
    mixer = Mixer()
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn_like(p))
    lp, dists, host = random_inputs(64, seed=5)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole = mixer.mix(lp, dists, host)
        for b in (1, 2, 15):
            for i in range(0, 64 - b, 7):
                assert torch.equal(mixer.mix(lp[i : i + b], dists[i : i + b], host[i : i + b]), whole[i : i + b])
    finally:
        torch.set_num_threads(before)


def test_reference_equals_per_keystroke_path_and_beam_mixing(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    folder = default_model_dir() / "python-gru"
    loaded = load_model(folder)
    mixer = Mixer.load(folder) if (folder / MIXER_FILE).is_file() else Mixer()
    text = "import os\nimport sys\n\n\ndef main(argv):\n    return os.path.join(argv[0], sys.argv[1])\n\n\ndef ma"
    ids = loaded.vocab.encode(text)
    lp = model_logprobs(loaded, torch.tensor(ids))
    ref = mixed_logprobs(lp, ids, mixer)
    mem = SessionMemory()
    for t, c in enumerate(ids):  # the served path: one keystroke at a time, one row
        mem.push((c,))
        d, h = memory_arrays(mem.predict(), V)
        np.testing.assert_allclose(mixer.mix_row(lp[t].numpy(), d, h), ref[t].numpy(), atol=2e-5)
    # a beam search whose forks mix at every step starts from the reference's last row, and
    # its suggestion scores are the reference's over the suggested text
    state = state_after(loaded.model, loaded.vocab, text)
    mixing = ForkMixing(mixer, [mem.fork()], V)
    (found,) = beam_search_batch(loaded.model, loaded.vocab, state, n=3, mix=mixing)
    assert found and len(mem) == len(ids)  # the parent memory did not move
    best = found[0].text
    full = ids + loaded.vocab.encode(best)
    lp2 = model_logprobs(loaded, torch.tensor(full))
    ref2 = mixed_logprobs(lp2, full, mixer)
    nxt = full[len(ids) :]
    want = sum(float(ref2[len(ids) - 1 + i, c]) for i, c in enumerate(nxt))
    end_ids = [i for i, ch in enumerate(loaded.vocab.chars) if not (i > 0 and (ch == "_" or ch.isalnum()))]
    want += float(torch.logsumexp(ref2[len(full) - 1, end_ids], 0))
    assert found[0].logprob == pytest.approx(want, abs=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixing_on_cuda_equals_cpu() -> None:
    """On a GPU the mixing runs where the distribution is: same result as on the CPU."""
    mixer = Mixer.load(default_model_dir() / "python-gru")
    lp, dists, host = random_inputs(64, 3)
    cpu = mixer.mix(lp, dists, host)
    gpu = Mixer.load(default_model_dir() / "python-gru", "cuda").mix(lp.cuda(), dists.cuda(), host.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
