"""CI smoke test of `cellserve bench --quick`: it runs end to end and writes its results.

Never a timing threshold: CI machines are shared and noisy. What is asserted is that every
peer answered in every workload without errors, and that the report files exist and agree.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

QUICK_BUDGET_S = 240  # the quick mode targets < 2 minutes; this only bounds a hang


@pytest.mark.slow
@pytest.mark.timeout(QUICK_BUDGET_S + 30)
def test_bench_quick_runs_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        # the multi-process workload has a smoke test of its own (below)
        [sys.executable, "-m", "cellserve.cli", "bench", "--quick", "--model", "random", "--out", str(out)]
        + ["--skip", "scaling"],
        capture_output=True,
        text=True,
        timeout=QUICK_BUDGET_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    res = json.loads((out / "results.json").read_text())
    sessions = res["meta"]["config"]["sessions"]
    for peer in ("cellserve", "naive", "echo"):
        closed = res["keystrokes_closed"][peer]
        assert sorted(int(n) for n in closed) == sorted(sessions)
        for r in closed.values():
            assert r["requests"] > 0 and r["errors"] == 0, (peer, r["error_samples"])
            assert {"p50", "p90", "p99", "p99.9"} <= set(r["latency_ms"])
            assert r["server_cpu_ms_per_request"] is not None and r["client_cpu_ms_per_request"] is not None
        assert res["keystrokes_open"][peer]["requests"] > 0
        assert all(r["chars_per_s"] > 0 and r["errors"] == 0 for r in res["completions"][peer].values())
    assert set(res["ceiling"]["keystrokes"]) == {str(n) for n in sessions}
    assert all(c["throughput_rps"] > 0 for c in res["ceiling"]["keystrokes"].values())
    mem = res["memory"]["points"]
    assert mem and all(p["open_failures"] == 0 and p["raw_state_bytes"] == 2 * 512 * 2 * 4 for p in mem)
    assert {t["target"].split(" at ")[0] for t in res["targets"]} >= {"throughput vs echo", "throughput vs naive"}
    hol = res["head_of_line"]  # the flood was answered in full while the bystander typed
    assert hol["flood"]["errors"] == 0 and hol["bystander"]["errors"] == 0 and hol["bystander"]["keystrokes"] > 0
    assert {"p99", "max"} <= set(hol["bystander"]["latency_ms"])
    assert any(t["target"].startswith("head-of-line: bystander keystroke p99") for t in res["targets"])
    assert any(t["target"].startswith("server CPU efficiency") for t in res["targets"])
    pairs = res["efficiency_pairs"]  # one round of alternating windows at the top N (--quick)
    assert pairs["n"] == max(sessions) and len(pairs["rounds"]) == 1
    assert all(v is not None and v > 0 for v in pairs["rounds"][0].values())
    assert any("alternating echo/cellserve windows" in t["target"] for t in res["targets"])
    _assert_tenants(res)

    md = (out / "results.md").read_text()
    assert "cellserve bench --quick" in md and "| cellserve |" in md and "## Head-of-line" in md
    assert "## Tenants" in md and "## Efficiency in alternating windows" in md
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "throughput.png").stat().st_size > 0 and (out / "latency.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(QUICK_BUDGET_S + 30)
def test_bench_quick_scaling_alone(tmp_path: Path) -> None:
    """`--only scaling`: cellserve with 1 and 2 frontends and echo with 1 and 2 processes, CPU
    per keystroke by process kind, the prediction table; nothing else runs."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "cellserve.cli", "bench", "--quick", "--only", "scaling", "--model", "random"]
        + ["--out", str(out), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=QUICK_BUDGET_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["keystrokes_closed"] == {} and res["head_of_line"] is None and res["memory"] is None
    sc = res["scaling"]
    n = str(sc["sessions"][0])
    assert set(sc["runs"]) == {"cellserve-1f", "cellserve-2f", "echo-1p", "echo-2p"}
    for name, by_n in sc["runs"].items():
        r = by_n[n]
        assert r["requests"] > 0 and r["errors"] == 0 and r["sessions_starved"] == 0, (name, r["error_samples"])
        kinds = {"frontend", "core", "supervisor"} if name.startswith("cellserve") else {"echo"}
        assert set(r["cpu_ms_per_keystroke"]) == kinds
        assert all(v >= 0 for v in r["cpu_ms_per_keystroke"].values())
    cap = sc["core_capacity"]  # the core process alone, driven by the frontends' client
    assert cap["sessions"] == int(n) and cap["keystrokes"] > 0 and cap["cpu_ms_per_keystroke"] > 0
    assert cap["rows_per_step"] >= 1
    model = sc["model"]
    assert (
        model["frontend_ms"] > 0 and model["core_ms"] == cap["cpu_ms_per_keystroke"] and sc["ceiling_ms_per_row"][n] > 0
    )
    assert set(model["keystrokes_per_s"]) == {"2", "4", "8", "16"}
    targets = {t["target"].split(" at ")[0] for t in res["targets"]}
    assert {
        "frontend CPU per keystroke / echo CPU per message",
        "core CPU per keystroke / model ceiling per row",
        "core CPU per keystroke - model ceiling per row",
        "core process alone",
    } <= targets
    md = (out / "results.md").read_text()
    assert "## Multi-process" in md and "### Scaling model" in md and "cannot show scaling" in md


def _assert_tenants(res: dict[str, object]) -> None:
    ten = res["tenants"]  # both tenants authenticated with the tokens file; every keystroke answered
    assert isinstance(ten, dict)
    assert ten["keystrokes"]["alone"] > 0 and ten["keystrokes"]["loaded"] > 0
    assert ten["greedy_chars_per_s"] > 0 and ten["p99_ratio"] is not None
    assert any(t["target"].startswith("tenants: typist p99") for t in res["targets"])  # type: ignore[attr-defined]


@pytest.mark.timeout(QUICK_BUDGET_S + 30)
def test_bench_only_tenants_quick_runs(tmp_path: Path) -> None:
    """The two-tenant fairness workload alone (--only tenants): a server with a tokens file of
    two tenants, a greedy one pasting while the other types."""
    out = tmp_path / "results"
    res = _only("tenants", out)
    _assert_tenants(res)
    assert res["head_of_line"] is None and not res["keystrokes_closed"]  # nothing else ran
    assert "## Tenants" in (out / "results.md").read_text()


@pytest.mark.timeout(QUICK_BUDGET_S + 30)
def test_bench_only_speculation_quick_runs(tmp_path: Path) -> None:
    """The human-paced typist with speculation on and off (--only speculation), on the random
    model served at int8 (the precision that speculates): every keystroke is counted once on
    the server with it on, none on the server with it off."""
    out = tmp_path / "results"
    res = _only("speculation", out, {"CELLSERVE_PRECISION": "int8"})  # the servers inherit it
    sp = res["speculation"]
    keystrokes = sp["on"]["workload"]["keystrokes"]
    for text in ("python", "prose"):
        assert sum(sp["on"][text]["counts"].values()) == keystrokes
        assert sp["on"][text]["hit_rate"] is not None
        assert sp["off"][text]["hit_rate"] is None  # nothing counted: it never guessed
        assert sp["on"][text]["latency_ms"]["p50"] > 0
    assert set(sp["on"]["closed"]) == set(sp["off"]["closed"]) == {"1", "16"}
    assert all(r["errors"] == 0 for mode in ("on", "off") for r in sp[mode]["closed"].values())
    assert any(t["target"].startswith("speculation hit rate") for t in res["targets"])
    assert any(t["target"].startswith("throughput at N=16, speculation on / off") for t in res["targets"])
    assert "## Speculation" in (out / "results.md").read_text()


def _only(workload: str, out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`cellserve bench --quick --only <workload>` on the random model; its results.json."""
    proc = subprocess.run(
        [sys.executable, "-m", "cellserve.cli", "bench", "--quick", "--only", workload, "--model", "random"]
        + ["--no-plots", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=QUICK_BUDGET_S,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res: dict[str, Any] = json.loads((out / "results.json").read_text())
    return res
