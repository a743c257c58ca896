"""Half precision on CUDA: fp16/bf16 weights with the fp32 state pool, every precision the GPU
serves against the fp32 oracle (the same checks as the CPU precisions), the auto choice, and
stepwise == full-sequence within each precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _engine_helpers import make_settings
from cellserve.nn import precision as prec
from cellserve.repository import ModelRepository
from test_engine_precision import served_precision_oracle

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def half_precisions() -> list[str]:
    return [p for p in ("fp16", "bf16") if torch.cuda.is_available() and p in prec.available(CUDA)]


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
@pytest.mark.parametrize("name", half_precisions() or ["fp16"])
def test_half_on_cuda_against_the_fp32_oracle(model_dir: Path, model: str, name: str) -> None:
    served_precision_oracle(model_dir, model, name, device="cuda")


def test_auto_on_cuda_serves_half_with_an_fp32_pool(model_dir: Path) -> None:
    repo = ModelRepository.load(make_settings(model_dir, device="cuda"))
    lm = repo.get("tiny-lstm")
    assert lm.precision == "fp16" and repo.info("tiny-lstm").precision == "fp16"
    assert lm.serving.rnn.inner.weight_hh_l0.dtype == torch.float16  # type: ignore[union-attr]
    assert all(s.dtype == torch.float32 for s in lm.serving.init_state(1))
    with pytest.raises(Exception, match="int8 is CPU-only"):
        ModelRepository.load(make_settings(model_dir, device="cuda", precision="int8"))


@pytest.mark.parametrize("name", half_precisions() or ["fp16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stepwise_equals_full_on_cuda(model_dir: Path, cell: str, name: prec.Served) -> None:
    from cellserve.nn.checkpoint import load_model

    lm = load_model(model_dir / f"tiny-{cell}", CUDA)
    served = prec.convert(lm.model, name)
    ids = lm.vocab.encode_tensor("def f(x):\n    return x * 2\n" * 3).to(CUDA)
    with torch.inference_mode():
        ref = torch.log_softmax(lm.model(ids[None])[0][0].float(), -1)
        full = torch.log_softmax(served(ids[None])[0][0], -1)
        state, steps = served.init_state(1), []
        for t in range(ids.numel()):
            out, state = served(ids[None, t : t + 1], state)
            steps.append(out[0])
        stepped = torch.log_softmax(torch.cat(steps), -1)
    noise = (full - ref).abs().max().item()
    assert 0 < noise < 0.5
    assert (stepped - full).abs().max().item() < 2 * noise + 1e-3
