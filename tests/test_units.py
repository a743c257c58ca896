"""Units that track the text (``cellserve.units``): the features, the correlation, the search
(checked against numpy's own correlation on the same states), the stored file and the command,
the traces against the model's own recurrent module, and the served traces (InspectGates, both
server shapes) equal to the offline ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cellserve.cli import main
from cellserve.nn.checkpoint import load_model
from cellserve.units import (
    FEATURES,
    UNITS_FILE,
    correlations,
    find_units,
    read_units,
    states_along,
    text_features,
    unit_traces,
)
from cellserve_client import Client
from servers import start_server

SAMPLE = (
    'def f(x, y):\n    """Doc (string)."""\n    s = "a (b) # c"  # a comment (here)\n'
    "    if x:\n        return [x, (y,\n                2)]\n    return {'k': s}\n"
) * 12


def test_text_features_by_hand() -> None:
    t = 'f(a, "x#y") # c (\n  [1,\n\t2]\n'
    f = text_features(t).values
    row = {k: "".join(str(int(v))[-1] for v in f[k]) for k in FEATURES}
    assert t.replace("\n", "|").replace("\t", ">") == 'f(a, "x#y") # c (|  [1,|>2]|'
    assert row["in_string"] == "0000011111" + "0" * 18  # the quotes belong to the string
    assert row["in_comment"] == "0" * 12 + "11111" + "0" * 11  # to the end of the line
    assert row["bracket_depth"] == "0" + "1" * 9 + "0" * 10 + "1" * 6 + "00"  # not in strings or comments
    assert row["indent"] == "0" * 18 + "12222" + "0" + "111" + "0"
    assert row["column"] == "12345678901234567" + "0" + "12345" + "0" + "123" + "0"


def test_triple_quotes_and_escapes() -> None:
    t = "x = '''a\n'b'\n''' + \"q\\\"r\"\n"
    s = "".join(str(int(v)) for v in text_features(t).values["in_string"])
    assert s == "0000" + "1" * 12 + "000" + "1" * 6 + "0"  # a newline inside ''' stays in it; \\" does not close


def test_correlations_equal_numpy() -> None:
    rng = np.random.default_rng(0)
    states = rng.normal(size=(200, 2, 5)).astype(np.float32)
    feature = rng.normal(size=200).astype(np.float32)
    states[:, 1, 3] = 2 * feature + 0.1  # a perfect tracker
    states[:, 0, 0] = 1.0  # constant: no correlation, not NaN
    r = correlations(states, feature)
    want = [np.corrcoef(states[:, layer, unit], feature)[0, 1] for layer in range(2) for unit in range(1, 5)]
    got = [r[layer, unit] for layer in range(2) for unit in range(1, 5)]
    assert np.allclose(got, want, atol=1e-6)
    assert r[1, 3] == pytest.approx(1.0) and r[0, 0] == 0.0


@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-gru"])
def test_states_along_equal_the_models_own_run(model_dir: Path, name: str) -> None:
    loaded = load_model(model_dir / name)
    states = states_along(loaded, SAMPLE[:160], streams=4)  # 4 streams of 40 characters
    ids = loaded.vocab.encode_tensor(SAMPLE[40:80])[None]
    with torch.no_grad():
        _, state = loaded.model(ids)
    which = 1 if loaded.spec.cell == "lstm" else 0
    assert np.allclose(states[79], state[which][:, 0].numpy(), atol=1e-5)  # stream 1's last character


def test_find_units_picks_the_strongest_correlations(model_dir: Path) -> None:
    loaded = load_model(model_dir / "tiny-lstm")
    found = find_units(loaded, SAMPLE, streams=4)
    assert {u.feature for u in found} == set(FEATURES) and len({(u.layer, u.unit) for u in found}) == len(found)
    assert [abs(u.correlation) for u in found] == sorted((abs(u.correlation) for u in found), reverse=True)
    states = states_along(loaded, SAMPLE, streams=4)
    per = len(states) // 4
    feats = {
        k: np.concatenate([text_features(SAMPLE[s * per : (s + 1) * per]).values[k] for s in range(4)])
        for k in FEATURES
    }
    best_overall = max(np.abs(correlations(states, f)).max() for f in feats.values())
    assert abs(found[0].correlation) == pytest.approx(best_overall, abs=1e-6)  # the first pick is unconstrained
    for u in found:
        want = np.corrcoef(states[:, u.layer, u.unit], feats[u.feature])[0, 1]
        assert u.correlation == pytest.approx(want, abs=1e-5)


@pytest.fixture(scope="module")
def units_models(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the test models, with units.json written by the command for tiny-lstm."""
    d = tmp_path_factory.mktemp("units-models")
    for name in ("tiny-lstm", "tiny-gru"):
        shutil.copytree(model_dir / name, d / name)
    corpus = d / "corpus.py"
    corpus.write_text(SAMPLE)
    argv = ["units", "--model-dir", str(d), "--model", "tiny-lstm", "--corpus", str(corpus), "--chars", "1000"]
    assert main(argv) == 0
    return d


def test_the_command_writes_the_file_and_the_model_reads_it(units_models: Path) -> None:
    doc = json.loads((units_models / "tiny-lstm" / UNITS_FILE).read_text())
    loaded = load_model(units_models / "tiny-lstm")
    assert doc["weights_sha256"] == loaded.weights_sha256 and doc["state"] == "c" and doc["sample_chars"] == 1000
    assert doc["command"].startswith("cellserve units ") and doc["git_commit"] and doc["created"].endswith("UTC")
    units = read_units(loaded)
    assert [u.model_dump() for u in units] == doc["units"]
    assert read_units(load_model(units_models / "tiny-gru")) == ()  # none written for it
    other = units_models / "other"
    shutil.copytree(units_models / "tiny-gru", other)
    shutil.copy(units_models / "tiny-lstm" / UNITS_FILE, other / UNITS_FILE)
    assert read_units(load_model(other)) == ()  # the file belongs to other weights
    (other / UNITS_FILE).write_text("{not json")
    assert read_units(load_model(other)) == ()  # a broken file: no traces, no failure
    shutil.rmtree(other)


def test_unit_traces_equal_the_states_along_the_text(units_models: Path) -> None:
    loaded = load_model(units_models / "tiny-lstm")
    units = read_units(loaded)
    text = SAMPLE[:50]
    states = states_along(loaded, text, streams=1)
    traces = unit_traces(loaded, text, 20, units)
    for u, values in zip(units, traces, strict=True):
        assert np.allclose(values, states[20:, u.layer, u.unit], atol=1e-5)


@pytest.mark.parametrize("frontends", ["0", "2"])
def test_served_traces_equal_the_offline_ones(units_models: Path, frontends: str) -> None:
    loaded = load_model(units_models / "tiny-lstm")
    units = read_units(loaded)
    text = SAMPLE[:90]
    want = unit_traces(loaded, text, 60, units)
    server = start_server(units_models, "--frontends", frontends)
    try:
        with Client(server.target) as c:
            r = c.inspect_gates(text, model="tiny-lstm", last_chars=30)
            g = c.inspect_gates(text, model="tiny-gru", last_chars=30)
    finally:
        server.terminate()
    assert [(t.layer, t.unit, t.feature, t.label) for t in r.tracked] == [
        (u.layer, u.unit, u.feature, u.label) for u in units
    ]
    for t, u, values in zip(r.tracked, units, want, strict=True):
        assert t.correlation == pytest.approx(u.correlation, abs=1e-6)
        assert np.allclose(t.values, values, atol=1e-5) and len(t.values) == 30
    assert g.tracked == ()  # a model without units.json has none


def test_inspect_prints_the_tracked_units(
    units_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "g.png"
    assert (
        main(["inspect", "--model-dir", str(units_models), "--model", "tiny-lstm", "def f(x):", "--png", str(png)]) == 0
    )
    out = capsys.readouterr().out
    assert "units that track the text" in out and "bracket depth" in out and png.stat().st_size > 0
