"""The SDK installs and imports in a fresh virtual environment without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"


def _venv(tmp_path: Path) -> tuple[Path, str, list[str]]:
    """A fresh virtual environment: its folder, its python and its pip install command."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    return venv, py, [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]


@pytest.mark.slow
def test_installs_and_imports_without_torch(tmp_path: Path) -> None:
    venv, py, pip = _venv(tmp_path)
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


@pytest.mark.slow
def test_web_extra_ships_the_page_without_torch(tmp_path: Path) -> None:
    """A regular (not editable) install of the [web] extra carries the page's static files."""
    venv, py, pip = _venv(tmp_path)
    subprocess.run([*pip, f"{CLIENT}[web]"], check=True, timeout=600)
    check = (
        "import importlib.util; from importlib import resources;"
        "import cellserve_client.web as w;"
        "assert importlib.util.find_spec('torch') is None, 'torch was installed';"
        "files = resources.files('cellserve_client.web') / 'static';"
        "print(sorted(p.name for p in files.iterdir()))"
    )
    out = subprocess.run([py, "-c", check], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['app.js', 'icon.svg', 'index.html', 'style.css']"
    helped = subprocess.run([str(venv / "bin" / "cellserve-client"), "web", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--port" in helped.stdout and "--target" in helped.stdout
