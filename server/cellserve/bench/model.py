"""Which model the suite serves: a model folder, or a random-weight model of the default shape.

Speed does not depend on the weights, so before the shipped model exists the suite writes a
random-weight model of the default architecture (``cellserve train``'s defaults: 2-layer,
512-unit LSTM, 64-wide embedding, 192-entry vocabulary) into a temporary folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "python-lstm"
RANDOM = "random"


@dataclass(frozen=True)
class ModelRef:
    model_dir: Path  # the repository folder (parent of the model folder)
    name: str  # the model folder's name = the model's name
    description: str

    @property
    def folder(self) -> Path:
        return self.model_dir / self.name


def random_vocabulary(size: int = 192) -> list[str]:
    """ "" + newline, tab, printable ASCII, then Latin-1 letters up to ``size`` entries."""
    chars = ["\n", "\t"] + [chr(c) for c in range(32, 127)]
    c = 0xC0
    while len(chars) < size - 1:
        chars.append(chr(c))
        c += 1
    return [""] + chars[: size - 1]


def write_random_model(
    folder: Path,
    name: str = "bench-random-lstm",
    cell: str = "lstm",
    layers: int = 2,
    hidden: int = 512,
    embedding: int = 64,
    vocab_size: int = 192,
    seed: int = 0,
) -> ModelRef:
    from ..nn.random_model import save_random_model

    vocab = random_vocabulary(vocab_size)
    save_random_model(
        folder, name, cell, vocab, layers=layers, hidden=hidden, embedding=embedding, seed=seed, purpose="benchmark"
    )
    return ModelRef(folder, name, f"random weights, {cell} {layers}x{hidden}, E={embedding}, V={len(vocab)}")


def resolve_model(spec: str | None, scratch: Path) -> ModelRef:
    """``spec``: None (the shipped default model when it exists, else random), "random", a
    model folder path, or a model name in the repository's models/."""
    from ..config import default_model_dir
    from ..nn.checkpoint import read_spec

    def ref(folder: Path) -> ModelRef:
        s = read_spec(folder)
        return ModelRef(
            folder.parent,
            folder.name,
            f"{folder.name}: {s.cell} {s.layers}x{s.hidden}, E={s.embedding}, V={len(s.vocabulary)}",
        )

    if spec is None:
        default = default_model_dir() / DEFAULT_MODEL
        if (default / "model.json").is_file():
            return ref(default)
        spec = RANDOM
    if spec == RANDOM:
        return write_random_model(scratch)
    path = Path(spec)
    if (path / "model.json").is_file():
        return ref(path.resolve())
    named = default_model_dir() / spec
    if (named / "model.json").is_file():
        return ref(named)
    raise SystemExit(f"cellserve bench: no model folder {spec!r} (a path or a name in models/), or use 'random'")
