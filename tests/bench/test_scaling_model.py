"""The scaling model's arithmetic (no servers): each bound takes over where it should."""

from __future__ import annotations

import pytest
from cellserve.bench.scaling import model, predict


def test_frontends_then_core_then_cores_bound_the_prediction() -> None:
    # f = 1 ms, k = 0.25 ms per keystroke
    assert predict(1.0, 0.25, 1, 16) == pytest.approx(1000)  # one frontend: 1 / f
    assert predict(1.0, 0.25, 2, 16) == pytest.approx(2000)  # two frontends: F / f
    assert predict(1.0, 0.25, 8, 16) == pytest.approx(4000)  # the core: 1 / k
    assert predict(1.0, 0.25, 4, 4) == pytest.approx(3200)  # the cores: C / (f + k)


def test_the_model_uses_the_two_frontend_run_at_the_largest_n() -> None:
    runs = {
        "cellserve-1f": {"256": {"cpu_ms_per_keystroke": {"frontend": 9.0, "core": 9.0}}},
        "cellserve-2f": {
            "16": {"cpu_ms_per_keystroke": {"frontend": 9.0, "core": 9.0}},
            "256": {"cpu_ms_per_keystroke": {"frontend": 1.0, "core": 0.25}},
        },
    }
    m = model(runs, [16, 256])
    assert m is not None and m["sessions"] == 256 and (m["frontend_ms"], m["core_ms"]) == (1.0, 0.25)
    assert m["keystrokes_per_s"]["2"] == {"1": pytest.approx(1000)}  # F + 1 <= C only
    assert m["keystrokes_per_s"]["16"]["8"] == pytest.approx(4000)
    assert model({}, [256]) is None


def test_layouts_are_named_by_peer_and_process_count() -> None:
    from cellserve.bench.scaling import layouts

    assert [x.name for x in layouts([1, 4, 8], [2])] == ["cellserve-1f", "cellserve-4f", "cellserve-8f", "echo-2p"]
    several = [x.name for x in layouts([2, 8], [], [1, 4])]
    assert several == ["cellserve-2f", "cellserve-8f", "cellserve-2f4c", "cellserve-8f4c"]


def test_the_core_at_capacity_is_the_models_core_figure_when_measured() -> None:
    """Where 1 / k binds the core is the bottleneck: the model takes k from the core alone at
    capacity (its batches full) when the run measured it, else from the frontends' run."""
    runs = {"cellserve-2f": {"256": {"cpu_ms_per_keystroke": {"frontend": 1.0, "core": 0.5}}}}
    m = model(runs, [256], {"sessions": 256, "cpu_ms_per_keystroke": 0.25})
    assert m is not None and m["core_ms"] == 0.25 and m["core_from"] == "the core alone at capacity"
    assert m["keystrokes_per_s"]["16"]["8"] == pytest.approx(4000)
    m = model(runs, [256], {"sessions": 256, "cpu_ms_per_keystroke": None})  # measured nothing
    assert m is not None and m["core_ms"] == 0.5 and m["core_from"] == "the core in the frontends' run"


def test_several_core_processes_lift_the_cores_bound() -> None:
    from cellserve.bench.scaling import fewest_cores

    assert predict(1.0, 0.25, 8, 16, 2) == pytest.approx(8000)  # two cores keep up with 8 frontends
    assert predict(1.0, 0.5, 8, 16, 2) == pytest.approx(4000)  # ... not when each costs half a frontend
    assert fewest_cores(1.0, 0.25, 8, 16) == 2
    assert fewest_cores(1.0, 0.5, 8, 16) == 4
    assert fewest_cores(1.0, 1.0, 8, 16) == 8
    assert fewest_cores(1.0, 1.0, 4, 6) == 2  # all the frontends leave, and still the bound
    runs = {"cellserve-2f": {"256": {"cpu_ms_per_keystroke": {"frontend": 1.0, "core": 0.5}}}}
    m = model(runs, [256], {"sessions": 256, "cpu_ms_per_keystroke": 0.5})
    assert m is not None
    assert m["with_cores"]["16"]["8"] == [pytest.approx(8000), 4]
    assert m["with_cores"]["4"]["2"] == [pytest.approx(2000), 1]  # min(2/f, 1/k, 4/1.5ms) with K=1
