"""`cellserve eval --precision`: measures each precision beside fp32 on the same text, records it
in model.json (where the auto rule reads it), and refuses unknown precisions in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cellserve.cli import main
from cellserve.config import Settings
from cellserve.nn import precision as prec
from cellserve.nn.checkpoint import load_model, read_spec
from cellserve.precision_eval import bits_per_char
from cellserve.repository import ModelRepository

TEXT = "import os\n\ndef main(argv):\n    return os.path.join(argv, argv)\n" * 4


@pytest.mark.skipif("int8" not in prec.available(torch.device("cpu")), reason="no quantized CPU engine")
def test_eval_records_int8_and_auto_reads_it(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "models"
    shutil.copytree(model_dir, d)
    f = tmp_path / "sample.py"
    f.write_text(TEXT)
    weights = (d / "tiny-lstm" / "weights.safetensors").read_bytes()
    argv = ["eval", "--model-dir", str(d), "--model", "tiny-lstm", str(f), "--precision", "int8"]
    assert main([*argv, "--precision-only", "--record", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "int8" in out.out and "sample.py" in out.out and "recorded int8" in out.err
    q = read_spec(d / "tiny-lstm").quality
    assert q is not None
    (entry,) = q.precisions
    (pkg,) = entry.heldout
    assert (entry.precision, entry.device, pkg.package, pkg.chars) == ("int8", "cpu", "sample.py", len(TEXT))
    lm = load_model(d / "tiny-lstm")
    ids = lm.vocab.encode_tensor(TEXT)
    assert pkg.fp32_bits_per_char == pytest.approx(bits_per_char(lm.model, ids), abs=1e-4)
    assert pkg.bits_per_char == pytest.approx(bits_per_char(prec.convert(lm.model, "int8"), ids), abs=1e-4)
    assert pkg.bits_per_char != pkg.fp32_bits_per_char
    assert (d / "tiny-lstm" / "weights.safetensors").read_bytes() == weights  # snapshots stay valid
    # auto serves int8 exactly when the recorded loss is within the bound
    loss = entry.relative_loss
    repo = ModelRepository.load(Settings(model_dir=d, device="cpu", precision_max_loss=max(loss, 0.0)))
    assert repo.info("tiny-lstm").precision == "int8" and repo.info("tiny-lstm").precision_loss == pytest.approx(loss)
    if loss > 0:
        repo = ModelRepository.load(Settings(model_dir=d, device="cpu", precision_max_loss=loss / 2))
        assert repo.info("tiny-lstm").precision == "fp32"
    # `cellserve models` shows the same choice, from model.json alone
    capsys.readouterr()
    assert main(["models", "--model-dir", str(d), "--precision-max-loss", str(max(loss, 0.0) + 1e-9)]) == 0
    lines = {line.split("\t")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "served at int8" in lines["tiny-lstm"] and f"int8 {loss:+.2%}" in lines["tiny-lstm"]
    assert "served at fp32" in lines["tiny-gru"] and "recorded: none" in lines["tiny-gru"]
    # measuring again replaces the entry rather than adding a second one
    assert main([*argv, "--precision-only", "--record", "--no-progress"]) == 0
    assert len(json.loads((d / "tiny-lstm" / "model.json").read_text())["quality"]["precisions"]) == 1


@pytest.mark.parametrize("value", ["int4", "fp32", "auto,int8"])
def test_eval_refuses_unknown_precisions_in_one_line(model_dir: Path, tmp_path: Path, value: str) -> None:
    f = tmp_path / "sample.py"
    f.write_text(TEXT)
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model-dir", str(model_dir), "--model", "tiny-lstm", str(f), "--precision", value])
    msg = str(e.value.code)
    assert msg.startswith("cellserve eval: --precision") and "\n" not in msg, msg
