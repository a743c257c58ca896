"""Keystroke-savings simulation, the trie baseline, and the eval / inspect commands."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from cellserve.cli import main
from cellserve.evaluation import MAX_WORD, WordTrie, evaluate_model, offer_positions, simulate, simulate_top
from cellserve.inspection import trace
from cellserve.nn.along import StatesAlong
from cellserve.nn.checkpoint import LoadedModel, load_model
from cellserve.nn.decode import beam_search, complete, is_word_char


def test_offer_positions_are_inside_words() -> None:
    text = "ab c_d(x)"
    assert offer_positions(text) == [1, 4, 5]  # b, _ and d; never a word's first character


def test_simulate_accepts_only_exact_rest() -> None:
    text = "print(value)"
    # at p=1 the offer "rint" equals the rest of "print": 4 chars for 1 Tab saves 3
    assert simulate(text, {1: "rint"}) == 3
    assert simulate(text, {1: "rin"}) == 0  # too short: typed by hand
    assert simulate(text, {1: "rints"}) == 0  # too long
    # rejected at 1, accepted at 2 ("int"): saves 2; later offers inside "value" still count
    assert simulate(text, {1: "x", 2: "int", 7: "alue"}) == 2 + 3


def test_trie_offers_most_frequent_word() -> None:
    trie = WordTrie(Counter({"return": 10, "result": 3, "re": 50}))
    assert trie.complete("r") == "e"  # "re" is the most frequent word starting with "r"
    assert trie.complete("res") == "ult"
    assert trie.complete("ret") == "urn"
    assert trie.complete("zz") == ""
    assert WordTrie.from_text("foo(bar, foo) foo").complete("f") == "oo"


@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-gru"])
def test_states_along_equal_stepwise_states(model_dir: Path, name: str) -> None:
    lm = load_model(model_dir / name)
    text = "def f(x):\n    return x + 1\n"
    ids = lm.vocab.encode_tensor(text)
    runner = StatesAlong(lm.model)
    first = runner.run(ids[:11], lm.model.init_state(1))
    second = runner.run(ids[11:], first.final)  # continues from the carried state
    state = lm.model.init_state(1)
    with torch.no_grad():
        for t in range(len(text)):
            logits, state = lm.model(ids[t : t + 1][None], state)
            along, i = (first, t) if t < 11 else (second, t - 11)
            for got, want in zip(along.at(torch.tensor([i])), state, strict=True):
                torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(along.logits[i], logits[0, -1], atol=2e-5, rtol=1e-4)


def naive_word_greedy(lm: LoadedModel, context: str) -> str:
    out = complete(lm.model, lm.vocab, context, max_chars=MAX_WORD)[0]
    end = next((i for i, ch in enumerate(out) if not is_word_char(ch)), len(out))
    return out[:end]


SAMPLE = "import os\n\ndef main(argv):\n    return os.path.join(argv, argv)\n"


@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-gru"])
def test_keystroke_savings_equal_naive_simulation(model_dir: Path, name: str) -> None:
    """The batched evaluation equals typing the text position by position with the reference
    decoders: greedy and top-3 beam offers from full forwards of each prefix."""
    lm = load_model(model_dir / name)
    # a model trained on nothing rarely completes a word: make it right sometimes by
    # evaluating a text made of what its greedy decoding produces
    text = SAMPLE + "x" + complete(lm.model, lm.vocab, SAMPLE + "x", max_chars=40)[0] + "\n"
    got = evaluate_model(lm, text, top_n=3, width=4, piece=16)  # many pieces: the state carries over
    offers = {p: naive_word_greedy(lm, text[:p]) for p in offer_positions(text)}
    assert got.greedy == simulate(text, offers)
    saved = simulate_top(
        text,
        offers,
        lambda p: [s.text for s in beam_search(lm.model, lm.vocab, text[:p], n=3, width=4, max_chars=MAX_WORD)],
    )
    assert got.top == saved
    assert got.greedy > 0 or got.top > 0  # the constructed text gives the model something to get right


def test_eval_command(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "sample.py"
    f.write_text("import os\n\ndef main():\n    print(os.getcwd())\n" * 3)
    out_json = tmp_path / "report.json"
    argv = ["eval", "--model-dir", str(model_dir), "--model", "tiny-lstm", "--model", "tiny-gru", str(f)]
    argv += ["--baseline-corpus", str(f), "--json", str(out_json), "--no-progress"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "tiny-lstm" in table and "tiny-gru" in table and "bzip2 -9" in table
    report = json.loads(out_json.read_text())
    rows = report["rows"]
    assert [(r["part"], r["model"]) for r in rows] == [("sample.py", "tiny-lstm"), ("sample.py", "tiny-gru")]
    for r in rows:
        assert r["chars"] == len(f.read_text())
        assert r["bits_per_char"] > 1.0  # random weights know nothing
        assert r["saved_trie"] > 0.2  # the trie was built from the same text
        assert 0 < r["bzip2_bits_per_char"] < 8 and 0 < r["xz_bits_per_char"] < 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--model", "tiny-lstm", "missing.py", "--baseline-corpus", "missing.py"], "does not exist"),
        (["eval", "x.py"], "not valid JSON"),  # the default model is chosen among all folders
        (["eval", "--model", "nope", "x.py"], "no model 'nope'"),
        (["inspect", "--model", "broken", "abc"], "model.json"),
        (["inspect", "--model", "tiny-gru", "abc", "--png", "no/such/folder/gates.png"], "cannot write"),
    ],
)
def test_commands_fail_in_one_line(model_dir: Path, tmp_path: Path, argv: list[str], message: str) -> None:
    """A missing file, a missing or broken model folder, an unwritable PNG: one line, no traceback."""
    broken = tmp_path / "models"
    shutil.copytree(model_dir, broken)
    (broken / "broken").mkdir()
    (broken / "broken" / "model.json").write_text("{not json")
    argv = [a.replace("no/such", str(tmp_path / "no/such")) for a in argv]
    with pytest.raises(SystemExit) as e:
        main([*argv[:1], "--model-dir", str(broken), *argv[1:]])
    msg = str(e.value.code)
    assert message in msg and "\n" not in msg and "Traceback" not in msg, msg
    assert msg.startswith(f"cellserve {argv[0]}: ")


def test_inspect_command_and_png(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "gates.png"
    assert main(["inspect", "--model-dir", str(model_dir), "def f(x):", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "tiny-lstm" in out  # the default: lowest bits/char
    lines = out.strip().splitlines()
    assert lines[1].split()[:7] == ["char", "L0", "f", "L0", "i", "L0", "o"]  # every gate, not f alone
    # header lines, one per char, a blank line, the legend (f, i, o), "wrote"
    assert len(lines) == 2 + len("def f(x):") + 1 + 3 + 1
    assert any(line.startswith("f  forget gate: near 0 the cell forgets") for line in lines)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("name", "gates"), [("tiny-lstm", 6), ("tiny-gru", 4)])
def test_heatmap_shows_every_gate_and_a_whole_title_for_short_text(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, gates: int
) -> None:
    """Two characters: the figure is narrow, yet the title lies inside it; one row per layer and gate."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from cellserve.inspection import write_heatmap

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to measure it
    loaded = load_model(model_dir / name)
    write_heatmap(trace(loaded, "ab"), loaded.spec.cell, name, tmp_path / "g.png")
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    box = fig.bbox
    assert box.x0 <= title.x0 and title.x1 <= box.x1 and title.y1 <= box.y1
    assert len(fig.axes[0].get_yticklabels()) == gates  # [L0 f, L0 i, L0 o, L1 ...] or [L0 r, L0 z, ...]


@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-gru"])
def test_trace_gates_are_probabilities(model_dir: Path, name: str) -> None:
    rows = trace(load_model(model_dir / name), "x = 1\n", top_k=4)
    assert [r.char for r in rows] == list("x = 1\n")
    for r in rows:
        assert len(r.layers) == 2
        assert all(0.0 < g.mean < 1.0 for layer in r.layers for g in layer)
        probs = [p for _, p in r.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_eval_says_what_it_does_and_times_the_whole_command(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each slow step before the first progress bar is announced on stderr, and the reported
    time counts from the command's start (a slow model load counts)."""
    import time

    import cellserve.cli as cli

    f = tmp_path / "sample.py"
    f.write_text("import os\n" * 5)
    slow_load = cli._load_models

    def load(*args: object) -> object:
        time.sleep(1.5)
        return slow_load(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "_load_models", load)
    out_json = tmp_path / "report.json"
    argv = ["eval", "--model-dir", str(model_dir), "--model", "tiny-lstm", str(f), "--baseline-corpus", str(f)]
    assert main([*argv, "--json", str(out_json)]) == 0
    err = capsys.readouterr().err
    assert "eval: loading the models (0 s)" in err and "eval: building the trie baseline" in err
    assert json.loads(out_json.read_text())["seconds"] >= 1.5
    assert main([*argv, "--no-progress"]) == 0
    assert "eval:" not in capsys.readouterr().err
