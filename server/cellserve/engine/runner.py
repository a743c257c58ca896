"""Executes one ``Plan`` on the device: the only torch-heavy engine module.

One iteration for one model, in the device worker thread:

1. prepare: gather the start state of every row from the pool (one ``index_select`` per
   state tensor);
2. forward: single-token rows (keystrokes, completion steps) run as ONE batched step [B, 1];
   multi-token rows (pastes, coalesced appends, rewind replays) run as ONE packed sequence
   call; rows asking for gates run on the reference cells (slow path);
3. pick: every hidden vector a result needs is picked into one matrix -> head -> log-softmax
   -> top-k / log-probs / sampling on the device, packed into one flat tensor -> ONE host copy;
4. unpack: the host numbers per row (``RunResult``); snapshot reads copy their slots;
5. commit (a separate call, ``commit()``): final states are written back with ``index_copy_``.
   The engine core calls it only after it staged every answer of the iteration, so an
   iteration that fails in any phase, here or in the core, leaves every slot untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..memory.mixer import EPS as MIX_EPS
from ..memory.mixer import Gate, Mixer, mix_log_probs
from ..nn.cells import GRUCellRef, LSTMCellRef, reference_cell
from ..nn.charlm import CharLM
from ..nn.kernels import ONEDNN_MIN_STEP_BATCH, onednn
from ..nn.scripted import scripted
from .buffers import InputBuffers
from .memory_mix import fork_of, host_kernels, mix_on_host, point_arrays, point_predictions
from .plan import ZERO, CheckpointRef, HostState, Plan, Row, RowResult, RunResult, SampleParams
from .sampling import choose
from .state_pool import StatePool

# Kernel choice on CPU: oneDNN's fixed per-call cost (weight reorders on every call) dominates
# small single steps; its fused sequence kernel wins once there are time steps and rows to
# amortise it; PackedSequence input always takes the native kernel. The figures behind the
# rule: docs/measurements.md, "Kernel choice on CPU".
# Rule: native kernels for single steps below ONEDNN_MIN_STEP_BATCH rows, oneDNN for larger
# steps and for unpadded sequence calls (all prefill rows of one length, including the common
# single paste); mixed lengths go packed (native on CPU, cuDNN on GPU) to keep final states exact.
# (ONEDNN_MIN_STEP_BATCH lives in nn.kernels: the offline decoders follow the same rule.)


@dataclass
class _Prepared:
    """An iteration's rows grouped by kind (indices into ``plan.rows``) and their start states."""

    plan: Plan
    steps: list[int]
    pres: list[int]
    gated: list[int]
    order: list[int]  # steps + pres + gated + peeks: the order of ``start`` along dim 1
    start: tuple[torch.Tensor, ...]  # [L, R, H] x arity


@dataclass
class _Forward:
    """What the model computed: the hidden vectors results may point at and the final states."""

    out_index: list[list[int]]  # row -> bank index of the output after each of its tokens
    bank_parts: list[torch.Tensor] = field(default_factory=list)  # [*, H] each
    finals: list[torch.Tensor] = field(default_factory=list)  # per state tensor: [L, R, H] in ``order``
    gate_traces: dict[int, torch.Tensor] = field(default_factory=dict)
    phases: list[tuple[str, int, float]] = field(default_factory=list)


@dataclass
class _Points:
    """The result points ``_pick`` computed, as (index into the picked matrix, parameter)."""

    topk: list[tuple[int, int]] = field(default_factory=list)  # (pick index, k)
    logprob: list[tuple[int, int]] = field(default_factory=list)  # (pick index, token)
    sample: list[tuple[int, SampleParams]] = field(default_factory=list)
    kmax: int = 0
    mixed: list[tuple[int, int, int]] = field(default_factory=list)  # (pick index, row, tokens before)


class ModelRunner:
    def __init__(
        self,
        model: CharLM,
        pool: StatePool,
        checkpoints: StatePool | None = None,
        reference: CharLM | None = None,
        mixer: Mixer | None = None,
    ) -> None:
        self.model = model  # the serving module (nn/precision.py): steps, prefill, decoding, heads
        self.reference = reference or model  # fp32: gates always come from its reference cells
        self.pool = pool
        # rewind checkpoints: a second slot-indexed pool of the same shape
        self.checkpoints = checkpoints or StatePool(pool.layers, pool.hidden, pool.arity, pool.device, pool.dtype)
        self.device = pool.device
        self.on_cpu = pool.device.type == "cpu"
        self._ref: LSTMCellRef | GRUCellRef | None = None  # built on the first gate request
        self._in = InputBuffers(pool.device)  # persistent per-iteration index inputs
        self._pending: Callable[[], None] | None = None  # the last execute's write-back, for commit()
        self.mixer = mixer  # the session memory's mixer (rows with a ``memory``); None: never mixed
        # the C extension on the CPU (memory_mix): the mix and the pick's top-k each one C call,
        # else both inside the pick kernel
        self._host = host_kernels(pool.device)
        self._none = torch.empty(0, dtype=torch.long, device=pool.device)  # a kernel's absent argument
        # a serving model that steps by token id in one call (nn/int8.py), else None
        self._by_id: Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None] | None = getattr(
            model.rnn, "step_ids", None
        )

    def execute(self, plan: Plan) -> RunResult:
        """Runs ``plan`` and returns its results; the pools are untouched until ``commit()``."""
        self._pending = None  # an iteration that failed before its commit is dropped
        with torch.inference_mode():
            if plan.rows and plan.rows[0].more:
                return self._decode(plan)
            return self._execute(plan)

    @property
    def decodes_mixed(self) -> bool:
        """Multi-step decoding may hold rows mixed with a session memory: the mix runs on the
        host (``mix_on_host``), where each step's drawn tokens are at hand for the memory's
        next prediction. Elsewhere a mixed completion steps once per iteration."""
        return self.mixer is not None and self._host is not None

    def _decode(self, plan: Plan) -> RunResult:
        """Multi-step decoding: every row is a running completion's single-token sampling row
        with the same number of further steps (``Row.more``). The k steps run back to back
        here, each drawn token fed straight back, with one host copy at the end: the per-
        iteration costs (scheduling, delivery, one chunk message per alternative) are paid
        once per k characters instead of once per character. A row with a memory fork is
        mixed at each step exactly as ``_pick`` mixes a single step's sample point: its fork
        followed by the row's token and the tokens drawn so far predicts, the C mix writes
        the mixed log-probs, and those are what ``choose`` draws from."""
        rows, pool = plan.rows, self.pool
        k = 1 + len(rows[0].more)
        if (
            plan.writes
            or plan.reads
            or any(len(r.tokens) != 1 or r.sample is None or len(r.more) != k - 1 for r in rows)
        ):
            raise ValueError("a multi-step plan holds only single-token sampling rows with equal steps")
        mixer = self.mixer
        mixed = [p for p, r in enumerate(rows) if r.memory is not None] if mixer is not None else []
        if mixed and not self.decodes_mixed:  # the memory's predictions need each drawn token on the host
            raise ValueError("a multi-step plan holds no row mixed with a session memory on this device")
        t0 = time.perf_counter()
        pool.ensure_capacity(plan.capacity)
        b = len(rows)
        src = self._in.ints("decode_src", [r.src for r in rows])  # type: ignore[misc]
        state = pool.gather(src)  # [L, B, H] x arity
        tok = self._in.ints("decode_tok", [r.tokens[0] for r in rows])  # [B]
        forks = [fork_of(rows[p]) for p in mixed]
        read = [list(rows[p].tokens) for p in mixed]  # per mixed row: the tokens its point follows
        keep = torch.tensor([r.memory is not None for r in rows])[:, None] if 0 < len(mixed) < b else None
        drawn = []
        for j in range(k):
            out, state = self._step(tok, state)  # out [B, H]: the keystrokes' step, by token id
            scores = self.model.head(out).float()  # [B, V]
            if mixed:
                assert mixer is not None
                lsm = torch.log_softmax(scores, dim=-1)
                preds = [f.predict_after(ids) for f, ids in zip(forks, read, strict=True)]
                mix_on_host(mixer, lsm, mixed, preds)
                scores = lsm if keep is None else torch.where(keep, lsm, scores)
            nxt = choose(scores, [r.sample if j == 0 else r.more[j - 1] for r in rows])  # type: ignore[misc]
            drawn.append(nxt)
            if mixed and j < k - 1:
                now = nxt.tolist()
                for ids, p in zip(read, mixed, strict=True):
                    ids.append(now[p])
            tok = nxt
        host = torch.stack(drawn, dim=1).cpu().tolist()  # [B, k]: the one device->host copy
        self._pending = lambda: pool.scatter(self._in.ints("decode_dst", [r.dst for r in rows]), state)  # type: ignore[misc]
        results = [RowResult([], [], [], h[0], sampled_more=h[1:]) for h in host]
        return RunResult(results, [], [("completion", b * k, time.perf_counter() - t0)])

    # ---- one iteration: prepare -> forward -> pick -> unpack; commit() writes back ----------
    def _execute(self, plan: Plan) -> RunResult:
        prep = self._prepare(plan)
        fwd = self._forward(prep)
        host, points = self._pick(prep, fwd)
        results = self._unpack(prep, host, points)
        reads = [  # little-endian fp32 bytes, [layers, hidden] per state tensor (the start state)
            [t[:, slot].float().contiguous().cpu().numpy().astype("<f4").tobytes() for t in self.pool.tensors]
            for slot in plan.reads
        ]
        self._pending = lambda: self._write_back(prep, fwd.finals)
        return RunResult(results, reads, fwd.phases)

    def _prepare(self, plan: Plan) -> _Prepared:
        """Pools grown to the plan's capacity, rows grouped (steps, prefills, gate rows, peeks:
        gathering in this order makes each group a contiguous slice), start states gathered."""
        self.pool.ensure_capacity(plan.capacity)
        self.checkpoints.ensure_capacity(plan.checkpoint_capacity)
        rows = plan.rows
        steps: list[int] = []
        pres: list[int] = []
        gated: list[int] = []
        peeks: list[int] = []
        for i, r in enumerate(rows):  # one pass: a keystroke is a row
            n = len(r.tokens)
            (peeks if not n else gated if r.gates else steps if n == 1 else pres).append(i)
        order = steps + pres + gated + peeks
        start = self._start_states([rows[i] for i in order]) if order else ()
        return _Prepared(plan, steps, pres, gated, order, start)

    def _forward(self, prep: _Prepared) -> _Forward:
        """The model runs: one batched step for the single-token rows, one sequence call for
        the prefills, the reference cells for gate rows. Nothing is written to the pools."""
        rows, start, steps, pres, gated = prep.plan.rows, prep.start, prep.steps, prep.pres, prep.gated
        fwd = _Forward([[] for _ in rows])
        if not prep.order:
            return fwd
        fwd.bank_parts.append(start[0][-1])  # [R, H]: top-layer h = the output before any token
        cursor = len(prep.order)
        new_parts: list[tuple[torch.Tensor, ...]] = []
        if steps:
            t0 = time.perf_counter()
            b = len(steps)
            out1, new = self._step([rows[i].tokens[0] for i in steps], tuple(s[:, :b] for s in start))
            fwd.bank_parts.append(out1)
            for k, i in enumerate(steps):
                fwd.out_index[i] = [cursor + k]
            cursor += b
            new_parts.append(new)
            only_completions = all(rows[i].sample is not None for i in steps)
            fwd.phases.append(("completion" if only_completions else "step", b, time.perf_counter() - t0))
        if pres:
            t0 = time.perf_counter()
            lo, hi = len(steps), len(steps) + len(pres)
            lens = [len(rows[i].tokens) for i in pres]
            t_max = max(lens)
            out, new = self._prefill([rows[i].tokens for i in pres], tuple(s[:, lo:hi] for s in start))
            fwd.bank_parts.append(out.reshape(-1, out.shape[-1]))
            for k, i in enumerate(pres):
                base = cursor + k * t_max
                fwd.out_index[i] = list(range(base, base + lens[k]))
            cursor += len(pres) * t_max
            new_parts.append(new)
            fwd.phases.append(("prefill", sum(lens), time.perf_counter() - t0))
        if gated:
            t0 = time.perf_counter()
            lo = len(steps) + len(pres)
            for k, i in enumerate(gated):
                st = tuple(s[:, lo + k : lo + k + 1].contiguous() for s in start)
                outs, new, trace = self._run_gates(rows[i].tokens, st)
                fwd.bank_parts.append(outs)
                fwd.out_index[i] = list(range(cursor, cursor + outs.shape[0]))
                cursor += outs.shape[0]
                new_parts.append(new)
                fwd.gate_traces[i] = trace
            fwd.phases.append(("prefill", sum(len(rows[i].tokens) for i in gated), time.perf_counter() - t0))
        lo = len(steps) + len(pres) + len(gated)
        if lo < len(prep.order):  # peeks: the state is unchanged
            new_parts.append(tuple(s[:, lo:] for s in start))
        if len(new_parts) == 1:  # one phase (a step of keystrokes): its states as they are
            fwd.finals = list(new_parts[0])
        else:
            fwd.finals = [torch.cat([p[a] for p in new_parts], dim=1) for a in range(self.pool.arity)]
        return fwd

    def _pick(self, prep: _Prepared, fwd: _Forward) -> tuple[list[float], _Points]:
        """Where the served distribution is made: every hidden vector a result reads goes
        through the head in one matrix -> full log-probs per point [N, V] -> top-k, per-token
        log-probs and samples, packed into one flat tensor -> ONE device->host copy. On the
        CPU the top-k is one C call over the log-probs (``memory/_window.c: topk``) that
        returns the host numbers itself: a step of keystrokes then makes no pick-kernel call,
        no concatenation and no copy (at batch 1 each torch call costs several microseconds)."""
        rows, out_index = prep.plan.rows, fwd.out_index
        pts = _Points()
        pos_of: dict[int, int] = {}  # row -> its start state's place in the bank (made when needed)

        def before(i: int, t: int) -> int:
            """Bank index of the hidden vector that predicts token t of row i (t may be T)."""
            if t:
                return out_index[i][t - 1]
            if not pos_of:
                pos_of.update((i, p) for p, i in enumerate(prep.order))
            return pos_of[i]

        pick: list[int] = []
        top: list[float] = []  # the top-k's host numbers when made on the host (else in ``host``)
        mixes = self.mixer is not None
        for i in prep.order:
            r = rows[i]
            mixed = mixes and r.memory is not None
            for end, k in r.ends:
                if k > 0:
                    at = len(pick)
                    if mixed:
                        pts.mixed.append((at, i, end))
                    pts.topk.append((at, k))
                    pick.append(out_index[i][end - 1] if end else before(i, 0))
            if r.logprobs:
                for t, tok_id in enumerate(r.tokens):
                    if mixed:
                        pts.mixed.append((len(pick), i, t))
                    pts.logprob.append((len(pick), tok_id))
                    pick.append(before(i, t))
            if r.sample is not None:
                if mixed:
                    pts.mixed.append((len(pick), i, len(r.tokens)))
                pts.sample.append((len(pick), r.sample))
                pick.append(before(i, len(r.tokens)))
        flat: list[torch.Tensor] = []
        pts.kmax = max((k for _, k in pts.topk), default=0)
        if pick:
            logits = self.model.head(self._picked(fwd, pick))  # [N, V]
            pts.kmax = min(pts.kmax, logits.shape[1])
            ints, none = self._in.ints, self._none
            dev = logits.device
            mixing = normalized = False
            mix, gate = (none, none, none), (none, none, none, none, none)
            scores = logits  # what the pick kernel takes: logits, or log-probs mixed here
            topk_on_host = self._host is not None and logits.dtype == torch.float32
            if topk_on_host or (pts.mixed and self._host is not None):  # the log-probs made here, on the host
                scores = torch.log_softmax(logits.float(), dim=-1)
                normalized = True
            if pts.mixed and self._host is not None:  # ... and mixed here, in C
                assert self.mixer is not None
                preds = point_predictions(rows, [(i, t) for _, i, t in pts.mixed])
                mix_on_host(self.mixer, scores, [p for p, _, _ in pts.mixed], preds)
            elif pts.mixed:  # mixed inside the pick kernel (one Mixer.mix on the device)
                assert self.mixer is not None
                dists, host_f = point_arrays(rows, [(i, t) for _, i, t in pts.mixed], logits.shape[-1])
                mix = (ints("mix_at", [p for p, _, _ in pts.mixed]), dists.to(dev), host_f.to(dev))
                gate = self.mixer.weights(dev)
                mixing = True
            if topk_on_host and pts.topk:  # the top-k in C, straight into host numbers
                assert self._host is not None
                top = self._host.topk(scores.numpy(), scores.shape[1], [p for p, _ in pts.topk], pts.kmax)
            if topk_on_host and not pts.logprob:  # nothing left for the pick kernel (every keystroke)
                lsm = scores
            else:
                flat, lsm = _points(
                    scores,
                    mixing,
                    *mix,
                    gate,
                    MIX_EPS,
                    ints("topk_at", [p for p, _ in pts.topk]) if pts.topk and not topk_on_host else none,
                    pts.kmax,
                    ints("logprob_at", [p for p, _ in pts.logprob]) if pts.logprob else none,
                    ints("logprob_tok", [t for _, t in pts.logprob]) if pts.logprob else none,
                    normalized,
                )
            if pts.sample:
                s_at = ints("sample_at", [p for p, _ in pts.sample])
                s_logits = logits[s_at].float()  # [S, V]
                if pts.mixed:  # mixed points sample from the mixed log-probs (a softmax of them)
                    mixed_at = {p for p, _, _ in pts.mixed}
                    keep = torch.tensor([p in mixed_at for p, _ in pts.sample], device=lsm.device)
                    s_logits = torch.where(keep[:, None], lsm[s_at].float(), s_logits)
                flat.append(choose(s_logits, [sp for _, sp in pts.sample]).to(lsm.dtype))
        for i in prep.gated:
            flat.append(fwd.gate_traces[i].flatten())  # [T, G, L]
        host = torch.cat(flat).float().cpu().tolist() if flat else []  # the one device->host copy
        return (top + host if top else host), pts

    def _picked(self, fwd: _Forward, pick: list[int]) -> torch.Tensor:
        """The bank's hidden vectors at ``pick`` ([N, H]); when they are a single-step phase's
        outputs in order (a step of keystrokes), that output itself, with no copy."""
        parts = fwd.bank_parts
        if len(parts) > 1 and len(pick) == parts[1].shape[0]:
            first = parts[0].shape[0]  # the start states come first, then the single-step outputs
            if pick == list(range(first, first + len(pick))):
                return parts[1]
        bank = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)  # [N_bank, H]
        return bank.index_select(0, self._in.ints("pick", pick))

    def _unpack(self, prep: _Prepared, host: list[float], pts: _Points) -> list[RowResult]:
        """The host numbers per row, in the plan's row order."""
        rows, kmax = prep.plan.rows, pts.kmax
        results = [RowResult([], [], [], None) for _ in rows]
        n_tk = len(pts.topk)
        tk_vals, tk_idx = host[: n_tk * kmax], list(map(int, host[n_tk * kmax : 2 * n_tk * kmax]))
        cur = 2 * n_tk * kmax
        lp_vals = host[cur : cur + len(pts.logprob)]
        cur += len(pts.logprob)
        samples = host[cur : cur + len(pts.sample)]
        cur += len(pts.sample)
        tk_n = lp_n = s_n = 0
        for i in prep.order:
            r, res = rows[i], results[i]
            for _end, k in r.ends:
                if k > 0:
                    base = tk_n * kmax
                    end = base + min(k, kmax)
                    res.top_k.append(list(zip(tk_idx[base:end], tk_vals[base:end], strict=True)))
                    tk_n += 1
                else:
                    res.top_k.append([])
            if r.logprobs:
                res.logprobs = lp_vals[lp_n : lp_n + len(r.tokens)]
                lp_n += len(r.tokens)
            if r.sample is not None:
                res.sampled = int(samples[s_n])
                s_n += 1
        for i in prep.gated:
            assert self._ref is not None
            n_g, layers, t_len = len(self._ref.names), self.model.layers, len(rows[i].tokens)
            gv = host[cur : cur + t_len * n_g * layers]
            cur += t_len * n_g * layers
            results[i].gates = [
                [gv[(t * n_g + gi) * layers : (t * n_g + gi + 1) * layers] for gi in range(n_g)] for t in range(t_len)
            ]
        return results

    def read_states(self, slots: list[int]) -> list[list[bytes]]:
        """The states in ``slots`` as snapshot bytes (little-endian fp32, [layers, hidden] per
        state tensor), in one gather and one device-to-host copy (handoff exports: between
        steps, on the core thread)."""
        if not slots:
            return []
        index = torch.tensor(slots, dtype=torch.long, device=self.pool.tensors[0].device)
        host = [t.index_select(1, index).float().cpu() for t in self.pool.tensors]  # [L, B, H] each
        return [[h[:, i].contiguous().numpy().astype("<f4").tobytes() for h in host] for i in range(len(slots))]

    def commit(self) -> None:
        """Writes back what the last ``execute`` computed: row states, then checkpoints, then
        the plan's writes. The engine core calls it only once it has staged every answer of
        the iteration, so an iteration that fails anywhere before leaves every slot as it was."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with torch.inference_mode():
                pending()

    def _write_back(self, prep: _Prepared, finals: list[torch.Tensor]) -> None:
        pool, rows, order = self.pool, prep.plan.rows, prep.order
        if order:
            keep: list[int] = []
            dsts: list[int] = []
            ck: list[tuple[int, int]] = []
            for p, i in enumerate(order):  # one pass: a keystroke is a row
                r = rows[i]
                if r.dst is not None:
                    keep.append(p)
                    dsts.append(r.dst)
                if r.checkpoint is not None:
                    ck.append((p, r.checkpoint))
            if keep:
                dst = self._in.ints("dst", dsts)
                if len(keep) == len(order):
                    pool.scatter(dst, tuple(finals))
                else:
                    kp = self._in.ints("keep", keep)
                    pool.scatter(dst, tuple(f.index_select(1, kp) for f in finals))
            if ck:
                at = self._in.ints("ck_at", [p for p, _ in ck])
                self.checkpoints.scatter(
                    self._in.ints("ck_slot", [c for _, c in ck]),
                    tuple(f.index_select(1, at) for f in finals),
                )
        for slot, src in prep.plan.writes:
            for a, pt in enumerate(pool.tensors):
                if src is ZERO:
                    pt[:, slot].zero_()
                else:
                    pt[:, slot].copy_(self._tensors(src)[a])

    def _step(
        self, tokens: list[int] | torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The single-step phase: B rows of one token each (keystrokes, completion steps) as ONE
        batched step. tokens [B] (ids, or an int64 tensor of them on the device), state
        ([L, B, H] x arity) -> outputs [B, H], new state."""
        b = len(tokens)
        ids = tokens if isinstance(tokens, torch.Tensor) else self._in.ints("step_tok", tokens)  # [B]
        if self._by_id is not None:  # int8: the whole step in one call
            stepped = self._by_id(ids, state)
            if stepped is not None:
                return stepped
        st = tuple(s.contiguous() for s in state)
        with onednn(not self.on_cpu or b >= ONEDNN_MIN_STEP_BATCH):
            out, new = self._rnn(self.model.embed(ids.view(b, 1)), st)  # out [B, 1, H]
        return out[:, 0], new

    def _rnn(
        self, x: torch.Tensor | PackedSequence, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The one call into the model's recurrence: every phase (steps, prefills, multi-step
        decoding) runs through here, so a served variant of the model (another precision) is
        swapped in one place."""
        # rnn_forward takes a PackedSequence too (its annotation says Tensor only)
        return self.model.rnn_forward(x, state)  # type: ignore[arg-type]

    def _prefill(
        self, seqs: list[list[int]], state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The prefill phase: rows of several tokens (pastes, chunks, coalesced appends, rewind
        replays) as ONE sequence call. -> outputs [B, T_max, H] (zero past a row's length),
        final states ([L, B, H] x arity: each row's state after its own last token)."""
        lens = [len(t) for t in seqs]
        t_max = max(lens)
        padded = torch.zeros(len(seqs), t_max, dtype=torch.long)
        for k, toks in enumerate(seqs):
            padded[k, : lens[k]] = torch.tensor(toks)
        x = self.model.embed(padded.to(self.device))  # [B, T, E]
        st = tuple(s.contiguous() for s in state)
        if len(set(lens)) == 1:  # no padding: a plain sequence call (oneDNN's fused kernel on CPU)
            with onednn(True):
                return self._rnn(x, st)
        # packed: h_n is each row's own last step (never oneDNN on CPU: verified)
        packed = pack_padded_sequence(x, torch.tensor(lens), batch_first=True, enforce_sorted=False)
        out_p, new = self._rnn(packed, st)
        out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=t_max)  # type: ignore[arg-type]
        return out, new

    def _start_states(self, rows: Sequence[Row]) -> tuple[torch.Tensor, ...]:
        """Start state of each row ([L, R, H] x arity): its source slot, or ``init``."""
        src = self._in.ints("src", [r.src if r.src is not None else 0 for r in rows])
        start = self.pool.gather(src)
        for p, r in enumerate(rows):
            if r.src is None:
                for a, s in enumerate(start):
                    if r.init is ZERO:
                        s[:, p].zero_()
                    else:
                        s[:, p].copy_(self._tensors(r.init)[a])
        return start

    def _tensors(self, handle: object) -> tuple[torch.Tensor, ...]:
        """A state handle as tensors: a checkpoint is a view of its checkpoint-pool slot; a
        ``HostState`` is converted here (worker thread) once and cached on it."""
        if isinstance(handle, CheckpointRef):
            return tuple(t[:, handle.slot] for t in self.checkpoints.tensors)
        if isinstance(handle, HostState):
            if handle.device is None:
                handle.device = state_from_bytes(handle.raw, handle.layers, handle.hidden, self.device)
            return handle.device  # type: ignore[return-value]
        return handle  # type: ignore[return-value]

    def _run_gates(
        self, tokens: list[int], state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        """Reference-cell run of one row: outputs [T, H], final state ([L, 1, H] x arity) and
        gate means [T, G, L] (each gate averaged over the hidden units)."""
        if self._ref is None:
            self._ref = reference_cell(self.reference)
        emb = self.model.embed(torch.tensor(tokens, device=self.device))  # [T, E]
        outs, traces = [], []
        st = state
        for t in range(len(tokens)):
            st, gates = self._ref.step(emb[t : t + 1], st)
            outs.append(st[0][-1, 0])  # [H]
            traces.append(torch.stack([gates.gates[n][:, 0].mean(dim=-1) for n in gates.names]))  # [G, L]
        return torch.stack(outs), st, torch.stack(traces)


def state_from_bytes(raw: Sequence[bytes], layers: int, hidden: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A snapshot's little-endian fp32 bytes -> a state handle ([layers, hidden] x arity)."""
    return tuple(
        torch.from_numpy(np.frombuffer(b, dtype="<f4").astype(np.float32).reshape(layers, hidden)).to(device)
        for b in raw
    )


def _points_eager(
    logits: torch.Tensor,
    mixing: bool,
    mix_at: torch.Tensor,
    dists: torch.Tensor,
    host: torch.Tensor,
    gate: Gate,
    eps: float,
    topk_at: torch.Tensor,
    kmax: int,
    logprob_at: torch.Tensor,
    logprob_tok: torch.Tensor,
    normalized: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``_pick``'s arithmetic after the head, one scripted call (nn/scripted.py): logits [N, V]
    (``normalized``: log-probs already, mixed on the host: taken as they are) -> the full
    log-probs per point, the mixed points (rows ``mix_at``, when ``mixing``)
    replaced by the model mixed with their memory arrays (``Mixer.mix`` with the ``gate`` and
    floor ``eps``: float32 from there on), then the host numbers: top-``kmax``
    probabilities and indices at ``topk_at``, the log-prob of token ``logprob_tok`` at
    ``logprob_at`` (an empty index: none asked). -> (the flat parts, the log-probs)."""
    lsm = logits if normalized else torch.log_softmax(logits, dim=-1)  # [N, V]: the distribution per point
    if mixing:
        out = lsm.float()
        mixed = mix_log_probs(out[mix_at], dists, host, gate, eps)
        lsm = out.index_copy(0, mix_at, mixed)
    flat: list[torch.Tensor] = []
    if topk_at.numel() > 0:
        vals, idx = lsm[topk_at].topk(kmax, dim=-1)
        flat += [vals.exp().flatten(), idx.to(vals.dtype).flatten()]
    if logprob_at.numel() > 0:
        flat.append(lsm[logprob_at].gather(1, logprob_tok[:, None]).flatten())
    return flat, lsm


_points = scripted(_points_eager)
