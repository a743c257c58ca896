"""``cellserve units``: finds the units that track something readable (``units``) on a sample
of the training corpus and stores them with the model, where InspectGates, ``cellserve
inspect`` and the browser's gate viewer read them."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_CHARS = 32_000


def add_units_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .cli import _model_args

    p = sub.add_parser(
        "units",
        help="find the units whose state tracks strings, comments, brackets, indentation or the column; "
        "write models/<name>/units.json",
    )
    _model_args(p)
    p.add_argument(
        "--corpus",
        type=Path,
        action="append",
        help="files or folders to sample (default: the training corpus of `cellserve train`)",
    )
    p.add_argument("--chars", type=int, default=DEFAULT_CHARS, help="characters of the sample")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.set_defaults(handler=run_units)


def run_units(a: argparse.Namespace) -> int:
    from .cli import _fail, _load_models
    from .evaluation import read_texts
    from .train import git_commit
    from .units import find_units, format_units, write_units

    if a.chars < 1000:
        raise _fail("units", "--chars must be at least 1000")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    (loaded,) = _load_models("units", a.model_dir, [a.model] if a.model else [])
    try:
        if a.corpus:
            text = read_texts(a.corpus, a.chars)[: a.chars]
            sample = f"the first {len(text):,} characters of {', '.join(map(str, a.corpus))}"
        else:
            from .nn.corpus import load_default_corpus

            print("units: reading the default corpus", file=sys.stderr, flush=True)
            text = load_default_corpus().train[: a.chars]
            sample = f"the first {len(text):,} characters of the default training corpus (seed 0 file order)"
    except (OSError, ValueError) as e:
        raise _fail("units", str(e)) from None
    units = find_units(loaded, text)
    if loaded.folder is None:
        raise _fail("units", "the model has no folder to write to")
    # The command as it could be run again (from the parsed options, not argv: main() may be
    # called with its own list).
    argv = ["cellserve", "units", "--model", loaded.spec.name, "--chars", str(a.chars)]
    argv += [x for p in a.corpus or () for x in ("--corpus", str(p))]
    command = " ".join(shlex.quote(x) for x in argv)
    path = write_units(loaded.folder, loaded, units, sample, len(text), command, git_commit())
    print(f"model {loaded.spec.name}: {sample}")
    print(format_units(units))
    print(f"wrote {path}")
    return 0
