"""What the gates do on a piece of text: `cellserve inspect` and the InspectGates call.

For every character it reports, per layer, each gate's mean over the hidden units (the LSTM's
forget, input and output gates f, i, o; the GRU's reset and update gates r, z), the units whose
gate value changed most since the previous character, and the model's most probable next
characters. The gates come from the reference cells (``nn.cells``), which equal nn.LSTM/nn.GRU.

PyTorch's convention (see ``nn.cells``): an LSTM forget gate near 0 erases the cell's previous
content, near 1 keeps it; a GRU update gate z near 1 keeps the previous state (like f near 1),
near 0 replaces it with the new candidate; a reset gate r near 0 ignores the previous state when
forming that candidate.

Optionally writes a PNG heatmap (matplotlib, the ``plot`` extra): one column per character, one
row per layer and gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .gate_report import CharGates, GateSummary, UnitGate
from .nn.cells import run_with_gates
from .nn.checkpoint import LoadedModel

if TYPE_CHECKING:
    from .units import TrackedUnitSpec

SHOWN_GATES = {"lstm": ("f", "i", "o"), "gru": ("r", "z")}  # the gates proper: no candidates, no cell
GATE_MEANINGS = {
    "f": "forget gate: near 0 the cell forgets its previous content, near 1 it keeps it",
    "i": "input gate: near 1 the new candidate is written into the cell",
    "o": "output gate: near 1 the cell's content is shown in the hidden state",
    "r": "reset gate: near 0 the previous state is ignored when forming the new candidate",
    "z": "update gate: near 1 the state keeps its previous value, near 0 it takes the new candidate",
}


@torch.no_grad()
def inspect_gates(
    loaded: LoadedModel, text: str, *, last_chars: int | None = None, top_units: int = 4, top_k: int = 5
) -> tuple[int, list[CharGates]]:
    """The gates of the last ``last_chars`` characters of ``text`` (all when None), read from the
    initial state. Returns the index of the first reported character and one entry per reported
    character. The characters before it only build up the state, through the model's own
    (fast) recurrent module; the reported ones, and the one before them (whose gates the first
    change is measured against), go through the reference cells."""
    model, vocab = loaded.model, loaded.vocab
    names = SHOWN_GATES[model.cell]
    n = len(text) if last_chars is None else min(last_chars, len(text))
    start = len(text) - n
    ref_from = max(0, start - 1)  # one character of overlap: the previous gate values
    tokens = vocab.encode_tensor(text).to(model.head.weight.device)[None]  # [1, T]
    state = model(tokens[:, :ref_from])[1] if ref_from > 0 else None
    logits, _, steps = run_with_gates(model, tokens[:, ref_from:], state)
    probs = logits[0].softmax(-1)  # [T', V]
    k = min(top_k, probs.shape[-1])
    units = min(top_units, model.hidden)
    out = []
    prev: dict[str, torch.Tensor] | None = None
    for t, step in enumerate(steps):
        cur = {g: step.gates[g][:, 0] for g in names}  # each [L, H]
        if t + ref_from >= start:
            layers = tuple(
                tuple(_summary(g, cur[g][layer], None if prev is None else prev[g][layer], units) for g in names)
                for layer in range(model.layers)
            )
            p, i = probs[t].topk(k)
            top = tuple((vocab.char(j), q) for q, j in zip(p.tolist(), i.tolist(), strict=True))
            out.append(CharGates(text[ref_from + t], layers, top))
        prev = cur
    return start, out


def _summary(name: str, value: torch.Tensor, prev: torch.Tensor | None, k: int) -> GateSummary:
    """value, prev: [H] -> the mean and the k units that moved most (or are most decided)."""
    score = (value - 0.5).abs() if prev is None else (value - prev).abs()
    idx = score.topk(k).indices.tolist() if k else []
    vals = value.tolist()
    changes = None if prev is None else (value - prev).tolist()
    units = tuple(UnitGate(u, vals[u], None if changes is None else changes[u]) for u in idx)
    return GateSummary(name, float(value.mean()), units)


def trace(loaded: LoadedModel, text: str, top_k: int = 3) -> list[CharGates]:
    """Every character of ``text``: gate means and the top next characters (no unit detail)."""
    return inspect_gates(loaded, text, top_units=0, top_k=top_k)[1]


def shown(ch: str) -> str:
    return {"\n": "\\n", "\t": "\\t", " ": "␣"}.get(ch, ch)


def format_table(rows: list[CharGates], cell: str) -> str:
    names = SHOWN_GATES[cell]
    layers = len(rows[0].layers) if rows else 0
    cols = [f"L{k} {g}" for k in range(layers) for g in names]
    lines = ["char  " + "  ".join(c.rjust(4) for c in cols) + "   next (probability)"]
    for r in rows:
        gates = "  ".join(f"{r.mean(k, g):.2f}".rjust(4) for k in range(layers) for g in names)
        nxt = "  ".join(f"{shown(c)!s} {p:.2f}" for c, p in r.top)
        lines.append(f"{shown(r.char):<4}  {gates}   {nxt}")
    lines.append("")
    lines += [f"{g}  {GATE_MEANINGS[g]}" for g in names]
    return "\n".join(lines)


def write_heatmap(
    rows: list[CharGates],
    cell: str,
    model_name: str,
    path: Path,
    tracked: Sequence[tuple[TrackedUnitSpec, list[float]]] = (),
) -> None:
    """Gate means (one row per layer and gate), then the tracked units' states (one row each,
    scaled to the unit's largest value along the text, red positive, blue negative), then the
    top next characters; one column per character."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # an optional extra
        raise RuntimeError("the PNG heatmap needs matplotlib: pip install 'cellserve[plot]'") from e
    import numpy as np

    names = SHOWN_GATES[cell]
    layers = len(rows[0].layers)
    labels = [f"L{k} {g}" for k in range(layers) for g in names]
    gates = np.array([[r.mean(k, g) for k in range(layers) for g in names] for r in rows]).T  # [L*G, T]
    top = np.array([[p for _, p in r.top] for r in rows]).T  # [k, T]
    # Wide enough for the columns and for the two title lines (the title never gets clipped).
    width = max(7.0, 0.32 * len(rows) + 3.5)
    panels = [len(labels)] + ([len(tracked)] if tracked else []) + [len(top)]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(width, 1.8 + 0.32 * sum(panels) + 0.2 * len(panels)),
        sharex=True,
        gridspec_kw={"height_ratios": panels},
    )
    ax1, ax2 = axes[0], axes[-1]
    im1 = ax1.imshow(gates, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax1.set_yticks(range(len(labels)), labels, fontsize=8)
    keep = "forget f" if cell == "lstm" else "update z"
    fig.suptitle(
        f"{model_name}: mean gate per layer (PyTorch convention: {keep} near 1 keeps the state),\n"
        + ("units whose state tracks the text, " if tracked else "")
        + "and the top next characters",
        fontsize=9,
        wrap=True,
    )
    fig.colorbar(im1, ax=ax1, fraction=0.02, pad=0.01)
    if tracked:
        values = np.array([v for _, v in tracked], dtype=np.float64)  # [U, T]
        scale = np.maximum(np.abs(values).max(axis=1, keepdims=True), 1e-6)
        im3 = axes[1].imshow(values / scale, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
        unit_labels = [f"L{u.layer} #{u.unit} {u.label} (r={u.correlation:+.2f})" for u, _ in tracked]
        axes[1].set_yticks(range(len(tracked)), unit_labels, fontsize=8)
        fig.colorbar(im3, ax=axes[1], fraction=0.02, pad=0.01, label="state / max")
    im2 = ax2.imshow(top, aspect="auto", cmap="magma", vmin=0, vmax=1)
    for t, r in enumerate(rows):
        for k, (c, _) in enumerate(r.top):
            ax2.text(
                t, k, shown(c), ha="center", va="center", fontsize=7, color="white" if top[k, t] < 0.6 else "black"
            )
    ax2.set_yticks(range(len(top)), [f"top {k + 1}" for k in range(len(top))], fontsize=8)
    ax2.set_xticks(range(len(rows)), [shown(r.char) for r in rows], fontsize=8)
    fig.colorbar(im2, ax=ax2, fraction=0.02, pad=0.01, label="probability")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
