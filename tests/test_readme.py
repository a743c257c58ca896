"""The README's API tour runs, as printed, against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from servers import start_server

README = Path(__file__).resolve().parents[1] / "README.md"


def test_api_tour_runs(model_dir: Path, tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    tour = next(b for b in blocks if "CellserveServiceStub" in b)
    server = start_server(model_dir)
    try:
        script = tmp_path / "tour.py"
        script.write_text(tour.replace("127.0.0.1:50051", server.target))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    finally:
        server.terminate()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("4 [(")  # position after "def " and the top-5 distribution
    assert lines[-1].startswith("ABORTED") and "expected offset 4" in lines[-1]


def test_sdk_snippet_runs(model_dir: Path, tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "from cellserve_client import Client" in b)
    server = start_server(model_dir)
    try:
        script = tmp_path / "sdk.py"
        script.write_text(snippet.replace("127.0.0.1:50051", server.target))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    finally:
        server.terminate()
    assert out.returncode == 0, out.stderr
    first, completion = out.stdout.splitlines()
    assert first.startswith("8 (("), first
    assert len(completion) <= 16


def test_plain_torch_loading_snippet(model_dir: Path, tmp_path: Path) -> None:
    """The five-line loader in the README gives the same logits as cellserve's model."""
    import torch
    from cellserve.nn.checkpoint import load_model

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "load_state_dict" in b)
    scope: dict[str, object] = {}
    exec(snippet.replace("models/python-lstm", str(model_dir / "tiny-lstm")), scope)  # noqa: S102
    m = scope["m"]
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        out, _ = m.rnn(m.embed(ids))  # type: ignore[attr-defined]
        torch.testing.assert_close(m.head(out), load_model(model_dir / "tiny-lstm").model(ids)[0])  # type: ignore[attr-defined]
