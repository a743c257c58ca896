"""Serving precisions offline: the auto rule, what int8 quantizes (LSTM, GRU, packed input, oneDNN
off), fp32 state at every precision, and stepwise == full-sequence within each precision (bit for
bit at int8 and fp32; tests/nn/test_int8.py has int8's batch and cut invariance in detail)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cellserve.nn import precision as prec
from cellserve.nn.charlm import CharLM
from cellserve.nn.checkpoint import load_model
from cellserve.nn.int8 import FixedRangeHead, FixedRangeRNN
from cellserve.nn.kernels import onednn
from cellserve.nn.spec import PackageLoss, PrecisionQuality, Quality
from cellserve.precision_eval import bits_per_char
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CPU = torch.device("cpu")
TEXT = "def main(argv):\n    for i, x in enumerate(argv):\n        print(i, x.strip())\n    return 0\n" * 2


def quality(**losses: float) -> Quality:
    """A Quality with one package per precision at the given relative loss."""
    return Quality(
        validation_bits_per_char=2.0,
        precisions=[
            PrecisionQuality(
                precision=p,  # type: ignore[arg-type]
                device="cpu",
                heldout=[PackageLoss(package="a", chars=10, bits_per_char=2.0 * (1 + x), fp32_bits_per_char=2.0)],
            )
            for p, x in losses.items()
        ],
    )


@pytest.mark.parametrize(
    ("requested", "q", "want"),
    [
        ("auto", quality(int8=0.0002), "int8"),  # recorded within the default bound
        ("auto", quality(int8=0.0049), "int8"),
        ("auto", quality(int8=0.0051), "fp32"),  # recorded, over the bound
        ("auto", Quality(validation_bits_per_char=2.0), "fp32"),  # never measured
        ("auto", None, "fp32"),
        ("auto", quality(int8=-0.01), "int8"),  # better than fp32 on held-out text
        ("fp32", quality(int8=0.0), "fp32"),  # explicit wins
        ("int8", quality(int8=0.5), "int8"),
        ("int8", None, "int8"),
        ("bf16", None, "bf16"),  # half runs on CPU too (slowly): the CUDA path's numerics, testable here
    ],
)
def test_resolve_on_cpu(requested: prec.Precision, q: Quality | None, want: str) -> None:
    assert prec.resolve(requested, CPU, q, 0.005) == want


def test_the_bound_is_a_setting() -> None:
    assert prec.resolve("auto", CPU, quality(int8=0.02), 0.005) == "fp32"
    assert prec.resolve("auto", CPU, quality(int8=0.02), 0.03) == "int8"


def test_auto_on_cuda_prefers_half(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert prec.resolve("auto", cuda, None, 0.005) == "fp16"  # half rounding: taken unmeasured
    assert prec.resolve("auto", cuda, quality(fp16=0.01, bf16=0.001), 0.005) == "bf16"
    assert prec.resolve("auto", cuda, quality(fp16=0.01), 0.005) == "fp32"  # bf16 unmeasured: not taken
    assert prec.resolve("auto", cuda, quality(int8=0.0), 0.005) == "fp16"  # int8 never on CUDA
    with pytest.raises(prec.PrecisionUnavailable, match="int8 is CPU-only"):
        prec.resolve("int8", cuda, None, 0.005)


def test_the_recorded_loss_is_the_worst_package() -> None:
    q = PrecisionQuality(
        precision="int8",
        device="cpu",
        heldout=[
            PackageLoss(package="a", chars=10, bits_per_char=1.0, fp32_bits_per_char=1.0),
            PackageLoss(package="b", chars=10, bits_per_char=2.02, fp32_bits_per_char=2.0),
        ],
    )
    assert q.relative_loss == pytest.approx(0.01)
    with pytest.raises(ValueError, match="one entry per precision"):
        Quality(validation_bits_per_char=1.0, precisions=[q, q])


def model_of(cell: str) -> CharLM:
    torch.manual_seed(3)
    return CharLM(cell, 40, 16, 32, 2).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_int8_quantizes_the_recurrent_layers_and_the_head(cell: str) -> None:
    m = model_of(cell)
    q = prec.convert(m, "int8")
    assert isinstance(q.rnn, FixedRangeRNN) and q.rnn.cell == cell
    assert isinstance(q.head, FixedRangeHead)
    assert isinstance(q.embed, torch.nn.Embedding) and q.embed.weight.dtype == torch.float32
    assert isinstance(m.rnn, torch.nn.LSTM | torch.nn.GRU)  # the fp32 model is left as it was
    assert prec.convert(m, "fp32") is m
    # torch's dynamic quantization stays reachable for comparisons (scripts/bench_precision.py)
    d = prec.quantize_dynamic_int8(m)
    assert type(d.rnn).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert type(d.rnn).__name__ == ("LSTM" if cell == "lstm" else "GRU")
    assert type(d.head).__module__.startswith("torch.ao.nn.quantized.dynamic")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("name", ["int8", "fp16", "bf16"])
def test_packed_sequences_and_the_onednn_switch(cell: str, name: prec.Served) -> None:
    """Packed input (what chunked prefill of mixed lengths sends) works at every precision, with
    oneDNN off (the runner's small-step kernel) as with it on; outputs and state stay fp32."""
    m = prec.convert(model_of(cell), name)
    torch.manual_seed(0)
    tokens = torch.randint(1, 40, (3, 7))
    lens = torch.tensor([7, 2, 5])
    start = tuple(torch.randn(2, 3, 32).tanh() for _ in range(m.state_arity))
    results = []
    with torch.inference_mode():
        for enabled in (False, True):
            with onednn(enabled):
                packed = pack_padded_sequence(m.embed(tokens), lens, batch_first=True, enforce_sorted=False)
                out_p, st = m.rnn_forward(packed, start)  # type: ignore[arg-type]
                out, _ = pad_packed_sequence(out_p, batch_first=True)  # type: ignore[arg-type]
                assert out.dtype == torch.float32 and all(s.dtype == torch.float32 for s in st)
                results.append((out, st))
                # each row's final state is its own last step: row 1 alone, unpacked, agrees
                alone, st1 = m.rnn_forward(m.embed(tokens[1:2, :2]), tuple(s[:, 1:2].contiguous() for s in start))
                if name == "int8":  # fixed activation range: the row's own bits, whatever the batch
                    assert torch.equal(alone[0], out[1, :2])
                    assert all(torch.equal(a[:, 0], b[:, 1]) for a, b in zip(st1, st, strict=True))
                else:
                    assert (alone[0] - out[1, :2]).abs().max() < 0.02
                    assert max((a[:, 0] - b[:, 1]).abs().max().item() for a, b in zip(st1, st, strict=True)) < 0.02
    (off, st_off), (on, st_on) = results
    assert torch.allclose(off, on, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(st_off, st_on, strict=True))


def log_probs_full(m: CharLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(m(ids[None])[0][0], -1)


def log_probs_steps(m: CharLM, ids: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """The same text through pieces ending at ``cuts`` (1-character pieces: single steps)."""
    out, state, a = [], m.init_state(1), 0
    with torch.inference_mode():
        for b in [*cuts, ids.numel()]:
            logits, state = m(ids[a:b][None], state)
            out.append(logits[0])
            a = b
    return torch.log_softmax(torch.cat(out), -1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("name", ["fp32", "int8", "fp16", "bf16"])
def test_stepwise_equals_full_within_the_precision(model_dir: Path, cell: str, name: prec.Served) -> None:
    """Within one precision, single steps and chunks agree with one full-sequence call, to a
    tolerance derived from that precision's own distance to fp32 on the same text: a wrong state
    hand-over between calls is off by far more; int8 agrees bit for bit (fixed activation
    range). The precision is really in effect (differs from fp32), and its bits/char stay near
    fp32's."""
    lm = load_model(model_dir / f"tiny-{cell}")
    ids = lm.vocab.encode_tensor(TEXT)
    served = prec.convert(lm.model, name)
    ref = log_probs_full(lm.model, ids)
    full = log_probs_full(served, ids)
    noise = (full - ref).abs().max().item()  # this precision's distance to fp32 here
    if name == "fp32":
        assert noise == 0.0
    else:
        assert noise > 1e-4  # the precision is in effect
    tol = 1e-4 if name == "fp32" else 2 * noise
    steps = log_probs_steps(served, ids, list(range(1, 40)))  # 39 single steps, then the rest
    chunks = log_probs_steps(served, ids, [5, 64, 90])
    if name == "int8":
        assert torch.equal(steps, full) and torch.equal(chunks, full)
    assert (steps - full).abs().max().item() < tol
    assert (chunks - full).abs().max().item() < tol
    loss = bits_per_char(served, ids, piece=50) / bits_per_char(lm.model, ids, piece=50) - 1
    assert abs(loss) < 0.05, loss  # random 32-unit weights: within 5% (the shipped models: model.json)


def test_half_state_pool_stays_fp32() -> None:
    m = prec.convert(model_of("lstm"), "fp16")
    assert m.rnn.inner.weight_hh_l0.dtype == torch.float16  # type: ignore[union-attr]
    assert all(s.dtype == torch.float32 for s in m.init_state(2))
    with torch.inference_mode():
        logits, st = m(torch.tensor([[1, 2, 3]]), m.init_state(1))
    assert logits.dtype == torch.float32 and all(s.dtype == torch.float32 for s in st)
