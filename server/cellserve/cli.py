"""The `cellserve` command: train | train-mixer | eval | inspect | units | models | token | serve | bench."""

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
    p.add_argument(
        "corpus",
        nargs="*",
        type=Path,
        help="corpus files or folders, split by file (default: stdlib + the server's dependencies, "
        "validated on held-out packages; see --dry-run)",
    )
    p.add_argument("--out", type=Path, help="model folder to write, e.g. models/my-lstm (required unless --dry-run)")
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
    p.add_argument(
        "--fresh-fraction",
        type=float,
        default=d.fresh_fraction,
        help="per chunk and row, the chance to restart at a file start from the zero state",
    )
    p.add_argument(
        "--init-from", type=Path, help="model folder to warm-start from (same architecture; its vocabulary is kept)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the corpus list and sizes, and exit")
    p.set_defaults(handler=_run_train)


def _run_train(a: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    fields = TrainConfig.__dataclass_fields__
    kw = {k: v for k, v in vars(a).items() if k in fields and k not in ("out", "name")}
    if a.out is None and not a.dry_run:
        print("cellserve train: --out is required (or --dry-run to list the corpus)", file=sys.stderr)
        return 2
    out = a.out or Path(".")
    train(TrainConfig(out=out, name=a.name or out.name or "model", **kw))
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name (default: the lowest bits/char in the model folder)")
    p.add_argument("--model-dir", type=Path, help="folder of model folders (default: the repository's models/)")


def _fail(command: str, message: str) -> SystemExit:
    """A one-line error for the user, exit status 1 (argparse's own errors exit 2)."""
    return SystemExit(f"cellserve {command}: {message}")


def _load_models(command: str, model_dir: Path | None, names: list[str]) -> list[LoadedModel]:
    """Loads the named models from model_dir; none named: the one with the lowest bits/char."""
    from .config import default_model_dir
    from .errors import ModelFileError
    from .nn.checkpoint import load_model, read_spec

    root: Path = model_dir or default_model_dir()
    try:
        if not names:
            folders = [d for d in sorted(root.iterdir()) if (d / "model.json").is_file()] if root.is_dir() else []
            if not folders:
                raise _fail(command, f"no models in {root}")
            specs = [read_spec(d) for d in folders]
            best = min(specs, key=lambda s: s.quality.validation_bits_per_char if s.quality else float("inf"))
            names = [best.name]
        missing = [n for n in names if not (root / n).is_dir()]
        if missing:
            raise _fail(command, f"no model {missing[0]!r} in {root}")
        return [load_model(root / n) for n in names]
    except ModelFileError as e:
        raise _fail(command, str(e)) from None
    except OSError as e:
        raise _fail(command, f"cannot read models in {root}: {e.strerror or e}") from None


def _add_eval(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "eval",
        help="bits/char and keystroke savings (greedy, top-3) against a prefix-trie baseline",
        description="Bits/char (beside bzip2 -9 and xz -9e on the same text) and keystroke savings with greedy "
        "and top-3 word suggestions, against a prefix trie of the training corpus, per part and overall. "
        "Without FILE: on the default corpus's held-out packages.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("files", nargs="*", type=Path, help="text files or folders (folders: their *.py), one part each")
    p.add_argument("--model", action="append", default=[], help="model name, repeatable (none: the lowest bits/char)")
    p.add_argument("--model-dir", type=Path, help="folder of model folders (none: the repository's models/)")
    p.add_argument("--validation", action="store_true", help="also the default corpus's held-out packages")
    p.add_argument("--max-chars", type=int, default=100_000, help="characters evaluated per part (0: all)")
    p.add_argument(
        "--baseline-corpus",
        nargs="+",
        type=Path,
        default=None,
        help="files or folders for the baseline's word trie (none: the default corpus's training text)",
    )
    p.add_argument("--top", type=int, default=3, help="suggestions offered per position (beam search)")
    p.add_argument("--beam-width", type=int, default=4, help="beams per position (at least --top)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to FILE ('-': stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--precision",
        default="auto",
        help="serving precisions to measure beside fp32, comma-separated (int8, fp16, bf16); auto: those the "
        "device may serve (CPU: int8; CUDA: fp16, bf16); none: skip (docs/precision.md)",
    )
    p.add_argument("--record", action="store_true", help="write the precision measurements into each model.json")
    p.add_argument("--precision-only", action="store_true", help="measure the precisions only (no keystroke savings)")
    p.add_argument("--device", default="cpu", help="device of the precision measurements (cpu, cuda, cuda:N)")
    p.add_argument(
        "--no-memory", action="store_true", help="skip the session-memory columns (models with a mixer.safetensors)"
    )
    p.add_argument(
        "--memory-window",
        type=int,
        default=None,
        help="the session memory's window in characters (none: the window the mixer was trained with; the "
        "server's memory_window setting decides what is served)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch default). The pass along the text is one character at a time; while "
        "other work shares the cores, one thread was ~8x faster than two on the 2-core dev machine",
    )
    p.set_defaults(handler=_run_eval)


def _run_eval(a: argparse.Namespace) -> int:
    import json
    import time

    from .evaluation import WordTrie, evaluate, read_texts, trie_prefixes

    started = time.perf_counter()  # the report's time is the command's, loading included

    def stage(what: str) -> None:  # the slow steps before the first progress bar say so
        if not a.no_progress:
            print(f"eval: {what} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    if a.top < 1 or a.beam_width < a.top:
        raise _fail("eval", "--top must be at least 1 and --beam-width at least --top")
    if a.max_chars < 0 or a.threads < 0:
        raise _fail("eval", "--max-chars and --threads must not be negative")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    stage("loading the models")
    models = _load_models("eval", a.model_dir, a.model)
    parts: dict[str, str] = {}
    try:
        for f in a.files:
            parts[f.name or str(f)] = read_texts([f], a.max_chars)
        corpus = None
        if a.validation or not a.files or not a.baseline_corpus:
            from .nn.corpus import load_default_corpus

            stage("reading the default corpus (the trie baseline and the held-out packages)")
            corpus = load_default_corpus()
        if a.validation or not a.files:
            assert corpus is not None
            for name, text in corpus.validation_parts.items():
                parts[name] = text[: a.max_chars] if a.max_chars else text
        if a.baseline_corpus:
            trie_text = read_texts(a.baseline_corpus, 0)
            baseline = " ".join(str(p) for p in a.baseline_corpus)
        else:
            assert corpus is not None
            trie_text, baseline = corpus.train, "the default corpus's training text"
    except (OSError, ValueError) as e:  # a missing or unreadable file: gather_files names it
        raise _fail("eval", str(e)) from None
    if _eval_precisions(a, models, parts) and a.precision_only:
        return 0
    from .train import compressor_bits

    stage("building the trie baseline")
    wanted = set().union(*(trie_prefixes(t) for t in parts.values()))
    trie = WordTrie.from_text(trie_text, only=wanted)
    from .evaluation import zpaq_bits
    from .memory.mixer import MIXER_FILE, Mixer
    from .memory.settings import MemorySettings

    root = a.model_dir or __import__("cellserve.config", fromlist=["default_model_dir"]).default_model_dir()
    mixers = {
        m.spec.name: Mixer.load(root / m.spec.name)
        for m in models
        if not a.no_memory and (root / m.spec.name / MIXER_FILE).is_file()
    }
    stage("compressing with bzip2, xz and zpaq, then scoring")
    report = evaluate(
        models,
        parts,
        trie,
        baseline,
        compressor_bits,
        max_chars=a.max_chars,
        top_n=a.top,
        width=a.beam_width,
        show_progress=not a.no_progress,
        started=started,
        mixers=mixers,
        zpaq=zpaq_bits,
        memory=None if a.memory_window is None else MemorySettings(window=a.memory_window),
    )
    as_json = json.dumps(report.as_dict(), indent=2)
    if a.json is not None and str(a.json) == "-":
        print(as_json)
        return 0
    print(report.table())
    if a.json is not None:
        try:
            a.json.write_text(as_json + "\n")
        except OSError as e:
            raise _fail("eval", f"cannot write {a.json}: {e.strerror or e}") from None
        print(f"wrote {a.json}")
    return 0


def _eval_precisions(a: argparse.Namespace, models: list[LoadedModel], parts: dict[str, str]) -> bool:
    """``--precision``: measures (and with ``--record`` records) each precision; False: none asked."""
    import torch

    from .config import default_model_dir
    from .nn.precision import PRECISIONS
    from .precision_eval import default_precisions, measure, record, table

    try:
        device = torch.device(a.device)
    except RuntimeError as e:
        raise _fail("eval", f"--device {a.device!r}: {e}") from None
    asked = [p.strip() for p in a.precision.split(",") if p.strip()]
    names = default_precisions(device) if asked == ["auto"] else [] if asked == ["none"] else asked
    bad = [p for p in names if p not in PRECISIONS or p in ("auto", "fp32")]
    if bad:
        raise _fail("eval", f"--precision {bad[0]!r}: expected int8, fp16 or bf16 (comma-separated), auto or none")
    if not names:
        return False
    rows = []
    for loaded in models:
        try:
            measured = measure(loaded, parts, names, device)
        except ValueError as e:  # a precision this device cannot run (PrecisionUnavailable)
            raise _fail("eval", str(e)) from None
        rows += [(loaded.spec.name, q) for q in measured]
        if a.record:
            folder = (a.model_dir or default_model_dir()) / loaded.spec.name
            try:
                record(folder, loaded, measured)
            except (OSError, ValueError) as e:
                raise _fail("eval", str(e)) from None
            print(f"recorded {', '.join(names)} in {folder / 'model.json'}", file=sys.stderr)
    # stdout may be the JSON report (--json -): the precision table goes beside it, not into it
    print(table(rows), file=sys.stderr if a.json is not None and str(a.json) == "-" else sys.stdout)
    return True


def _add_inspect(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("inspect", help="per-character gate activations and next-character predictions")
    p.add_argument("text", help="the text to run through the model")
    _model_args(p)
    p.add_argument("--top-k", type=int, default=3, help="next characters shown per position")
    p.add_argument("--png", type=Path, help="write a heatmap here (needs matplotlib: the 'plot' extra)")
    p.set_defaults(handler=_run_inspect)


def _run_inspect(a: argparse.Namespace) -> int:
    from .inspection import format_table, trace, write_heatmap
    from .units import format_units, read_units, unit_traces

    if not a.text:
        raise _fail("inspect", "the text is empty")
    if a.top_k < 1:
        raise _fail("inspect", "--top-k must be at least 1")
    (loaded,) = _load_models("inspect", a.model_dir, [a.model] if a.model else [])
    rows = trace(loaded, a.text, a.top_k)
    units = read_units(loaded)  # models/<name>/units.json, written by `cellserve units`
    tracked = list(zip(units, unit_traces(loaded, a.text, 0, units), strict=True))
    print(f"model {loaded.spec.name} ({loaded.spec.cell}, {loaded.spec.layers}x{loaded.spec.hidden})")
    print(format_table(rows, loaded.spec.cell))
    if units:
        print("\nunits that track the text (state along it in the PNG):\n" + format_units(units))
    if a.png:
        try:
            write_heatmap(rows, loaded.spec.cell, loaded.spec.name, a.png, tracked)
        except RuntimeError as e:
            raise _fail("inspect", str(e)) from None
        except (OSError, ValueError) as e:  # ValueError: an image format matplotlib does not write
            raise _fail("inspect", f"cannot write {a.png}: {getattr(e, 'strerror', None) or e}") from None
        print(f"wrote {a.png}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "models",
        help="list the model folders and the precision each would be served at",
        description="Each model folder's shape, validation bits/char, recorded precision losses and the precision "
        "`cellserve serve` with these settings would serve it at (docs/precision.md); reads model.json only.",
    )
    p.add_argument("--model-dir", type=Path, help="folder of model folders (default: the repository's models/)")
    p.add_argument("--device", default="cpu", help="the serving device: cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", help="the server's precision setting: auto|fp32|int8|bf16|fp16")
    p.add_argument("--precision-max-loss", type=float, default=None, help="the bound auto applies (default: Settings')")
    p.set_defaults(handler=_run_models)


def _run_models(a: argparse.Namespace) -> int:
    import torch
    from pydantic import ValidationError

    from .config import Settings, default_model_dir
    from .errors import ModelFileError
    from .nn import precision as prec
    from .nn.checkpoint import read_spec

    try:
        extra = {} if a.precision_max_loss is None else {"precision_max_loss": a.precision_max_loss}
        settings = Settings(precision=a.precision, **extra)
        device = torch.device(a.device)
    except ValidationError as e:
        err = e.errors()[0]
        raise _fail("models", f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    except RuntimeError as e:
        raise _fail("models", f"--device {a.device!r}: {e}") from None
    root: Path = a.model_dir or default_model_dir()
    folders = [d for d in sorted(root.iterdir()) if (d / "model.json").is_file()] if root.is_dir() else []
    if not folders:
        raise _fail("models", f"no models in {root}")
    for folder in folders:
        try:
            spec = read_spec(folder)
            asked = settings.precision if settings.precision != "auto" else spec.precision
            served = prec.resolve(asked, device, spec.quality, settings.precision_max_loss)
        except (ModelFileError, prec.PrecisionUnavailable) as e:
            raise _fail("models", str(e)) from None
        q = spec.quality
        bpc = f"{q.validation_bits_per_char:.3f}" if q else "-"
        losses = ", ".join(f"{m.precision} {m.relative_loss:+.2%}" for m in q.precisions) if q else ""
        print(f"{spec.name}\t{spec.cell} {spec.layers}x{spec.hidden}\tbits/char {bpc}\tserved at {served}"
              f"\trecorded: {losses or 'none'}")  # fmt: skip
    return 0


def _add_token(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("token", help="manage API tokens (README: Security)")
    tsub = p.add_subparsers(dest="token_command", required=True)
    n = tsub.add_parser("new", help="print a fresh random token for TENANT and the tokens-file entry holding its hash")
    n.add_argument("tenant", help="tenant name (letters, digits, . _ @ -; at most 64)")
    n.set_defaults(handler=_run_token_new)


def _run_token_new(a: argparse.Namespace) -> int:
    import re

    from .tokens import TENANT_PATTERN, new_token

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
    __import__("cellserve.units_cli", fromlist=["add_units_parser"]).add_units_parser(sub)
    _add_models(sub)
    _add_token(sub)
    __import__("cellserve.memory.cli", fromlist=["add_train_mixer_parser"]).add_train_mixer_parser(sub)
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
