"""The load generator's ``sequences`` workload (what benchmarks/compare_perf_analyzer.py runs
beside perf_analyzer): perf_analyzer's sequences, on the KServe and the native surface."""

from __future__ import annotations

import pytest
from cellserve.bench.loadgen import Workload, run_load
from servers import ServerProcess

from .conftest import MODEL, tg

TEXT = "for name in sorted(os.listdir(path)):"


def _answered(triton: tg.InferenceServerClient) -> tuple[int, int]:
    (s,) = triton.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    stats = s.get("inference_stats", {})
    return int(stats.get("success", {}).get("count", 0)), int(stats.get("fail", {}).get("count", 0))


@pytest.mark.parametrize("surface", ["kserve", "native"])
def test_sequences_of_keystrokes_run_without_errors(
    kserver: ServerProcess, surface: str, request: pytest.FixtureRequest
) -> None:
    triton = tg.InferenceServerClient(kserver.target)
    before = _answered(triton)
    w = Workload(
        kind="sequences",
        sessions=2,
        warmup_s=0.2,
        window_s=1.0,
        model=MODEL,
        surface=surface,
        sequence_length=5,
        sequence_text=TEXT[:5],
    )
    report = run_load(kserver.target, w, workers=1)
    after = _answered(triton)
    triton.close()
    assert report["errors"] == 0, report["error_samples"]
    assert report["requests"] > 0 and report["latency_ms"]["p50"] > 0
    if request.node.callspec.params["kserver"] != "one-process":
        # Request counters are each frontend's own (docs/design-notes.md): the generator's
        # connections and this client's may land on different frontends. Failures would show
        # on whichever counted them; none may appear on this one.
        assert after[1] == before[1]
    elif surface == "kserve":
        # every request the generator counted was answered (and counted) by the KServe front;
        # sequences finished after the window are counted there as well, never as failures
        assert after[0] - before[0] >= report["requests"] and after[1] == before[1]
    else:
        assert after == before  # the native surface is not counted as KServe requests
