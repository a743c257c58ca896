"""The `cellserve` command: train | eval | inspect | token | serve."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .nn.checkpoint import LoadedModel

Handler = Callable[[argparse.Namespace], int]


def _add_train(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .train import TrainConfig

    d = TrainConfig(out=Path("."), name="")
    p = sub.add_parser("train", help="train a character LSTM/GRU and write a model folder")
    p.add_argument("corpus", nargs="*", type=Path, help="corpus files or folders (default: the Python stdlib source)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write, e.g. models/my-lstm")
    p.add_argument("--name", help="model name (default: the folder name)")
    p.add_argument("--cell", choices=["lstm", "gru"], default=d.cell)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--embedding", type=int, default=d.embedding)
    p.add_argument("--dropout", type=float, default=d.dropout, help="between stacked layers, training only")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="cap, including the unknown entry")
    p.add_argument("--vocab-min-count", type=int, default=d.vocab_min_count)
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="truncated-BPTT chunk length")
    p.add_argument("--batch", type=int, default=d.batch, help="parallel streams")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (0: none)")
    p.add_argument("--time-budget", type=float, default=d.time_budget, help="seconds (0: none)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default=d.lr_schedule)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clipping")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads (0: torch default)")
    p.add_argument("--validation-fraction", type=float, default=d.validation_fraction)
    p.add_argument("--eval-every", type=float, default=d.eval_every, help="seconds between validations")
    p.add_argument("--eval-chars", type=int, default=d.eval_chars)
    p.add_argument("--checkpoint-every", type=float, default=d.checkpoint_every, help="seconds")
    p.add_argument("--resume", action="store_true", help="continue from <out>/.train/")
    p.set_defaults(handler=_run_train)


def _run_train(a: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    fields = TrainConfig.__dataclass_fields__
    kw = {k: v for k, v in vars(a).items() if k in fields and k not in ("out", "name")}
    train(TrainConfig(out=a.out, name=a.name or a.out.name, **kw))
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name (default: the lowest bits/char in the model folder)")
    p.add_argument("--model-dir", type=Path, help="folder of model folders (default: the repository's models/)")


def _load_named_model(a: argparse.Namespace) -> LoadedModel:
    """Loads --model from --model-dir; the default is the model with the lowest bits/char."""
    from .config import default_model_dir
    from .errors import ModelFileError
    from .nn.checkpoint import load_model, read_spec

    root: Path = a.model_dir or default_model_dir()
    name = a.model
    if not name:
        specs = [read_spec(d) for d in sorted(root.iterdir()) if (d / "model.json").is_file()] if root.is_dir() else []
        if not specs:
            raise SystemExit(f"cellserve: no models in {root}")
        name = min(specs, key=lambda s: s.quality.validation_bits_per_char if s.quality else float("inf")).name
    try:
        return load_model(root / name)
    except ModelFileError as e:
        raise SystemExit(f"cellserve: {e}") from None


def _add_eval(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("eval", help="bits/char and keystroke savings against a word-trie baseline")
    p.add_argument("files", nargs="*", type=Path, help="text files or folders (folders: their *.py)")
    _model_args(p)
    p.add_argument("--validation", action="store_true", help="evaluate on the default corpus's validation split")
    p.add_argument("--max-chars", type=int, default=200_000, help="stop reading input after this many characters")
    p.add_argument(
        "--baseline-corpus",
        nargs="*",
        type=Path,
        default=None,
        help="corpus for the baseline's word trie (default: the default corpus's training split)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_run_eval)


def _run_eval(a: argparse.Namespace) -> int:
    import json

    from .evaluation import WordTrie, evaluate_texts, read_texts
    from .nn.corpus import default_corpus_paths, load_corpus, split_files

    loaded = _load_named_model(a)
    files: list[Path] = list(a.files)
    if a.validation:
        files += split_files(default_corpus_paths())[1]
    if not files:
        raise SystemExit("cellserve eval: give FILE... or --validation")
    texts = read_texts(files, a.max_chars)
    trie_text = load_corpus(a.baseline_corpus).train if a.baseline_corpus else load_corpus(default_corpus_paths()).train
    report = evaluate_texts(loaded, texts, WordTrie.from_text(trie_text))
    print(json.dumps(report.as_dict(), indent=2) if a.json else report.table())
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("inspect", help="per-character gate activations and next-character predictions")
    p.add_argument("text", help="the text to run through the model")
    _model_args(p)
    p.add_argument("--top-k", type=int, default=3, help="next characters shown per position")
    p.add_argument("--png", type=Path, help="write a heatmap here (needs matplotlib: the 'plot' extra)")
    p.set_defaults(handler=_run_inspect)


def _run_inspect(a: argparse.Namespace) -> int:
    from .inspection import format_table, trace, write_heatmap

    if not a.text:
        raise SystemExit("cellserve inspect: the text is empty")
    loaded = _load_named_model(a)
    rows = trace(loaded, a.text, a.top_k)
    print(f"model {loaded.spec.name} ({loaded.spec.cell}, {loaded.spec.layers}x{loaded.spec.hidden})")
    print(format_table(rows, loaded.spec.cell))
    if a.png:
        try:
            write_heatmap(rows, loaded.spec.cell, loaded.spec.name, a.png)
        except RuntimeError as e:
            raise SystemExit(f"cellserve inspect: {e}") from None
        print(f"wrote {a.png}")
    return 0


def _add_token(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("token", help="manage API tokens (README: Security)")
    tsub = p.add_subparsers(dest="token_command", required=True)
    n = tsub.add_parser("new", help="print a fresh random token for TENANT and the tokens-file entry holding its hash")
    n.add_argument("tenant", help="tenant name (letters, digits, . _ @ -; at most 64)")
    n.set_defaults(handler=_run_token_new)


def _run_token_new(a: argparse.Namespace) -> int:
    import re

    from .api.tokens import TENANT_PATTERN, new_token

    if not re.match(TENANT_PATTERN, a.tenant):
        raise SystemExit(f"cellserve token new: {a.tenant!r} is not a valid tenant name (letters, digits, . _ @ -)")
    token, stored = new_token()
    print(f"token (give it to the tenant; it is shown only once): {token}")
    print("add to the tokens file (under an existing tenant's tokens:, or as a new tenant):")
    print(f"  - name: {a.tenant}\n    tokens:\n      - {stored}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_inspect(sub)
    _add_token(sub)
    from .serve import add_serve_parser

    add_serve_parser(sub)
    __import__("cellserve.bench.cli", fromlist=["add_bench_parser"]).add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
