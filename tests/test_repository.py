"""The model repository: loading, default choice, lookups and start-up failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from cellserve.config import Settings
from cellserve.errors import ModelFileError, NotFound
from cellserve.repository import ModelRepository
from conftest import write_random_model


def test_loads_all_and_picks_lowest_bits_per_char(model_dir: Path) -> None:
    repo = ModelRepository.load(Settings(model_dir=model_dir, device="cpu"))
    assert sorted(repo.names()) == ["tiny-gru", "tiny-lstm"]
    assert repo.default == "tiny-lstm" and repo.get().spec.name == "tiny-lstm"
    infos = {i.name: i for i in repo.infos()}
    assert infos["tiny-lstm"].is_default and not infos["tiny-gru"].is_default
    assert infos["tiny-gru"].cell == "gru" and infos["tiny-gru"].vocabulary[0] == ""
    assert len(infos["tiny-lstm"].weights_sha256) == 64
    with pytest.raises(NotFound) as e:
        repo.get("nope")
    assert str(model_dir) not in str(e.value)


def test_selection_and_explicit_default(model_dir: Path) -> None:
    repo = ModelRepository.load(Settings(model_dir=model_dir, models=["tiny-gru"], device="cpu"))
    assert repo.names() == ["tiny-gru"] and repo.default == "tiny-gru"
    repo = ModelRepository.load(Settings(model_dir=model_dir, default_model="tiny-gru", device="cpu"))
    assert repo.default == "tiny-gru"


def test_bad_repositories_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError):
        ModelRepository.load(Settings(model_dir=tmp_path / "missing", device="cpu"))
    with pytest.raises(ModelFileError):  # empty
        ModelRepository.load(Settings(model_dir=tmp_path, device="cpu"))
    write_random_model(tmp_path, "good", "lstm")
    with pytest.raises(ModelFileError):
        ModelRepository.load(Settings(model_dir=tmp_path, models=["absent"], device="cpu"))
    with pytest.raises(ModelFileError):
        ModelRepository.load(Settings(model_dir=tmp_path, default_model="absent", device="cpu"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError) as e:
        ModelRepository.load(Settings(model_dir=tmp_path, device="cpu"))
    assert "model.json" in str(e.value)
