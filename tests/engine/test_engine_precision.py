"""The engine at a reduced precision (int8 here; fp16/bf16 under the gpu marker in
test_engine_precision_gpu.py): every phase runs the serving module, answers stay within a
tolerance of the fp32 oracle derived from that precision's own measured distance, gates stay
fp32, and the auto rule follows the model's recorded quality."""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from _engine_helpers import engine, make_settings, run
from cellserve.engine import snapshot
from cellserve.engine.engine import Engine
from cellserve.engine.types import AppendOptions, CompletionRequest, SuggestRequest
from cellserve.nn import precision as prec
from cellserve.nn.cells import run_with_gates
from cellserve.nn.checkpoint import LoadedModel
from cellserve.nn.decode import beam_search, complete
from cellserve.nn.int8 import FixedRangeRNN
from cellserve.precision_eval import bits_per_char
from cellserve.repository import ModelRepository

ALPHABET = "abcdefghijklmnopqrstuvwxyz ABC0123456789.,:()=+-\n"


def log_probs(m: torch.nn.Module, lm: LoadedModel, text: str) -> torch.Tensor:
    """[len(text), V] next-character log-probs after each prefix, one full-sequence call."""
    with torch.inference_mode():
        logits, _ = m(lm.vocab.encode_tensor(text)[None].to(lm.model.device))
    return torch.log_softmax(logits[0].double(), -1).cpu()


def served_precision_oracle(model_dir: Path, model: str, name: str, device: str = "cpu") -> None:
    """32 sessions type random pieces (keystrokes, pastes over the budget: chunked prefill,
    packed mixed lengths) with log-probs; then a completion and suggestions. Each answer is
    compared with the fp32 offline forward within 3x this precision's own offline distance to
    fp32 on that text (half rounding depends on batch and cuts, so served is not equal to the
    offline run of the same precision; int8's bitwise agreement is tested below), and bits/char
    within the offline loss plus 1%."""
    rng = random.Random(7)

    async def body() -> None:
        async with engine(model_dir, device=device, precision=name, max_batch_tokens=120) as eng:
            lm = eng.repository.get(model)
            assert lm.precision == name and eng.models()[0].precision == name
            ids = [(await eng.open_session(model)).session_id for _ in range(32)]
            texts = {sid: "" for sid in ids}
            answers = []

            async def send(sid: str, offset: int, piece: str) -> None:
                pred = await eng.append(sid, offset, piece, AppendOptions(top_k=5, want_logprobs=True))
                answers.append((sid, offset, piece, pred))

            for _ in range(6):
                tasks = []
                for sid in rng.sample(ids, rng.randint(4, 32)):
                    n = rng.choice([1, 1, 1, 3, rng.randint(1, 40), rng.randint(150, 300)])
                    piece = "".join(rng.choice(ALPHABET) for _ in range(n))
                    tasks.append(send(sid, len(texts[sid]), piece))
                    texts[sid] += piece
                await asyncio.gather(*tasks)

            served_model = lm.serving
            checked = bits_checked = 0
            deviation = 0.0  # served vs fp32: nonzero when the precision is really served
            for sid, text in texts.items():
                if not text:
                    continue
                ref = log_probs(lm.model, lm, text)
                own = log_probs(served_model, lm, text)
                noise = (own - ref).abs().max().item()
                assert noise > 1e-4, "the precision is not in effect"
                targets = lm.vocab.encode_tensor(text)
                got = []
                for s, offset, piece, pred in answers:
                    if s != sid:
                        continue
                    assert pred.logprobs is not None
                    for j, lp in enumerate(pred.logprobs):
                        pos = offset + j
                        want = ref[pos - 1, targets[pos]].item() if pos else None
                        if want is not None:
                            assert abs(lp - want) < 3 * noise + 1e-3, (pos, lp, want, noise)
                            got.append(lp)
                            checked += 1
                            deviation = max(deviation, abs(lp - want))
                    top = ref[offset + len(piece) - 1].exp()
                    for ch, p in pred.top_k:  # the reported distribution too
                        assert abs(top[lm.vocab.id(ch)].item() - p) < 3 * noise + 1e-3
                if len(got) > 50:
                    served_bits = -sum(got) / len(got) / math.log(2)
                    fp32_bits = -ref[torch.arange(len(text) - 1), targets[1:]].mean().item() / math.log(2)
                    off_loss = bits_per_char(served_model, targets, 10_000) / bits_per_char(lm.model, targets) - 1
                    assert abs(served_bits / fp32_bits - 1) < abs(off_loss) + 0.01
                    bits_checked += 1
            assert checked > 1000 and bits_checked > 10, (checked, bits_checked)
            assert deviation > 1e-4, "the engine served fp32"

            if device != "cpu":
                return  # the offline decoders below run on CPU tensors
            # completions and suggestions run the serving module: equal to the offline decoders
            # on that module from the same state (one full-sequence call: the same shapes)
            s = (await eng.open_session(model)).session_id
            context = "def main(x):\n    ret"
            await eng.append(s, 0, context)
            stream = eng.complete(s, CompletionRequest(max_chars=12))
            text = "".join([c.text async for c in stream])
            assert text == complete(served_model, lm.vocab, context, max_chars=12)[0]
            r = SuggestRequest(n=3, scope="word", max_chars=8)
            got_s = await eng.submit_suggest(s, r)
            want_s = beam_search(served_model, lm.vocab, context, n=3, until="word", max_chars=8)
            assert [g.text for g in got_s] == [w.text for w in want_s]
            for g, w in zip(got_s, want_s, strict=True):
                assert math.isclose(g.logprob, w.logprob, abs_tol=1e-3)

    run(body)


REDUCED_CPU = [p for p in prec.available(torch.device("cpu")) if p != "fp32"]  # int8, fp16, bf16


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
@pytest.mark.parametrize("name", REDUCED_CPU)
def test_every_phase_against_the_fp32_oracle(model_dir: Path, model: str, name: str) -> None:
    """int8, and the half precisions (meant for CUDA; on CPU they check the fp32 boundary)."""
    served_precision_oracle(model_dir, model, name)


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
def test_gates_stay_fp32_at_int8(model_dir: Path, model: str) -> None:
    """want_gates rows run the fp32 reference cells (what users inspect), whatever the precision."""

    async def body() -> None:
        async with engine(model_dir, precision="int8") as eng:
            lm = eng.repository.get(model)
            s = (await eng.open_session(model)).session_id
            text = "x = f(y)\n"  # from the zero state: the fp32 cells see exactly the fp32 state
            pred = await eng.append(s, 0, text, AppendOptions(want_gates=True, top_k=0))
            with torch.inference_mode():
                _, _, trace = run_with_gates(lm.model, lm.vocab.encode_tensor(text)[None])
            assert len(pred.gates) == len(text)
            for got, step in zip(pred.gates, trace, strict=True):
                assert got.names == step.names
                for g, name in enumerate(step.names):
                    want = step.gates[name][:, 0].mean(dim=-1).tolist()  # per layer
                    assert max(abs(a - b) for a, b in zip(got.values[g], want, strict=True)) < 1e-5

    run(body)


def with_int8_loss(model_dir: Path, tmp_path: Path, loss: float | None, own: str = "auto") -> Path:
    """A copy of the test repository whose tiny-lstm records ``loss`` for int8 (None: nothing)
    and asks for ``own`` precision in its model.json."""
    d = tmp_path / "models"
    shutil.copytree(model_dir, d)
    spec_path = d / "tiny-lstm" / "model.json"
    spec = json.loads(spec_path.read_text())
    spec["precision"] = own
    if loss is not None:
        spec["quality"]["precisions"] = [
            {
                "precision": "int8",
                "device": "cpu",
                "heldout": [
                    {"package": "p", "chars": 100, "bits_per_char": 2.0 * (1 + loss), "fp32_bits_per_char": 2.0}
                ],
            }
        ]
    spec_path.write_text(json.dumps(spec))
    return d


@pytest.mark.parametrize(
    ("loss", "own", "setting", "want"),
    [
        (0.001, "auto", "auto", "int8"),  # recorded within the default 0.5%
        (0.02, "auto", "auto", "fp32"),  # recorded over it
        (None, "auto", "auto", "fp32"),  # never measured
        (0.001, "fp32", "auto", "fp32"),  # the model's own choice
        (None, "int8", "auto", "int8"),
        (0.02, "auto", "int8", "int8"),  # the server's explicit setting wins
        (0.001, "int8", "fp32", "fp32"),
    ],
)
def test_auto_rule_by_recorded_quality(
    model_dir: Path, tmp_path: Path, loss: float | None, own: str, setting: str, want: str
) -> None:
    d = with_int8_loss(model_dir, tmp_path, loss, own)
    repo = ModelRepository.load(make_settings(d, precision=setting))
    info = repo.info("tiny-lstm")
    assert info.precision == want == repo.get("tiny-lstm").precision
    assert info.precision_loss == (pytest.approx(loss) if want == "int8" and loss is not None else None)
    assert repo.info("tiny-gru").precision == ("fp32" if setting == "auto" else setting)  # unrecorded
    served = repo.get("tiny-lstm").serving
    assert isinstance(served.rnn, FixedRangeRNN) == (want == "int8")


def test_bound_setting_and_unavailable_precision(model_dir: Path, tmp_path: Path) -> None:
    d = with_int8_loss(model_dir, tmp_path, 0.02)
    assert ModelRepository.load(make_settings(d, precision_max_loss=0.03)).info("tiny-lstm").precision == "int8"
    from cellserve.errors import ModelFileError

    spec_path = d / "tiny-gru" / "model.json"
    spec = json.loads(spec_path.read_text())
    spec["precision"] = "int8"
    spec_path.write_text(json.dumps(spec))
    if "int8" in prec.available(torch.device("cpu")):
        assert ModelRepository.load(make_settings(d)).info("tiny-gru").precision == "int8"
    else:  # pragma: no cover - a torch without a quantized engine
        with pytest.raises(ModelFileError, match="precision"):
            ModelRepository.load(make_settings(d))


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
@pytest.mark.parametrize("name", REDUCED_CPU)
def test_keystrokes_chunks_and_one_call_agree_within_the_precision(model_dir: Path, model: str, name: str) -> None:
    """The same text typed one keystroke at a time (single steps, batched with the other
    sessions), pasted over the budget (chunked prefill) and pasted whole (one call) ends in the
    same distribution, within twice the precision's own distance to fp32 on that text."""
    text = "for i in range(10):\n    total += i * (i + 1)\n"

    async def body() -> None:
        async with engine(model_dir, precision=name, max_batch_tokens=16, max_top_k=4096) as eng:
            lm = eng.repository.get(model)
            typed, chunked = (await eng.open_session(model)).session_id, (await eng.open_session(model)).session_id
            opts = AppendOptions(top_k=len(lm.vocab.chars))
            keys = [eng.append(typed, i, ch, opts) for i, ch in enumerate(text)]
            *_, by_keys = await asyncio.gather(*keys)
            by_chunks = await eng.append(chunked, 0, text, opts)  # 16-character chunks
        async with engine(model_dir, precision=name, max_batch_tokens=4096, max_top_k=4096) as eng:
            whole = (await eng.open_session(model)).session_id
            by_call = await eng.append(whole, 0, text, opts)
        noise = (log_probs(lm.serving, lm, text) - log_probs(lm.model, lm, text)).abs().max().item()

        def lp(pred: object) -> torch.Tensor:
            out = torch.zeros(len(lm.vocab.chars), dtype=torch.float64)
            for ch, p in pred.top_k:  # type: ignore[attr-defined]
                out[lm.vocab.id(ch)] = math.log(max(p, 1e-30))
            return out

        ref = lp(by_call)
        for other in (by_keys, by_chunks):
            assert (lp(other) - ref).abs().max().item() < 2 * noise + 1e-3

    run(body)


INT8 = ["int8"] if "int8" in REDUCED_CPU else []
KEY = "precision-test-snapshot-key"


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
@pytest.mark.parametrize("name", INT8)
def test_int8_keystrokes_beside_busy_sessions_equal_one_paste_bitwise(model_dir: Path, model: str, name: str) -> None:
    """At int8 a session's answers do not depend on its batch companions nor on how its text
    was cut: typed keystroke by keystroke while 12 other sessions type and paste pieces of other
    lengths, pasted over the budget (chunked prefill beside the others), and pasted whole into an
    idle engine (one call) give the same log-probs, the same distribution and the same state
    (snapshot bytes), bit for bit."""
    text = "for i in range(10):\n    total += i * (i + 1)\n    print(total)\n"
    rng = random.Random(3)

    async def busy_engine() -> tuple[list[float], tuple[tuple[str, float], ...], tuple[bytes, ...]]:
        async with engine(model_dir, precision=name, max_batch_tokens=16, snapshot_key=KEY, max_top_k=4096) as eng:
            opts = AppendOptions(top_k=4096, want_logprobs=True)
            typed, pasted = (await eng.open_session(model)).session_id, (await eng.open_session(model)).session_id
            busy = [(await eng.open_session(model)).session_id for _ in range(12)]

            async def noise(sid: str) -> None:
                at = 0
                for _ in range(8):
                    piece = "".join(rng.choice(ALPHABET) for _ in range(rng.choice([1, 1, 2, 5, 23, 40])))
                    await eng.append(sid, at, piece, AppendOptions(top_k=3))
                    at += len(piece)

            keys = [eng.append(typed, i, ch, opts) for i, ch in enumerate(text)]
            got = await asyncio.gather(*keys, eng.append(pasted, 0, text, opts), *(noise(b) for b in busy))
            by_keys, by_paste = got[: len(text)], got[len(text)]
            key_lps = [lp for p in by_keys for lp in p.logprobs]  # type: ignore[union-attr]
            assert key_lps == list(by_paste.logprobs)  # type: ignore[union-attr]
            assert by_keys[-1].top_k == by_paste.top_k  # type: ignore[union-attr]
            snap = await state_bytes(eng, typed)
            assert snap == await state_bytes(eng, pasted)
            return key_lps, by_paste.top_k, snap  # type: ignore[union-attr]

    async def whole() -> tuple[list[float], tuple[tuple[str, float], ...], tuple[bytes, ...]]:
        async with engine(model_dir, precision=name, max_batch_tokens=4096, snapshot_key=KEY, max_top_k=4096) as eng:
            sid = (await eng.open_session(model)).session_id
            pred = await eng.append(sid, 0, text, AppendOptions(top_k=4096, want_logprobs=True))
            return list(pred.logprobs), pred.top_k, await state_bytes(eng, sid)

    async def state_bytes(eng: Engine, sid: str) -> tuple[bytes, ...]:
        """The session's raw fp32 state (the snapshot blob's payload: the blob itself differs by
        its nonce and creation time)."""
        return snapshot.decode(await eng.snapshot(sid), KEY.encode()).tensors

    key_lps, top, snap = run(busy_engine)
    one_lps, one_top, one_snap = run(whole)
    assert key_lps == one_lps and top == one_top
    assert snap == one_snap
