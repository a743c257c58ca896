"""The SDK installs and imports in a fresh virtual environment without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"


@pytest.mark.slow
def test_installs_and_imports_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # The declared dependencies only (grpcio, protobuf): nothing may pull torch in.
    subprocess.run([*pip, str(CLIENT)], check=True, timeout=600)
    check = (
        "import importlib.util, cellserve_client as c;"
        "assert importlib.util.find_spec('torch') is None, 'torch was installed';"
        "assert c.Client and c.AsyncClient and c.__version__;"
        "from cellserve_client._proto.cellserve.v1 import service_pb2;"
        "print('ok', c.__version__)"
    )
    out = subprocess.run([py, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr
    freeze = subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True, timeout=60).stdout.lower()
    assert "torch" not in freeze and "grpcio" in freeze and "protobuf" in freeze
    assert (venv / "bin" / "cellserve-client").exists()
