"""The README's API tour runs, as printed, against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from servers import start_server

README = Path(__file__).resolve().parents[1] / "README.md"


def run_snippet(marker: str, model_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Runs the README's python block containing ``marker`` against a real server."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if marker in b)
    server = start_server(model_dir)
    try:
        script = tmp_path / "snippet.py"
        script.write_text(snippet.replace("127.0.0.1:50051", server.target))
        return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    finally:
        server.terminate()


def test_api_tour_runs(model_dir: Path, tmp_path: Path) -> None:
    out = run_snippet("CellserveServiceStub", model_dir, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("4 [(")  # position after "def " and the top-5 distribution
    assert lines[-1].startswith("ABORTED") and "expected offset 4" in lines[-1]


def test_sdk_snippet_runs(model_dir: Path, tmp_path: Path) -> None:
    out = run_snippet("from cellserve_client import Client", model_dir, tmp_path)
    assert out.returncode == 0, out.stderr
    first, completion = out.stdout.splitlines()
    assert first.startswith("8 (("), first
    assert len(completion) <= 16


def test_suggest_snippet_runs(model_dir: Path, tmp_path: Path) -> None:
    out = run_snippet("# ranked suggestions", model_dir, tmp_path)
    assert out.returncode == 0, out.stderr
    *ranked, line = out.stdout.splitlines()
    assert 1 <= len(ranked) <= 3 and all(re.fullmatch(r"'\w+' -\d+\.\d\d", r) for r in ranked), ranked
    logprobs = [float(r.rsplit(" ", 1)[1]) for r in ranked]
    assert logprobs == sorted(logprobs, reverse=True)
    assert line.startswith("[Suggestion(text="), line


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
