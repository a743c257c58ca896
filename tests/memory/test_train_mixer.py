"""`cellserve train-mixer` runs end to end on a tiny budget: it writes a loadable mixer beside
the model's weights and the memory section (provenance, held-out figures) of model.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from _loops import memory_loops  # noqa: F401  (autouse: every test on both implementations)
from cellserve.memory.mixer import MIXER_FILE, Mixer
from cellserve.nn.checkpoint import load_model
from cellserve.nn.random_model import save_random_model

TEXT = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n    y: int = 0\n\n" * 20


def test_train_mixer_end_to_end(tmp_path: Path) -> None:
    vocab = [""] + sorted(set(TEXT))
    save_random_model(tmp_path / "models", "tiny", "gru", vocab, layers=1, hidden=16, embedding=8)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"m{i}.py").write_text(TEXT)
    cmd = [sys.executable, "-m", "cellserve.cli", "train-mixer", "--model", "tiny"]
    cmd += ["--model-dir", str(tmp_path / "models"), "--corpus", str(corpus)]
    cmd += ["--spans", "2", "--span-chars", "400", "--steps", "20", "--heldout-chars", "600", "--window", "256"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "models" / "tiny"
    assert (folder / MIXER_FILE).is_file()
    mixer = Mixer.load(folder)
    spec = json.loads((folder / "model.json").read_text())
    mem = spec["memory"]
    assert mem["window"] == 256 and mem["train_chars"] == 2 * 399 and "train-mixer" in mem["command"]
    assert str(corpus) in mem["corpus"] and mem["git_commit"] and mem["date"].endswith("Z")
    (held,) = mem["heldout"]
    assert held["package"] == "validation" and held["chars"] == 600
    # repeated text: the memory must help even a random model a lot
    assert held["bits_per_char_on"] < held["bits_per_char_off"] - 1.0
    loaded = load_model(folder)  # model.json with the memory section still loads
    assert loaded.spec.memory is not None
    out = mixer.mix(
        torch.log_softmax(torch.randn(2, len(vocab)), -1), torch.zeros(2, 9, len(vocab)), torch.zeros(2, 27)
    )
    assert torch.allclose(out.exp().sum(-1), torch.ones(2), atol=1e-5)


def test_train_mixer_rejects_bad_arguments(tmp_path: Path) -> None:
    save_random_model(tmp_path / "models", "tiny", "gru", ["", "a"], layers=1, hidden=4, embedding=4)
    cmd = [
        sys.executable,
        "-m",
        "cellserve.cli",
        "train-mixer",
        "--model",
        "tiny",
        "--model-dir",
        str(tmp_path / "models"),
    ]
    done = subprocess.run([*cmd, "--steps", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--steps" in done.stderr
    done = subprocess.run([*cmd, "--window", "3"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--window" in done.stderr
    assert not (tmp_path / "models" / "tiny" / MIXER_FILE).exists()
