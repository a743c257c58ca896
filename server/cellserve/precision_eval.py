"""`cellserve eval --precision`: held-out bits/char of each serving precision beside fp32.

Each precision's serving module (``cellserve.nn.precision.convert``: what the server steps)
reads every part from the zero state in pieces of ``PIECE`` characters, the state carried
between pieces, and fp32 reads the same text the same way, so the two differ only by the
precision. The result per model is a ``PrecisionQuality`` (per package: bits/char at the
precision and at fp32); ``record`` writes it into the model's model.json, where ``auto``
reads it (``precision_max_loss``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .nn import precision as prec
from .nn.charlm import CharLM
from .nn.checkpoint import LoadedModel
from .nn.spec import SPEC_FILE, PackageLoss, PrecisionQuality

PIECE = 8192  # characters per forward call


@torch.inference_mode()
def bits_per_char(model: CharLM, ids: torch.Tensor, piece: int = PIECE) -> float:
    """Mean bits/char predicting ids[1:] from the zero state; ids [T] int64 (T >= 2)."""
    state = model.init_state(1)
    ids = ids.to(model.device)
    nats, scored = 0.0, 0
    for a in range(0, ids.numel() - 1, piece):
        x = ids[a : a + piece]
        logits, state = model(x[None], state)  # [1, T, V]
        targets = ids[a + 1 : a + 1 + x.numel()]
        nats += F.cross_entropy(logits[0, : targets.numel()].float(), targets, reduction="sum").item()
        scored += targets.numel()
    return nats / max(scored, 1) / math.log(2.0)


def default_precisions(device: torch.device) -> list[str]:
    """The reduced precisions ``auto`` may choose on ``device`` (CPU: int8; CUDA: fp16, bf16)."""
    can = prec.available(device)
    return ["int8"] if device.type == "cpu" else [p for p in ("fp16", "bf16") if p in can]


def measure(
    loaded: LoadedModel, parts: dict[str, str], precisions: Sequence[str], device: torch.device
) -> list[PrecisionQuality]:
    """One ``PrecisionQuality`` per precision for ``loaded`` (its fp32 model on ``device``)."""
    model = loaded.model.to(device)
    ids = {name: loaded.vocab.encode_tensor(text) for name, text in parts.items() if len(text) >= 2}
    fp32 = {name: bits_per_char(model, t) for name, t in ids.items()}
    where = "cpu" if device.type == "cpu" else f"{device.type} ({torch.cuda.get_device_name(device)})"
    out = []
    for p in precisions:
        served = prec.convert(model, prec.resolve(p, device, None, 0.0))  # type: ignore[arg-type]
        scores = [PackageLoss(package=n, chars=len(parts[n]), bits_per_char=round(bits_per_char(served, t), 5),
                              fp32_bits_per_char=round(fp32[n], 5)) for n, t in ids.items()]  # fmt: skip
        out.append(PrecisionQuality(precision=p, device=where, heldout=scores))  # type: ignore[arg-type]
    return out


def record(folder: Path, loaded: LoadedModel, measured: Sequence[PrecisionQuality]) -> None:
    """Writes ``measured`` into folder/model.json, replacing earlier entries of the same
    precisions (the weights file is not touched, so its hash and snapshots stay valid)."""
    spec = loaded.spec
    if spec.quality is None:
        raise ValueError(f"{folder / SPEC_FILE} has no quality section to add precisions to (train or evaluate it)")
    names = {q.precision for q in measured}
    kept = [q for q in spec.quality.precisions if q.precision not in names]
    quality = spec.quality.model_copy(update={"precisions": sorted([*kept, *measured], key=lambda q: q.precision)})
    new = spec.model_copy(update={"quality": quality})
    path = folder / SPEC_FILE
    path.write_text(json.dumps(new.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    loaded.spec = new


def table(rows: Sequence[tuple[str, PrecisionQuality]]) -> str:
    """model, precision, package, chars, bits/char, fp32, relative loss: one line per package."""
    head = ("model", "precision", "package", "chars", "bits/char", "fp32", "loss")
    lines = [head]
    for model, q in rows:
        for p in q.heldout:
            lines.append((model, q.precision, p.package, f"{p.chars:,}", f"{p.bits_per_char:.4f}",
                          f"{p.fp32_bits_per_char:.4f}", f"{p.relative_loss:+.3%}"))  # fmt: skip
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
           for r in lines]  # fmt: skip
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
