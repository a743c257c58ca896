"""The README's tritonclient example runs, as printed, against a real server."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from servers import ServerProcess

from .conftest import MODEL

README = Path(__file__).resolve().parents[2] / "README.md"


def test_tritonclient_example_runs(kserver: ServerProcess, tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "tritonclient.grpc" in b)
    script = tmp_path / "triton_example.py"
    script.write_text(example.replace("127.0.0.1:50051", kserver.target).replace('"python-lstm"', f'"{MODEL}"'))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [int(line.split()[0]) for line in lines[:3]] == [4, 8, 11]  # positions after each piece
    assert len(ast.literal_eval(lines[3])) == 16  # the completion
