"""`cellserve train`: truncated-BPTT training of a character LSTM/GRU, writing a model folder.

Each of ``batch`` rows of a batch is one contiguous stream of the (shuffled-by-file) training
text; consecutive chunks of ``seq_len`` characters continue each stream, and the recurrent
state is carried (detached) from one chunk to the next. The learning-rate schedule runs on
progress = max(step / steps, elapsed / time_budget), so a time budget and a step budget both
end with a fully decayed rate.

Resumable: every ``checkpoint_every`` seconds the model, optimizer, carried state and data
cursor are written to ``<out>/.train/`` (safetensors + JSON, no pickle); ``--resume`` continues
from there.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .nn.charlm import CharLM, State
from .nn.checkpoint import save_model
from .nn.corpus import default_corpus_paths, describe_default_corpus, load_corpus
from .nn.spec import ModelSpec, Provenance, Quality
from .nn.vocab import Vocab

LN2 = math.log(2.0)


@dataclass
class TrainConfig:
    out: Path
    name: str
    corpus: list[Path] = field(default_factory=list)  # empty: the default stdlib corpus
    cell: str = "lstm"
    layers: int = 2
    hidden: int = 512
    embedding: int = 64
    dropout: float = 0.0
    vocab_size: int = 192
    vocab_min_count: int = 20
    seq_len: int = 128
    batch: int = 64
    steps: int = 0  # 0: no step budget
    time_budget: float = 0.0  # seconds; 0: none
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # 0: torch default
    validation_fraction: float = 0.05
    eval_every: float = 300.0  # seconds between periodic validations
    eval_chars: int = 200_000  # characters of validation text used periodically (final: all)
    checkpoint_every: float = 300.0
    resume: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def to_streams(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """[N] -> [rows, N // rows]: row r is the r-th contiguous slice of the text."""
    n = ids.numel() // rows
    return ids[: rows * n].view(rows, n)


@torch.no_grad()
def evaluate(model: CharLM, ids: torch.Tensor, device: torch.device, rows: int = 32, chunk: int = 256) -> float:
    """Bits/char of predicting ids[1:] from ids[:-1], state carried along ``rows`` streams."""
    was_training = model.training
    model.eval()
    rows = max(1, min(rows, (ids.numel() - 1) // 2))
    x_all = to_streams(ids[:-1], rows)
    y_all = to_streams(ids[1:], rows)
    state: State | None = None
    total, count = 0.0, 0
    for k in range(0, x_all.shape[1], chunk):
        x = x_all[:, k : k + chunk].to(device, torch.long)
        y = y_all[:, k : k + chunk].to(device, torch.long)
        logits, state = model(x, state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1) / LN2


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


class Progress:
    """One status line on stderr: rewritten in place on a terminal, a log line otherwise."""

    def __init__(self, every_s: float) -> None:
        self.tty = sys.stderr.isatty()
        self.every_s = 0.5 if self.tty else every_s
        self.last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        if self.tty:
            sys.stderr.write("\r" + text[:150].ljust(150))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def log(self, text: str) -> None:
        sys.stderr.write(("\n" if self.tty else "") + text + "\n")
        sys.stderr.flush()


def _save_train_state(
    folder: Path, model: CharLM, opt: torch.optim.Optimizer, state: State, meta: dict[str, object]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    for i, t in enumerate(state):
        tensors[f"carry.{i}"] = t.detach().cpu().contiguous()
    opt_sd = opt.state_dict()
    for pid, pstate in opt_sd["state"].items():
        for k, v in pstate.items():
            tensors[f"opt.{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    tmp = folder / "train_state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "train_state.safetensors")
    (folder / "train_state.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))


def _load_train_state(
    folder: Path, model: CharLM, opt: torch.optim.Optimizer, device: torch.device
) -> tuple[State, dict[str, object]]:
    meta = json.loads((folder / "train_state.json").read_text())
    tensors = load_file(str(folder / "train_state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_sd = opt.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            per_param.setdefault(int(pid), {})[name] = v.to(device) if name != "step" else v
    opt_sd["state"] = per_param
    opt.load_state_dict(opt_sd)
    carry = tuple(tensors[f"carry.{i}"].to(device) for i in range(model.state_arity))
    return carry, meta


def train(cfg: TrainConfig) -> ModelSpec:
    if cfg.steps <= 0 and cfg.time_budget <= 0:
        raise ValueError("give a budget: --steps and/or --time-budget")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    progress = Progress(every_s=30.0)

    paths = cfg.corpus or default_corpus_paths()
    corpus = load_corpus(paths, cfg.validation_fraction, cfg.seed)
    corpus_desc = describe_default_corpus() if not cfg.corpus else "files: " + ", ".join(p.name for p in paths)
    train_state_dir = cfg.out / ".train"
    if cfg.resume:
        vocab = Vocab(json.loads((train_state_dir / "train_state.json").read_text())["vocabulary"])
    else:
        vocab = Vocab.from_texts([corpus.train], cfg.vocab_size, cfg.vocab_min_count)
    train_ids = torch.tensor(vocab.encode(corpus.train), dtype=torch.uint8 if len(vocab) <= 256 else torch.int32)
    val_ids = torch.tensor(vocab.encode(corpus.validation), dtype=train_ids.dtype)
    progress.log(
        f"corpus: {len(corpus.train):,} train chars ({corpus.train_files} files), "
        f"{len(corpus.validation):,} validation chars ({corpus.validation_files} files); vocabulary {len(vocab)}; "
        f"unknown in train: {(train_ids == 0).float().mean().item():.5%}"
    )

    model = CharLM(cfg.cell, len(vocab), cfg.embedding, cfg.hidden, cfg.layers, cfg.dropout).to(device)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    streams = to_streams(train_ids[:-1], cfg.batch)
    targets = to_streams(train_ids[1:], cfg.batch)
    chunks_per_epoch = streams.shape[1] // cfg.seq_len
    if chunks_per_epoch < 1:
        raise ValueError(f"corpus too small for batch {cfg.batch} x seq_len {cfg.seq_len}")

    step, elapsed_before, best_val = 0, 0.0, float("inf")
    state: State = model.init_state(cfg.batch, device)
    if cfg.resume:
        state, saved = _load_train_state(train_state_dir, model, opt, device)
        step, elapsed_before = int(saved["step"]), float(saved["elapsed"])  # type: ignore[call-overload, arg-type]
        progress.log(f"resumed at step {step} ({elapsed_before:.0f}s trained)")
    progress.log(f"model: {cfg.cell} {cfg.layers}x{cfg.hidden}, {model.num_parameters():,} parameters on {device}")

    def meta() -> dict[str, object]:
        return {
            "step": step,
            "elapsed": elapsed_before + time.monotonic() - t0,
            "vocabulary": vocab.chars,
            "config": {k: str(v) for k, v in asdict(cfg).items()},
        }

    model.train()
    t0 = time.monotonic()
    last_eval = last_ckpt = t0
    ema_loss = None
    while True:
        elapsed = elapsed_before + time.monotonic() - t0
        frac = max(step / cfg.steps if cfg.steps else 0.0, elapsed / cfg.time_budget if cfg.time_budget else 0.0)
        if frac >= 1.0:
            break
        k = step % chunks_per_epoch
        if k == 0 and step > 0:
            state = model.init_state(cfg.batch, device)  # a new epoch starts the streams afresh
        x = streams[:, k * cfg.seq_len : (k + 1) * cfg.seq_len].to(device, torch.long)
        y = targets[:, k * cfg.seq_len : (k + 1) * cfg.seq_len].to(device, torch.long)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, frac)
        logits, state = model(x, tuple(s.detach() for s in state))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        step += 1
        lv = loss.item()
        ema_loss = lv if ema_loss is None else 0.98 * ema_loss + 0.02 * lv
        now = time.monotonic()
        rate = step * cfg.batch * cfg.seq_len / max(elapsed + 1e-9, 1e-9) if elapsed else 0.0
        progress.show(
            f"step {step} | {frac:6.1%} | loss {ema_loss:.4f} | {ema_loss / LN2:.3f} bits/char | "
            f"lr {opt.param_groups[0]['lr']:.2e} | {rate:,.0f} chars/s | epoch {step * cfg.seq_len / streams.shape[1]:.2f}"
        )
        if now - last_eval >= cfg.eval_every:
            v = evaluate(model, val_ids[: cfg.eval_chars], device)
            best_val = min(best_val, v)
            progress.log(
                f"step {step}: validation {v:.4f} bits/char (first {min(cfg.eval_chars, val_ids.numel()):,} chars)"
            )
            last_eval = time.monotonic()
        if now - last_ckpt >= cfg.checkpoint_every:
            _save_train_state(train_state_dir, model, opt, state, meta())
            last_ckpt = time.monotonic()

    wall = elapsed_before + time.monotonic() - t0
    _save_train_state(train_state_dir, model, opt, state, meta())
    val_bpc = evaluate(model, val_ids, device)
    progress.log(
        f"done: {step} steps in {wall:.0f}s; validation {val_bpc:.4f} bits/char over {val_ids.numel():,} chars"
    )
    dev_desc = str(device) if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})"
    spec = ModelSpec(
        name=cfg.name,
        cell=cfg.cell,  # type: ignore[arg-type]
        layers=cfg.layers,
        hidden=cfg.hidden,
        embedding=cfg.embedding,
        vocabulary=vocab.chars,
        dtype="float32",
        provenance=Provenance(
            corpus=corpus_desc,
            train_chars=len(corpus.train),
            validation_chars=len(corpus.validation),
            steps=step,
            wall_seconds=round(wall, 1),
            seed=cfg.seed,
            device=dev_desc,
            git_commit=git_commit(),
            command=shlex.join(["cellserve", *sys.argv[1:]]),
        ),
        quality=Quality(validation_bits_per_char=round(val_bpc, 4)),
    )
    save_model(cfg.out, spec, model.cpu())
    progress.log(f"wrote {cfg.out}")
    return spec
