"""The int8 serving module is batch- and cut-invariant, bit for bit (torch.equal): a row's
answer and state do not depend on the other rows of its call, nor on how its text was cut into
calls (one sequence call, single steps, uneven chunks, a PackedSequence beside other sessions
of other lengths). Shapes: the shipped models' (2 x 512, embedding 64, 103 symbols) and the
test models' (2 x 32)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from cellserve.nn import precision as prec
from cellserve.nn.charlm import CharLM, State
from cellserve.nn.int8 import EmbeddingIds, FixedRangeHead, FixedRangeLinear, FixedRangeRNN
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.overrides import TorchFunctionMode

VOCAB = 103


def served(cell: str, hidden: int = 512, embedding: int = 64) -> tuple[CharLM, CharLM]:
    """A random fp32 model of the given shape (weights 3x the default init, so states and gates
    move visibly) and its int8 serving module."""
    torch.manual_seed(11)
    m = CharLM(cell, VOCAB, embedding, hidden, 2).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for p in m.rnn.parameters():
            p.mul_(3.0)
    return m, prec.convert(m, "int8")


def random_state(m: CharLM, rows: int, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(m.layers, rows, m.hidden, generator=g).tanh()
    if m.cell == "gru":
        return (h,)
    return (h, torch.randn(m.layers, rows, m.hidden, generator=g) * 3)


def rows(state: State, sel: slice | list[int]) -> State:
    return tuple(s[:, sel].contiguous() for s in state)


def same(a: State, b: State) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_int8_is_the_fixed_range_module(cell: str) -> None:
    m, q = served(cell, hidden=32, embedding=16)
    assert isinstance(q.rnn, FixedRangeRNN) and isinstance(q.head, FixedRangeHead)
    assert q.embed is m.embed  # the lookup is never converted
    assert isinstance(m.rnn, torch.nn.LSTM | torch.nn.GRU)  # the fp32 model is left as it was
    assert q.state_arity == m.state_arity and q.device == torch.device("cpu")
    assert all(s.dtype == torch.float32 and s.shape == (2, 3, 32) for s in q.init_state(3))


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """torch's intra-op threads for the test (``cpu_threads``): elementwise work split across
    threads must not change a row's bits either."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("hidden", [512, 32])
def test_a_step_is_bitwise_the_same_alone_and_among_others(cell: str, hidden: int, threads: int) -> None:
    """Row 0 stepped alone and beside 1, 15 and 255 other rows (random tokens, random states):
    the same logits, h and c, bit for bit."""
    m, q = served(cell, hidden=hidden, embedding=64 if hidden == 512 else 16)
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(1, VOCAB, (256, 1), generator=g)
    state = random_state(m, 256, 1)
    with torch.inference_mode():
        alone, st_alone = q(tokens[:1], rows(state, slice(0, 1)))
        for n in (2, 16, 256):
            logits, st = q(tokens[:n], rows(state, slice(0, n)))
            assert torch.equal(logits[:1], alone), n
            assert same(rows(st, slice(0, 1)), st_alone), n
        # and in another position of the batch, after other rows
        perm = [7, 3, 0, 9]
        logits, st = q(tokens[perm], rows(state, perm))
        assert torch.equal(logits[2:3], alone) and same(rows(st, [2]), st_alone)


def run_cuts(q: CharLM, ids: torch.Tensor, start: State, cuts: list[int]) -> tuple[torch.Tensor, State]:
    """One row's text through pieces ending at ``cuts`` -> logits [T, V], final state."""
    out, state, a = [], start, 0
    with torch.inference_mode():
        for b in [*cuts, ids.numel()]:
            logits, state = q(ids[a:b][None], state)
            out.append(logits[0])
            a = b
    return torch.cat(out), state


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_every_cut_of_a_text_gives_the_same_bits(cell: str) -> None:
    """One sequence call == single steps == chunks 7 + 13 + 29 + ... == the row packed among
    other sessions of other lengths (what chunked prefill sends): logits and state, bitwise."""
    m, q = served(cell)
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(1, VOCAB, (120,), generator=g)
    start = random_state(m, 1, 2)
    whole, st_whole = run_cuts(q, ids, start, [])
    steps, st_steps = run_cuts(q, ids, start, list(range(1, 120)))
    chunks, st_chunks = run_cuts(q, ids, start, [7, 20, 49, 50, 97])
    for logits, st in ((steps, st_steps), (chunks, st_chunks)):
        assert torch.equal(logits, whole) and same(st, st_whole)

    # packed: our row (length 120) beside rows of lengths 3, 120, 57 and 1, random states
    others = torch.randint(1, VOCAB, (4, 120), generator=g)
    tokens = torch.cat([others[:2], ids[None], others[2:]])  # ours is row 2
    lens = torch.tensor([3, 120, 120, 57, 1])
    states = random_state(m, 5, 3)
    states = tuple(torch.cat([s[:, :2], t, s[:, 3:]], dim=1) for s, t in zip(states, start, strict=True))
    with torch.inference_mode():
        packed = pack_padded_sequence(q.embed(tokens), lens, batch_first=True, enforce_sorted=False)
        out_p, st_p = q.rnn_forward(packed, states)  # type: ignore[arg-type]
        out, _ = pad_packed_sequence(out_p, batch_first=True)  # type: ignore[arg-type]
        assert torch.equal(q.head(out[2]), whole)
        assert same(rows(st_p, [2]), st_whole)
        # a short row's final state is its own last step, the same as that row alone
        short, st_short = run_cuts(q, others[2, :57], rows(states, [3]), [10])
        assert torch.equal(q.head(out[3, :57]), short) and same(rows(st_p, [3]), st_short)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_int8_stays_near_fp32(cell: str) -> None:
    """Quantization is in effect (differs from fp32) and stays within a small distance of it:
    next-character log-probabilities over 200 characters."""
    m, q = served(cell)
    ids = torch.randint(1, VOCAB, (1, 200), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ref = torch.log_softmax(m(ids)[0], -1)
        got = torch.log_softmax(q(ids)[0], -1)
    d = (got - ref).abs()
    assert 1e-4 < d.max().item() < 1.0 and d.mean().item() < 0.1, (d.mean().item(), d.max().item())


def test_inputs_outside_the_range_are_clamped_not_rescaled() -> None:
    """A row with out-of-range values (a corrupt state) cannot change the scale the other rows
    are quantized with: it is clamped to [-1, 1], so it computes as its clamped self."""
    torch.manual_seed(0)
    lin = FixedRangeLinear(torch.randn(64, 32), torch.randn(64))
    x = torch.rand(4, 32) * 2 - 1
    wild = x.clone()
    wild[0] *= 50
    y, y_wild = lin(x), lin(wild)
    assert torch.equal(y[1:], y_wild[1:])
    assert torch.equal(y_wild[0], lin(wild[0:1].clamp(-1, 1))[0])
    w, b = torch.ops.quantized.linear_unpack(lin.packed)
    w = w.dequantize()
    assert w.shape == (64, 32)
    ref = x @ w.T + b
    assert (y - ref).abs().max() < 0.1  # 7-bit inputs: near the product with the int8 weights


@pytest.mark.parametrize("rows", [1, 16, 256])
def test_the_fixed_input_range_is_what_the_dynamic_op_takes_for_minus_one_to_one(rows: int) -> None:
    """The fixed input parameters are exactly those ``quantized::linear_dynamic`` (7-bit, as
    fbgemm's dynamic linear) chooses when a call's inputs span [-1, 1]: the same GEMM with two
    calibration columns (-1 and +1 in every row, zero weights) gives the same bits, ends included."""
    torch.manual_seed(1)
    w, bias = torch.randn(96, 64) * 0.2, torch.randn(96)
    lin = FixedRangeLinear(w, bias)
    x = torch.rand(rows, 64) * 2 - 1
    x[0, :4] = torch.tensor([1.0, -1.0, 0.0, 1.0 / 127])
    qw, _ = torch.ops.quantized.linear_unpack(lin.packed)
    calibrated = torch.quantize_per_channel(
        torch.cat([qw.dequantize(), torch.zeros(96, 2)], dim=1),
        qw.q_per_channel_scales(),
        qw.q_per_channel_zero_points(),
        axis=0,
        dtype=torch.qint8,
    )
    packed = torch.ops.quantized.linear_prepack(calibrated, bias)
    cols = torch.tensor([[-1.0, 1.0]]).expand(rows, 2)
    dynamic = torch.ops.quantized.linear_dynamic(torch.cat([x, cols], dim=1), packed, True)
    assert torch.equal(lin(x), dynamic)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_state_outside_the_range_computes_as_its_clamped_self(cell: str) -> None:
    """h from outside (a corrupt pool row or snapshot) is clamped to [-1, 1] before anything
    reads it, so it moves no other row and steps exactly as the clamped state does; c (LSTM) is
    unbounded by nature and taken as it is."""
    m, q = served(cell, hidden=32, embedding=16)
    state = random_state(m, 4, 6)
    wild = (state[0] * 40, *state[1:])
    clamped = (wild[0].clamp(-1, 1), *state[1:])
    tokens = torch.randint(1, VOCAB, (4, 3), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        got, st = q(tokens, wild)
        want, st_want = q(tokens, clamped)
    assert torch.equal(got, want) and same(st, st_want)


def test_torch_function_modes_still_see_the_int8_modules_ops() -> None:
    """The int8 modules turn tensor subclasses' ``__torch_function__`` off while they run (a
    per-call cost of the quantized GEMM's binding otherwise); a torch function mode (profilers,
    FLOP counters) still sees their ops, and the answer is the same."""

    class Count(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def __torch_function__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
        ) -> Any:
            self.calls += 1
            return func(*args, **(kwargs or {}))

    _, q = served("lstm", hidden=32, embedding=16)
    tokens = torch.randint(1, VOCAB, (3, 4), generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        want, _ = q(tokens)
        with Count() as mode:
            got, _ = q(tokens)
    assert mode.calls > 10 and torch.equal(got, want)


def test_embedding_rows_map_back_to_their_ids_and_anything_else_does_not() -> None:
    emb = torch.nn.Embedding(VOCAB, 64).weight.detach()
    ids = EmbeddingIds(emb)
    want = torch.randint(0, VOCAB, (300,))
    got = ids(emb[want])
    assert got is not None and torch.equal(got, want)
    near = emb[want].clone()
    near[5, 3] += 1e-6
    assert ids(near) is None


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inputs_that_are_not_embeddings_still_run(cell: str) -> None:
    """rnn_forward on arbitrary vectors (no token behind them) takes the fp32 input projection:
    the answer is still near fp32's (only the token path is batch-invariant)."""
    m, q = served(cell, hidden=32, embedding=16)
    x = torch.randn(3, 5, 16)
    with torch.inference_mode():
        ref, _ = m.rnn_forward(x, None)
        got, st = q.rnn_forward(x, None)
    assert got.shape == ref.shape and st[0].shape == (2, 3, 32)
    assert (got - ref).abs().max().item() < 0.1
