"""Keystroke-savings simulation, the trie baseline, and the eval / inspect commands."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from cellserve.cli import main
from cellserve.evaluation import WordTrie, model_offers, offer_positions, simulate
from cellserve.inspection import trace
from cellserve.nn.checkpoint import load_model


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


def test_model_offers_equal_naive_greedy(model_dir: Path) -> None:
    loaded = load_model(model_dir / "tiny-gru")
    text = "def handle_request(self, value):\n    return value"
    positions = offer_positions(text)
    offers = model_offers(loaded.model, loaded.vocab, text, positions, batch=7)
    for p in positions[::5]:
        ids = loaded.vocab.encode_tensor(text[:p])[None]
        out = ""
        with torch.no_grad():
            logits, state = loaded.model(ids)
            for _ in range(32):
                t = int(logits[0, -1].argmax())
                ch = loaded.vocab.chars[t]
                if t == 0 or not (ch == "_" or ch.isalnum()):
                    break
                out += ch
                logits, state = loaded.model(torch.tensor([[t]]), state)
        assert offers[p] == out, p


def test_eval_command(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "sample.py"
    f.write_text("import os\n\ndef main():\n    print(os.getcwd())\n" * 3)
    assert (
        main(
            [
                "eval",
                "--model-dir",
                str(model_dir),
                "--model",
                "tiny-lstm",
                str(f),
                "--baseline-corpus",
                str(f),
                "--json",
            ]
        )
        == 0
    )
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "tiny-lstm" and report["chars"] == len(f.read_text())
    assert report["bits_per_char"] > 1.0  # random weights know nothing
    assert report["baseline_keystrokes_saved"] > 0.2  # the trie was built from the same text


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
