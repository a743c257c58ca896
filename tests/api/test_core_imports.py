"""The engine core process imports nothing of the API layer and no grpc: it serves the
internal socket only (InspectGates included, on plain data)."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = (
    "cellserve.multiproc.processes",
    "cellserve.multiproc.core_server",
    "cellserve.multiproc.gate_thread",
    "cellserve.boot",
    "cellserve.engine.core",
    "cellserve.engine.loop",
    "cellserve.gate_report",
    "cellserve.metrics",
)


def test_the_core_process_imports_no_api_and_no_grpc() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {CORE_MODULES!r}: importlib.import_module(name)\n"
        "from cellserve.gate_report import run_query\n"
        "print(sorted(m for m in sys.modules if m.startswith('cellserve.api') or m.split('.')[0] == 'grpc'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
