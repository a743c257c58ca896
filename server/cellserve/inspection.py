"""`cellserve inspect`: what the gates do on a piece of text.

For every character it reports, per layer, the mean forget gate (LSTM) or the mean update gate
z (GRU, PyTorch's convention: z near 1 keeps the old state, so it reads like a forget gate),
plus the model's most probable next characters. Optionally writes a PNG heatmap (matplotlib,
the ``plot`` extra): one column per character.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .nn.cells import run_with_gates
from .nn.checkpoint import LoadedModel


@dataclass
class CharGates:
    char: str
    keep: list[float]  # per layer: mean f (LSTM) or mean z (GRU)
    top: list[tuple[str, float]]  # next-character (char, probability), most probable first


def gate_name(cell: str) -> str:
    return "forget gate f" if cell == "lstm" else "update gate z"


@torch.no_grad()
def trace(loaded: LoadedModel, text: str, top_k: int = 3) -> list[CharGates]:
    model, vocab = loaded.model, loaded.vocab
    tokens = vocab.encode_tensor(text)[None]  # [1, T]
    logits, _, steps = run_with_gates(model, tokens)
    probs = logits[0].softmax(-1)  # [T, V]
    key = "f" if model.cell == "lstm" else "z"
    out = []
    for t, ch in enumerate(text):
        keep = steps[t].gates[key][:, 0].mean(-1).tolist()  # [L]
        p, i = probs[t].topk(min(top_k, probs.shape[-1]))
        out.append(
            CharGates(ch, keep, [(vocab.char(j), float(q)) for q, j in zip(p.tolist(), i.tolist(), strict=True)])
        )
    return out


def shown(ch: str) -> str:
    return {"\n": "\\n", "\t": "\\t", " ": "␣"}.get(ch, ch)


def format_table(rows: list[CharGates], cell: str) -> str:
    layers = len(rows[0].keep) if rows else 0
    head = (
        "char  "
        + "  ".join(f"L{k}" + (" f" if cell == "lstm" else " z") for k in range(layers))
        + "   next (probability)"
    )
    lines = [head]
    for r in rows:
        gates = "  ".join(f"{v:.2f}".rjust(4) for v in r.keep)
        nxt = "  ".join(f"{shown(c)!s} {p:.2f}" for c, p in r.top)
        lines.append(f"{shown(r.char):<4}  {gates}   {nxt}")
    return "\n".join(lines)


def write_heatmap(rows: list[CharGates], cell: str, model_name: str, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # an optional extra
        raise RuntimeError("the PNG heatmap needs matplotlib: pip install 'cellserve[plot]'") from e
    import numpy as np

    layers = len(rows[0].keep)
    keep = np.array([r.keep for r in rows]).T  # [L, T]
    top = np.array([[p for _, p in r.top] for r in rows]).T  # [k, T]
    width = max(6.0, 0.32 * len(rows) + 2)
    fig, (ax1, ax2) = plt.subplots(
        2,
        1,
        figsize=(width, 1.2 + 0.5 * (layers + len(top))),
        sharex=True,
        gridspec_kw={"height_ratios": [layers, len(top)]},
    )
    im1 = ax1.imshow(keep, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax1.set_yticks(range(layers), [f"layer {k}" for k in range(layers)])
    ax1.set_title(f"{model_name}: mean {gate_name(cell)} per layer (1 = keep state), and top next characters")
    fig.colorbar(im1, ax=ax1, fraction=0.02, pad=0.01)
    im2 = ax2.imshow(top, aspect="auto", cmap="magma", vmin=0, vmax=1)
    for t, r in enumerate(rows):
        for k, (c, _) in enumerate(r.top):
            ax2.text(
                t, k, shown(c), ha="center", va="center", fontsize=7, color="white" if top[k, t] < 0.6 else "black"
            )
    ax2.set_yticks(range(len(top)), [f"top {k + 1}" for k in range(len(top))])
    ax2.set_xticks(range(len(rows)), [shown(r.char) for r in rows], fontsize=8)
    fig.colorbar(im2, ax=ax2, fraction=0.02, pad=0.01, label="probability")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
