"""`cellserve train`: truncated-BPTT training of a character LSTM/GRU, writing a model folder.

Each of ``batch`` rows of a batch is a stream through the training text: consecutive chunks of
``seq_len`` characters continue the row, and the recurrent state is carried (detached) from one
chunk to the next, as a serving session carries it from keystroke to keystroke. With
probability ``fresh_fraction`` per chunk a row instead restarts at the start of a file chosen
in proportion to its length, from the zero state: every new session starts from the zero state
at the top of a file, so the model must predict well there too. The learning-rate schedule runs
on progress = max(step / steps, elapsed / time_budget), so a time budget and a step budget both
end with a fully decayed rate.

``--init-from MODEL`` starts from an existing model folder's weights and vocabulary (a warm
start recorded in provenance), so compute already spent on a model is not thrown away.

Resumable: every ``checkpoint_every`` seconds the model, optimizer, carried state and data
cursor are written to ``<out>/.train/`` (safetensors + JSON, no pickle); ``--resume`` continues
from there.
"""

from __future__ import annotations

import bz2
import json
import lzma
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
from .nn.checkpoint import load_model, save_model
from .nn.corpus import Corpus, describe_default_corpus, load_corpus, load_default_corpus
from .nn.spec import HeldOutScore, ModelSpec, Provenance, Quality
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
    eval_every: float = 600.0  # seconds between periodic validations
    eval_chars: int = 60_000  # characters of validation text used periodically (final: all)
    checkpoint_every: float = 300.0
    resume: bool = False
    fresh_fraction: float = 1 / 32  # per chunk and row: restart at a file start from the zero state
    init_from: Path | None = None  # a model folder to warm-start from (its vocabulary is kept)
    dry_run: bool = False  # print the corpus list and sizes, train nothing


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


class StreamSampler:
    """``batch`` cursors into the training ids, advanced ``seq_len`` characters per step.

    A row restarts at a file start (and its state is zeroed) with probability ``fresh`` per
    step, and whenever it would run off the end of the text. Files are picked in proportion to
    their length (a uniform character, snapped back to the start of its file).
    """

    def __init__(self, ids: torch.Tensor, starts: list[int], batch: int, seq_len: int, fresh: float, seed: int) -> None:
        if ids.numel() < seq_len + 2:
            raise ValueError(f"corpus too small for seq_len {seq_len}")
        self.ids, self.batch, self.seq_len, self.fresh = ids, batch, seq_len, fresh
        self.starts = torch.tensor(sorted(set(starts) | {0}), dtype=torch.int64)
        self.gen = torch.Generator().manual_seed(seed)
        self.cursor = self._file_starts(batch)
        self.offsets = torch.arange(seq_len + 1)

    def _file_starts(self, n: int) -> torch.Tensor:
        limit = self.ids.numel() - self.seq_len - 1
        pos = torch.randint(0, limit, (n,), generator=self.gen)
        idx = torch.searchsorted(self.starts, pos, right=True) - 1
        return self.starts[idx].clamp(max=limit - 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x [B, T], y [B, T], fresh [B] bool: rows whose carried state must be zeroed)."""
        limit = self.ids.numel() - self.seq_len - 1
        fresh = (torch.rand(self.batch, generator=self.gen) < self.fresh) | (self.cursor >= limit)
        if bool(fresh.any()):
            self.cursor[fresh] = self._file_starts(int(fresh.sum()))
        window = self.ids[self.cursor[:, None] + self.offsets].long()  # [B, T + 1]
        self.cursor += self.seq_len
        return window[:, :-1], window[:, 1:], fresh

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"sampler.cursor": self.cursor.clone(), "sampler.rng": self.gen.get_state()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.cursor = tensors["sampler.cursor"].clone()
        self.gen.set_state(tensors["sampler.rng"])


@torch.no_grad()
def evaluate(model: CharLM, ids: torch.Tensor, device: torch.device, rows: int = 64, chunk: int = 256) -> float:
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


def compressor_bits(text: str) -> tuple[float, float]:
    """(bzip2 -9, xz -9e) bits per character of ``text`` encoded as UTF-8."""
    raw = text.encode()
    n = max(len(text), 1)
    return (
        8 * len(bz2.compress(raw, 9)) / n,
        8 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / n,
    )


def heldout_scores(model: CharLM, vocab: Vocab, parts: dict[str, str], device: torch.device) -> list[HeldOutScore]:
    """bits/char per held-out package, beside bzip2 -9 and xz -9e on the same text."""
    out = []
    for name, text in parts.items():
        ids = torch.tensor(vocab.encode(text), dtype=torch.int64)
        bz, xz = compressor_bits(text)
        out.append(
            HeldOutScore(
                package=name,
                chars=len(text),
                bits_per_char=round(evaluate(model, ids, device), 4),
                bzip2_bits_per_char=round(bz, 4),
                xz_bits_per_char=round(xz, 4),
            )
        )
    return out


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


class Progress:
    """A tqdm bar on stderr (rate and ETA), plus log lines that do not break it.

    The bar counts characters trained (step budget) or seconds of the time budget; its postfix
    carries the characters/s of this run (characters trained since this process started over
    the time since then, so the first reading after a resume is right too).
    """

    def __init__(self, total: float, unit: str, initial: float = 0.0) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            unit=unit,
            unit_scale=unit == "char",
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
            file=sys.stderr,
            bar_format="{l_bar}{bar}| {n:,.0f}/{total:,.0f} {unit} [{elapsed}<{remaining}{postfix}]",
        )

    def update(self, value: float, postfix: str) -> None:
        # never past the total: tqdm drops the total once n exceeds it, and the bar format
        # (which formats the total) would then fail on the last step of a time budget
        value = min(value, float(self.bar.total or value))
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(max(value - self.bar.n, 0.0))

    def log(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _save_train_state(
    folder: Path,
    model: CharLM,
    opt: torch.optim.Optimizer,
    state: State,
    sampler: StreamSampler,
    meta: dict[str, object],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    tensors.update(sampler.state_tensors())
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
    folder: Path, model: CharLM, opt: torch.optim.Optimizer, sampler: StreamSampler, device: torch.device
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
    sampler.load_state_tensors(tensors)
    return carry, meta


def _load_training_corpus(cfg: TrainConfig) -> tuple[Corpus, str]:
    if cfg.corpus:
        corpus = load_corpus(cfg.corpus, cfg.validation_fraction, cfg.seed)
        return corpus, "files: " + ", ".join(p.name for p in cfg.corpus) + ", split by file"
    return load_default_corpus(cfg.seed), describe_default_corpus()


def _initial_model(cfg: TrainConfig, corpus: Corpus, device: torch.device) -> tuple[CharLM, Vocab, str]:
    """A fresh model, or the weights and vocabulary of ``cfg.init_from`` (architecture must match)."""
    train_state_dir = cfg.out / ".train"
    if cfg.init_from is not None:
        loaded = load_model(cfg.init_from)
        sp = loaded.spec
        mine = (cfg.cell, cfg.layers, cfg.hidden, cfg.embedding)
        theirs = (sp.cell, sp.layers, sp.hidden, sp.embedding)
        if mine != theirs:
            raise ValueError(
                f"--init-from {cfg.init_from}: model is {theirs} (cell, layers, hidden, embedding), asked for {mine}"
            )
        model = CharLM(cfg.cell, len(loaded.vocab), cfg.embedding, cfg.hidden, cfg.layers, cfg.dropout)  # type: ignore[arg-type]
        model.load_state_dict(loaded.model.state_dict())
        return model.to(device), loaded.vocab, f"{sp.name} (weights sha256 {loaded.weights_sha256[:12]})"
    if cfg.resume:
        vocab = Vocab(json.loads((train_state_dir / "train_state.json").read_text())["vocabulary"])
    else:
        vocab = Vocab.from_texts([corpus.train], cfg.vocab_size, cfg.vocab_min_count)
    model = CharLM(cfg.cell, len(vocab), cfg.embedding, cfg.hidden, cfg.layers, cfg.dropout)  # type: ignore[arg-type]
    return model.to(device), vocab, ""


def train(cfg: TrainConfig) -> ModelSpec | None:
    """Trains and writes ``cfg.out``; with ``dry_run`` prints the corpus and returns None."""
    corpus, corpus_desc = _load_training_corpus(cfg)
    if cfg.dry_run:  # every file, then the per-source totals (last, so they stay on screen)
        print(corpus.describe_files())
        print(corpus.describe())
        return None
    if cfg.steps <= 0 and cfg.time_budget <= 0:
        raise ValueError("give a budget: --steps and/or --time-budget")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    train_state_dir = cfg.out / ".train"
    model, vocab, init_desc = _initial_model(cfg, corpus, device)
    train_ids = torch.tensor(vocab.encode(corpus.train), dtype=torch.uint8 if len(vocab) <= 256 else torch.int32)
    val_ids = torch.tensor(vocab.encode(corpus.validation), dtype=train_ids.dtype)
    sampler = StreamSampler(train_ids, corpus.train_starts, cfg.batch, cfg.seq_len, cfg.fresh_fraction, cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    chars_per_step = cfg.batch * cfg.seq_len

    step, elapsed_before = 0, 0.0
    state: State = model.init_state(cfg.batch, device)
    if cfg.resume:
        state, meta_in = _load_train_state(train_state_dir, model, opt, sampler, device)
        step, elapsed_before = int(meta_in["step"]), float(meta_in["elapsed"])  # type: ignore[call-overload, arg-type]
        init_desc = str(meta_in.get("init_from", init_desc))
    by_steps = cfg.steps > 0 and cfg.time_budget <= 0
    bar = (
        Progress(cfg.steps * chars_per_step, "char", step * chars_per_step)
        if by_steps
        else Progress(cfg.time_budget, "s", elapsed_before)
    )
    bar.log(
        f"corpus: {len(corpus.train):,} train chars ({corpus.train_files} files), "
        f"{len(corpus.validation):,} validation chars ({corpus.validation_files} files"
        + (f": {', '.join(corpus.validation_parts)}" if len(corpus.validation_parts) > 1 else "")
        + f"); vocabulary {len(vocab)}; unknown in train: {(train_ids == 0).float().mean().item():.5%}"
    )
    if cfg.resume:
        bar.log(f"resumed at step {step} ({elapsed_before:.0f}s trained)")
    bar.log(
        f"model: {cfg.cell} {cfg.layers}x{cfg.hidden}, {model.num_parameters():,} parameters on {device}"
        + (f", initialised from {init_desc}" if init_desc else "")
    )

    def meta() -> dict[str, object]:
        return {
            "step": step,
            "elapsed": elapsed_before + time.monotonic() - t0,
            "vocabulary": vocab.chars,
            "init_from": init_desc,
            "config": {k: str(v) for k, v in asdict(cfg).items()},
        }

    model.train()
    t0 = time.monotonic()
    first_step = step
    last_eval = last_ckpt = t0
    ema_loss: float | None = None
    while True:
        elapsed = elapsed_before + time.monotonic() - t0
        frac = max(step / cfg.steps if cfg.steps else 0.0, elapsed / cfg.time_budget if cfg.time_budget else 0.0)
        if frac >= 1.0:
            break
        x, y, fresh = sampler.next()
        keep = (~fresh).to(device, torch.float32)[None, :, None]  # [1, B, 1]: zero the restarted rows
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, frac)
        logits, state = model(x.to(device), tuple(s.detach() * keep for s in state))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        step += 1
        lv = loss.item()
        ema_loss = lv if ema_loss is None else 0.98 * ema_loss + 0.02 * lv
        now = time.monotonic()
        rate = (step - first_step) * chars_per_step / max(now - t0, 1e-6)  # this run's own rate
        bar.update(
            step * chars_per_step if by_steps else elapsed_before + now - t0,
            f"step {step}, {ema_loss / LN2:.3f} bits/char, lr {opt.param_groups[0]['lr']:.1e}, {rate:,.0f} chars/s, "
            f"{step * chars_per_step / train_ids.numel():.2f} passes",
        )
        if now - last_eval >= cfg.eval_every:
            v = evaluate(model, _periodic_sample(corpus, vocab, cfg.eval_chars), device)
            bar.log(f"step {step}: validation {v:.4f} bits/char (sample of {cfg.eval_chars:,} chars)")
            last_eval = time.monotonic()
        if now - last_ckpt >= cfg.checkpoint_every:
            _save_train_state(train_state_dir, model, opt, state, sampler, meta())
            last_ckpt = time.monotonic()

    wall = elapsed_before + time.monotonic() - t0
    _save_train_state(train_state_dir, model, opt, state, sampler, meta())
    bar.close()
    model.eval()
    if len(corpus.validation_parts) > 1:  # held-out packages: each scored alone; overall = char-weighted mean
        heldout = heldout_scores(model, vocab, corpus.validation_parts, device)
        val_bpc = sum(h.bits_per_char * h.chars for h in heldout) / sum(h.chars for h in heldout)
    else:
        heldout, val_bpc = [], evaluate(model, val_ids, device)
    print(
        f"done: {step} steps in {wall:.0f}s; validation {val_bpc:.4f} bits/char over {val_ids.numel():,} chars",
        file=sys.stderr,
    )
    for h in heldout:
        print(
            f"  held-out {h.package:<12} {h.chars:>9,} chars: model {h.bits_per_char:.4f}, "
            f"bzip2 -9 {h.bzip2_bits_per_char:.4f}, xz -9e {h.xz_bits_per_char:.4f} bits/char",
            file=sys.stderr,
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
            device=dev_desc + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""),
            git_commit=git_commit(),
            command=shlex.join(["cellserve", *sys.argv[1:]]),
            init_from=init_desc,
        ),
        quality=Quality(validation_bits_per_char=round(val_bpc, 4), heldout=heldout),
    )
    save_model(cfg.out, spec, model.cpu())
    print(f"wrote {cfg.out}", file=sys.stderr)
    return spec


def _periodic_sample(corpus: Corpus, vocab: Vocab, chars: int) -> torch.Tensor:
    """An equal share of ``chars`` from the start of each validation part, for periodic checks."""
    share = max(chars // max(len(corpus.validation_parts), 1), 1)
    text = "".join(t[:share] for t in corpus.validation_parts.values()) or corpus.validation[:chars]
    return torch.tensor(vocab.encode(text), dtype=torch.int64)
