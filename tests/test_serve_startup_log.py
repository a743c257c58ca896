"""The server says at start which models it loaded and on which device."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cellserve.boot import log_loaded
from cellserve.config import Settings
from cellserve.repository import ModelRepository


def test_start_logs_models_and_device(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = ModelRepository.load(Settings(model_dir=model_dir, device="cpu"))
    with caplog.at_level(logging.INFO, logger="cellserve.serve"):
        log_loaded(repo)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("loaded model tiny-lstm (default): lstm 2x32") for line in lines), lines
    assert any(line.startswith("loaded model tiny-gru: gru 2x32") for line in lines), lines
    assert lines[-1] == "serving 2 model(s) on device cpu"
