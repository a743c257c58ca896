"""The generated code in cellserve_client is current with proto/, lint-clean, and torch-free."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "client" / "cellserve_client" / "_proto"


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)], check=True)
    fresh, committed = _tree(out), _tree(COMMITTED)
    assert fresh == committed, f"file sets differ: run `python scripts/gen_proto.py` ({fresh ^ committed})"
    stale = [f for f in sorted(fresh) if not filecmp.cmp(out / f, COMMITTED / f, shallow=False)]
    assert not stale, f"stale generated files {stale}: run `python scripts/gen_proto.py`"


def test_generated_imports_point_at_the_private_package() -> None:
    for f in _tree(COMMITTED):
        text = (COMMITTED / f).read_text(encoding="utf-8")
        assert "from cellserve.v1" not in text and "import cellserve.v1" not in text, f


def test_generated_code_imports_without_torch_or_the_server() -> None:
    code = (
        "import sys\n"
        "from cellserve_client._proto.cellserve.v1 import service_pb2, service_pb2_grpc\n"
        "assert service_pb2.DESCRIPTOR.services_by_name['CellserveService']\n"
        "bad = [m for m in ('torch', 'cellserve') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "client")


def test_buf_lint_clean() -> None:
    buf = shutil.which("buf")
    if buf is None:
        pytest.skip("buf is not installed (npm i -g @bufbuild/buf)")
    result = subprocess.run([buf, "lint"], check=False, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
