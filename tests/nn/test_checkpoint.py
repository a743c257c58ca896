"""Model folders: round trip, plain-torch loading by tensor name, clear errors for bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cellserve.errors import ModelFileError
from cellserve.nn.checkpoint import load_model
from conftest import TEST_VOCAB, write_random_model
from safetensors.torch import load_file, save_file


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return write_random_model(tmp_path, "m", "lstm", seed=7)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_round_trip(tmp_path: Path, cell: str) -> None:
    f = write_random_model(tmp_path, "rt", cell, seed=3)
    a = load_model(f)
    b = load_model(f)
    assert a.spec == b.spec and a.weights_sha256 == b.weights_sha256
    assert a.vocab.chars == TEST_VOCAB
    tokens = torch.randint(0, len(TEST_VOCAB), (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(a.model(tokens)[0], b.model(tokens)[0], rtol=0, atol=0)


def test_plain_torch_modules_load_the_weights(folder: Path) -> None:
    """What the README shows: no cellserve needed to use the weights."""
    spec = json.loads((folder / "model.json").read_text())
    m = torch.nn.Module()
    m.embed = torch.nn.Embedding(len(spec["vocabulary"]), spec["embedding"])
    m.rnn = torch.nn.LSTM(spec["embedding"], spec["hidden"], spec["layers"], batch_first=True)
    m.head = torch.nn.Linear(spec["hidden"], len(spec["vocabulary"]))
    m.load_state_dict(load_file(folder / "weights.safetensors"))  # strict: every name matches
    ids = torch.tensor([[spec["vocabulary"].index(ch) for ch in "def f"]])
    out, _ = m.rnn(m.embed(ids))
    with torch.no_grad():
        torch.testing.assert_close(m.head(out), load_model(folder).model(ids)[0])


def test_no_pickle_in_weights(folder: Path) -> None:
    raw = (folder / "weights.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "cellserve-charlm"


def _edit_spec(folder: Path, **changes: object) -> None:
    spec = json.loads((folder / "model.json").read_text())
    spec.update(changes)
    (folder / "model.json").write_text(json.dumps(spec))


@pytest.mark.parametrize(
    "change,field,problem",
    [
        ({"cell": "rnn"}, "cell", "'lstm' or 'gru'"),
        ({"hidden": 64}, "rnn.weight_ih_l0", "does not match model.json"),
        ({"layers": 0}, "layers", "greater than or equal to 1"),
        ({"vocabulary": ["a", "b"]}, "vocabulary", 'entry 0 must be ""'),
        ({"vocabulary": ["", "ab"]}, "vocabulary", "exactly one character"),
        ({"vocabulary": TEST_VOCAB[:-1]}, "embed.weight", "vocabulary has 100 entries, weights have 101"),
        ({"dtype": "float16"}, "embed.weight", "dtype torch.float32 does not match model.json dtype float16"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
    ],
)
def test_bad_spec_names_file_and_field(folder: Path, change: dict[str, object], field: str, problem: str) -> None:
    _edit_spec(folder, **change)
    with pytest.raises(ModelFileError) as e:
        load_model(folder)
    assert e.value.field == field
    assert problem in e.value.problem
    assert str(folder) in str(e.value)


def test_missing_files(folder: Path, tmp_path: Path) -> None:
    (folder / "weights.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"weights\.safetensors: \(file\): missing"):
        load_model(folder)
    with pytest.raises(ModelFileError, match=r"model\.json: \(file\): missing"):
        load_model(tmp_path / "nothing-here")


def test_corrupt_files(folder: Path) -> None:
    good = folder.parent / "good"
    shutil.copytree(folder, good)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(folder)
    (good / "weights.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="not a valid safetensors file"):
        load_model(good)


def test_missing_unexpected_and_nonfinite_tensors(folder: Path) -> None:
    path = folder / "weights.safetensors"
    tensors = load_file(path)
    save_file({k: v for k, v in tensors.items() if k != "head.bias"}, path)
    with pytest.raises(ModelFileError, match="head.bias: tensor missing"):
        load_model(folder)
    save_file({**tensors, "extra": torch.zeros(1)}, path)
    with pytest.raises(ModelFileError, match="extra: unexpected tensor"):
        load_model(folder)
    bad = dict(tensors)
    bad["head.bias"] = bad["head.bias"].clone()
    bad["head.bias"][0] = float("nan")
    save_file(bad, path)
    with pytest.raises(ModelFileError, match="head.bias: contains NaN"):
        load_model(folder)
