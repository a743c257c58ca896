"""A short training run on a tiny corpus lowers the loss and writes a loadable model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from cellserve.nn.checkpoint import load_model
from cellserve.nn.corpus import gather_files, is_validation, load_corpus
from cellserve.train import TrainConfig, evaluate, train

TEXT = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n    y: int = 0\n\n" * 40


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    (d / "pkg").mkdir(parents=True)
    (d / "tests").mkdir()
    for i in range(6):
        (d / "pkg" / f"m{i}.py").write_text(TEXT)
    (d / "tests" / "test_x.py").write_text("EXCLUDED" * 100)
    (d / "notes.txt").write_text("not python")
    return d


def test_gathering_skips_tests_and_non_python(corpus: Path) -> None:
    keys = [k for k, _ in gather_files([corpus])]
    assert keys == [f"pkg/m{i}.py" for i in range(6)]


def test_split_is_by_file_and_deterministic(corpus: Path) -> None:
    # the split depends only on each file's path, never on the seed or the order of files
    a = load_corpus([corpus], validation_fraction=0.3, seed=1)
    b = load_corpus([corpus], validation_fraction=0.3, seed=2)
    assert a.validation == b.validation and sorted(a.train) == sorted(b.train)
    assert a.train_files + a.validation_files == 6 and a.validation_files >= 1
    assert "EXCLUDED" not in a.train + a.validation
    assert is_validation("pkg/m0.py", 0.0) is False and is_validation("pkg/m0.py", 1.0) is True


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_lowers_loss_and_resumes(corpus: Path, tmp_path: Path, cell: str) -> None:
    cfg = TrainConfig(
        out=tmp_path / "out",
        name="tiny",
        corpus=[corpus],
        cell=cell,
        layers=1,
        hidden=32,
        embedding=8,
        vocab_min_count=1,
        seq_len=32,
        batch=4,
        steps=80,
        warmup_steps=5,
        lr=1e-2,
        validation_fraction=0.3,
        eval_every=1e9,
        checkpoint_every=1e9,
    )
    spec = train(cfg)
    loaded = load_model(cfg.out)
    assert loaded.spec == spec
    assert spec.provenance.steps == 80
    assert spec.quality is not None
    import math

    untrained_bpc = math.log2(len(loaded.vocab))  # uniform guess
    assert spec.quality.validation_bits_per_char < 0.5 * untrained_bpc

    # resuming continues from the saved step and the saved vocabulary
    cfg.steps, cfg.resume = 100, True
    spec2 = train(cfg)
    assert spec2.provenance.steps == 100
    assert spec2.vocabulary == spec.vocabulary


def test_unknown_characters_encode_to_zero(corpus: Path) -> None:
    from cellserve.nn.vocab import Vocab

    v = Vocab.from_texts([load_corpus([corpus]).train], max_size=64)
    assert v.encode("😀中") == [0, 0]


def test_evaluate_matches_direct_cross_entropy(tmp_path: Path) -> None:
    import math

    import torch
    import torch.nn.functional as F
    from cellserve.nn.charlm import CharLM

    torch.manual_seed(0)
    m = CharLM("gru", 20, 4, 8, 1).eval()
    ids = torch.randint(0, 20, (1001,))
    with torch.no_grad():
        logits, _ = m(ids[None, :-1])
        want = F.cross_entropy(logits[0], ids[1:]).item() / math.log(2)
    assert abs(evaluate(m, ids, torch.device("cpu"), rows=1, chunk=64) - want) < 1e-4


def test_warm_start_keeps_vocabulary_and_records_it(corpus: Path, tmp_path: Path) -> None:
    base = dict(
        corpus=[corpus],
        cell="gru",
        layers=1,
        hidden=16,
        embedding=4,
        vocab_min_count=1,
        seq_len=16,
        batch=2,
        steps=3,
        warmup_steps=1,
        validation_fraction=0.3,
        eval_every=1e9,
        checkpoint_every=1e9,
    )
    first = train(TrainConfig(out=tmp_path / "a", name="a", **base))  # type: ignore[arg-type]
    second = train(TrainConfig(out=tmp_path / "b", name="b", init_from=tmp_path / "a", **base))  # type: ignore[arg-type]
    assert first is not None and second is not None
    assert second.vocabulary == first.vocabulary
    assert second.provenance.init_from.startswith("a (weights sha256 ")
    assert (tmp_path / "b" / "weights.safetensors").stat().st_mode & 0o777 == 0o644
    with pytest.raises(ValueError, match="asked for"):
        train(TrainConfig(out=tmp_path / "c", name="c", init_from=tmp_path / "a", **(base | {"hidden": 8})))  # type: ignore[arg-type]


def test_dry_run_lists_the_corpus_and_trains_nothing(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(TrainConfig(out=tmp_path / "x", name="x", corpus=[corpus], dry_run=True)) is None
    out = capsys.readouterr().out
    assert "train" in out and "validation" in out and not (tmp_path / "x").exists()
    listed = [line.split()[-1] for line in out.splitlines() if line.split()[-1].endswith(".py")]
    assert sorted(listed) == [k for k, _ in gather_files([corpus])]  # every file, by name, once
    assert "test_x.py" not in out


def test_progress_bar_survives_an_update_past_its_total() -> None:
    from cellserve.train import Progress

    bar = Progress(10.0, "s")
    bar.update(5.0, "half")
    bar.update(10.7, "past the time budget")  # the last step of a time budget ends after it
    bar.close()
