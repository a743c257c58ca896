"""perf_analyzer (Triton's load tool) drives a cellserve model as a sequence model over
streams, through benchmarks/perf_analyzer.sh, without a failed request. A functional check
with a short window; no figure is asserted. Skips where perf_analyzer cannot be installed."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
from servers import ServerProcess

from .conftest import MODEL, tg

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "perf_analyzer.sh"
PA_VENV = Path(os.environ.get("PA_VENV", Path.home() / ".cache" / "cellserve-perf-analyzer"))


def test_perf_analyzer_streams_sequences(
    kserver: ServerProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.params["kserver"] != "one-process":
        # perf_analyzer reads ModelStatistics on its own connection: request counters are each
        # frontend's own (docs/design-notes.md), so its before/after may be another frontend's.
        request.applymarker(pytest.mark.xfail(reason="per-frontend request counters", strict=False))
    if not (PA_VENV / "bin" / "perf_analyzer").exists():
        pytest.skip(f"perf_analyzer is not installed in {PA_VENV} (benchmarks/perf_analyzer.sh --setup-only)")
    client = tg.InferenceServerClient(kserver.target)
    (before,) = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    out = subprocess.run(
        [str(SCRIPT), "--target", kserver.target, "--model", MODEL, "--", "--measurement-interval", "1000"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = out.stdout.split("results.csv\n", 1)[1].splitlines()
    (row,) = list(csv.DictReader(table))
    assert row["Concurrency"] == "1" and float(row["Inferences/Second"]) > 0
    (after,) = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    fails = [int(s.get("inference_stats", {}).get("fail", {}).get("count", 0)) for s in (before, after)]
    assert int(after.get("inference_count", 0)) > int(before.get("inference_count", 0))
    assert fails[0] == fails[1], "perf_analyzer's requests failed on the server"
    client.close()
