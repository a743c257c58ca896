"""`cellserve train-mixer`: the command line of ``training``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def add_train_mixer_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train-mixer",
        help="train a model's session-memory mixer on the training corpus (writes mixer.safetensors)",
        description="Fits the mixer that combines a model's distribution with the session memory's, on spans of "
        "the training corpus only, then measures bits/char with memory off and on (and zpaq -m5 when installed) "
        "on the held-out packages and records both in the model's model.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model name (its folder in --model-dir)")
    p.add_argument("--model-dir", type=Path, help="folder of model folders (none: the repository's models/)")
    p.add_argument("--corpus", nargs="+", type=Path, help="files or folders instead of the default corpus")
    p.add_argument("--spans", type=int, default=16, help="training spans (each read from a file start)")
    p.add_argument("--span-chars", type=int, default=12_000, help="characters per span")
    p.add_argument("--steps", type=int, default=600, help="Adam steps")
    p.add_argument("--heldout-chars", type=int, default=100_000, help="characters per held-out part (0: skip)")
    p.add_argument("--window", type=int, default=None, help="memory window (default: MemorySettings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(handler=run_train_mixer)


def run_train_mixer(a: argparse.Namespace) -> int:
    import torch

    from ..cli import _fail, _load_models
    from ..evaluation import zpaq_bits
    from ..nn.corpus import describe_default_corpus, load_corpus, load_default_corpus
    from ..nn.spec import SPEC_FILE, MemoryHeldOut, MemoryMixer
    from ..train import git_commit
    from .settings import MemorySettings
    from .training import heldout_bits, train_mixer

    if min(a.spans, a.span_chars - 1, a.steps, a.threads) < 1 or a.heldout_chars < 0:
        raise _fail("train-mixer", "--spans, --steps, --threads must be >= 1, --span-chars >= 2, --heldout-chars >= 0")
    torch.set_num_threads(a.threads)
    try:
        settings = MemorySettings() if a.window is None else MemorySettings(window=a.window)
    except ValueError as e:
        raise _fail("train-mixer", f"--window: {e}") from None
    (loaded,) = _load_models("train-mixer", a.model_dir, [a.model])
    try:
        corpus = load_corpus(a.corpus) if a.corpus else load_default_corpus()
    except (OSError, ValueError) as e:
        raise _fail("train-mixer", str(e)) from None
    what = ", ".join(map(str, a.corpus)) if a.corpus else describe_default_corpus()
    if not corpus.train:
        raise _fail("train-mixer", "the corpus has no training text")

    commit = git_commit()  # the code that trains (taken before: the tree may move during a long run)

    def say(msg: str) -> None:
        print(f"train-mixer {a.model}: {msg}", file=sys.stderr, flush=True)

    res = train_mixer(
        loaded,
        corpus.train,
        corpus.train_starts,
        spans=a.spans,
        span_chars=min(a.span_chars, len(corpus.train)),
        steps=a.steps,
        seed=a.seed,
        settings=settings,
        progress=say,
    )
    say(f"training rows: {res.train_bits:.4f} bits/char mixed")
    held = []
    for name, text in corpus.validation_parts.items():
        part = text[: a.heldout_chars]
        if a.heldout_chars == 0 or len(part) < 2:
            continue
        off, on = heldout_bits(loaded, res.mixer, part, settings)
        z = zpaq_bits(part)
        held.append(
            MemoryHeldOut(
                package=name,
                chars=len(part),
                bits_per_char_off=round(off, 4),
                bits_per_char_on=round(on, 4),
                zpaq_bits_per_char=None if z is None else round(z, 4),
            )
        )
        say(f"{name}: {off:.4f} -> {on:.4f} bits/char" + ("" if z is None else f" (zpaq -m5 {z:.4f})"))
    folder = (a.model_dir or _default_dir()) / a.model
    res.mixer.save(folder)
    spec = loaded.spec.model_copy(
        update={
            "memory": MemoryMixer(
                window=settings.window,
                command="cellserve " + shlex.join(sys.argv[1:]),
                corpus=what,
                train_chars=res.rows,
                train_bits_per_char=round(res.train_bits, 4),
                date=res.date,
                git_commit=commit,
                wall_seconds=round(res.seconds, 1),
                heldout=held,
            )
        }
    )
    (folder / SPEC_FILE).write_text(json.dumps(spec.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {folder / 'mixer.safetensors'} and the memory section of {folder / SPEC_FILE}")
    return 0


def _default_dir() -> Path:
    from ..config import default_model_dir

    return default_model_dir()
