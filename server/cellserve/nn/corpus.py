"""Training corpora: gathering files, a deterministic train/validation split by file.

The default corpus is the Python standard library that ships with the interpreter
(``sysconfig.get_paths()["stdlib"]``): every ``*.py`` outside ``site-packages`` and test
folders. It is on every machine that runs cellserve, so the shipped models can be retrained
anywhere without downloading anything.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "__pycache__"})


def default_corpus_paths() -> list[Path]:
    return [Path(sysconfig.get_paths()["stdlib"])]


def describe_default_corpus() -> str:
    import platform

    return (
        f"Python {platform.python_version()} standard library source (*.py under sysconfig stdlib, "
        "excluding site-packages and test folders), split by file"
    )


def gather_files(paths: list[Path]) -> list[tuple[str, Path]]:
    """(key, path) for every file: explicit files as given; folders recursed for ``*.py``.

    The key is the path relative to the folder given, used for the deterministic split.
    """
    out: list[tuple[str, Path]] = []
    for root in paths:
        if root.is_file():
            out.append((root.name, root))
        elif root.is_dir():
            for p in sorted(root.rglob("*.py")):
                rel = p.relative_to(root)
                if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
                    continue
                if p.is_file():
                    out.append((rel.as_posix(), p))
        else:
            raise FileNotFoundError(f"corpus path does not exist: {root}")
    if not out:
        raise ValueError(f"no corpus files found under {', '.join(map(str, paths))}")
    return out


def is_validation(key: str, fraction: float) -> bool:
    """Deterministic by file: the same file lands in the same split on every machine."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return (h % 1_000_000) < fraction * 1_000_000


def split_files(paths: list[Path], validation_fraction: float = 0.05) -> tuple[list[Path], list[Path]]:
    """(train files, validation files), by the same rule ``load_corpus`` uses."""
    train: list[Path] = []
    val: list[Path] = []
    for key, path in gather_files(paths):
        (val if is_validation(key, validation_fraction) else train).append(path)
    return train, val


@dataclass
class Corpus:
    train: str
    validation: str
    train_files: int
    validation_files: int


def load_corpus(paths: list[Path], validation_fraction: float = 0.05, seed: int = 0) -> Corpus:
    """Reads and splits the corpus; train files are concatenated in a seeded shuffled order."""
    train_parts: list[str] = []
    val_parts: list[str] = []
    for key, path in gather_files(paths):
        text = path.read_bytes().decode("utf-8", errors="replace")
        if text and not text.endswith("\n"):
            text += "\n"
        (val_parts if is_validation(key, validation_fraction) else train_parts).append(text)
    if not val_parts and len(train_parts) > 1:  # tiny corpora: keep at least one validation file
        val_parts.append(train_parts.pop())
    random.Random(seed).shuffle(train_parts)
    return Corpus("".join(train_parts), "".join(val_parts), len(train_parts), len(val_parts))
