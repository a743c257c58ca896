"""The `cellserve` command: train | eval | inspect | serve."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
