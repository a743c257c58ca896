"""Executes one ``Plan`` on the device: the only torch-heavy engine module.

One iteration for one model, in the device worker thread:

1. gather the start state of every row from the pool (one ``index_select`` per state tensor);
2. single-token rows (keystrokes, completion steps) run as ONE batched step [B, 1];
   multi-token rows (pastes, coalesced appends, rewind replays) run as ONE packed sequence
   call; rows asking for gates run on the reference cells (slow path);
3. every hidden vector a result needs is picked into one matrix -> head -> log-softmax ->
   top-k / log-probs / sampling on the device, packed into one flat tensor -> ONE host copy;
4. final states are written back with ``index_copy_`` only after everything above succeeded,
   so a failed iteration leaves every session untouched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..nn.cells import GRUCellRef, LSTMCellRef, reference_cell
from ..nn.charlm import CharLM
from ..nn.kernels import ONEDNN_MIN_STEP_BATCH, onednn
from .buffers import InputBuffers
from .plan import ZERO, CheckpointRef, HostState, Plan, Row, RowResult, RunResult, SampleParams
from .sampling import choose
from .state_pool import StatePool

# Kernel choice on CPU, measured on the 2-core dev machine (2-layer, 512-unit LSTM, E=64,
# torch 2.13 CPU; best of 15 runs while two training jobs shared the cores, so absolute numbers
# are noisy but the ranking was stable across runs):
#   single step [B, 1]:   B=1   oneDNN 13.0 ms / native 0.98 ms;  B=16  19.2 / 1.96 ms;
#                         B=64  24.2 / 13.7 ms;                   B=256 22.9 / 33.7 ms
#   sequence, no padding: B=1 T=64  oneDNN 15.6 / native 30.8 ms; B=8 T=300 358 / 699 ms;
#                         B=4 T=64  26.6 / 117 ms; B=1 T=300 between 50/108 and 222/219 ms
#                         (B=1 long sequences: no stable winner under the contention)
#   packed sequences:     oneDNN verbose shows no oneDNN primitive at all: PackedSequence input
#                         always takes the native kernel, whatever the switch says.
# oneDNN's fixed per-call cost (weight reorders on every call) dominates small single steps;
# its fused sequence kernel wins once there are time steps and rows to amortise it.
# Rule: native kernels for single steps below ONEDNN_MIN_STEP_BATCH rows, oneDNN for larger
# steps and for unpadded sequence calls (all prefill rows of one length, including the common
# single paste); mixed lengths go packed (native on CPU, cuDNN on GPU) to keep final states exact.
# (ONEDNN_MIN_STEP_BATCH lives in nn.kernels: the offline decoders follow the same rule.)


class ModelRunner:
    def __init__(
        self, model: CharLM, pool: StatePool, checkpoints: StatePool | None = None, reference: CharLM | None = None
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

    def execute(self, plan: Plan) -> RunResult:
        with torch.inference_mode():
            if plan.rows and plan.rows[0].more:
                return self._decode(plan)
            return self._execute(plan)

    def _decode(self, plan: Plan) -> RunResult:
        """Multi-step decoding: every row is a running completion's single-token sampling row
        with the same number of further steps (``Row.more``). The k steps run back to back
        here, each drawn token fed straight back, with one host copy at the end: the per-
        iteration costs (scheduling, delivery, one chunk message per alternative) are paid
        once per k characters instead of once per character."""
        rows, pool = plan.rows, self.pool
        k = 1 + len(rows[0].more)
        if (
            plan.writes
            or plan.reads
            or any(len(r.tokens) != 1 or r.sample is None or len(r.more) != k - 1 for r in rows)
        ):
            raise ValueError("a multi-step plan holds only single-token sampling rows with equal steps")
        t0 = time.perf_counter()
        pool.ensure_capacity(plan.capacity)
        b = len(rows)
        src = self._in.ints("decode_src", [r.src for r in rows])  # type: ignore[misc]
        state = pool.gather(src)  # [L, B, H] x arity
        tok = self._in.ints("decode_tok", [r.tokens[0] for r in rows]).view(b, 1)  # [B, 1]
        drawn = []
        with onednn(not self.on_cpu or b >= ONEDNN_MIN_STEP_BATCH):
            for j in range(k):
                out, state = self.model.rnn_forward(self.model.embed(tok), state)  # out [B, 1, H]
                logits = self.model.head(out[:, 0])  # [B, V]
                nxt = choose(logits.float(), [r.sample if j == 0 else r.more[j - 1] for r in rows])  # type: ignore[misc]
                drawn.append(nxt)
                tok = nxt.view(b, 1)
        host = torch.stack(drawn, dim=1).cpu().tolist()  # [B, k]: the one device->host copy
        pool.scatter(self._in.ints("decode_dst", [r.dst for r in rows]), state)  # type: ignore[misc]
        results = [RowResult([], [], [], h[0], sampled_more=h[1:]) for h in host]
        return RunResult(results, [], [("completion", b * k, time.perf_counter() - t0)])

    # ------------------------------------------------------------------------------------
    def _execute(self, plan: Plan) -> RunResult:
        pool = self.pool
        pool.ensure_capacity(plan.capacity)
        self.checkpoints.ensure_capacity(plan.checkpoint_capacity)
        rows = plan.rows
        phases: list[tuple[str, int, float]] = []
        # Row order inside the batch: steps, prefills, gate rows, peeks. Gathering in this order
        # makes each group a contiguous slice of the gathered state.
        steps = [i for i, r in enumerate(rows) if len(r.tokens) == 1 and not r.gates]
        pres = [i for i, r in enumerate(rows) if len(r.tokens) > 1 and not r.gates]
        gated = [i for i, r in enumerate(rows) if r.tokens and r.gates]
        peeks = [i for i, r in enumerate(rows) if not r.tokens]
        order = steps + pres + gated + peeks
        pos_of = {i: p for p, i in enumerate(order)}
        n_rows = len(order)

        finals: list[torch.Tensor] = []  # per state tensor: [L, R, H] in `order`
        bank_parts: list[torch.Tensor] = []  # hidden vectors [*, H] results may point at
        out_index: list[list[int]] = [[] for _ in rows]  # row -> bank index of output after token t
        init_top_base = 0
        if n_rows:
            start = self._start_states([rows[i] for i in order])  # [L, R, H] x arity
            bank_parts.append(start[0][-1])  # [R, H]: top-layer h = the output before any token
            cursor = n_rows
            new_parts: list[tuple[torch.Tensor, ...]] = []
            if steps:
                t0 = time.perf_counter()
                b = len(steps)
                out1, new = self._step([rows[i].tokens[0] for i in steps], tuple(s[:, :b] for s in start))
                bank_parts.append(out1)
                for k, i in enumerate(steps):
                    out_index[i] = [cursor + k]
                cursor += b
                new_parts.append(new)
                only_completions = all(rows[i].sample is not None for i in steps)
                phases.append(("completion" if only_completions else "step", b, time.perf_counter() - t0))
            if pres:
                t0 = time.perf_counter()
                lo, hi = len(steps), len(steps) + len(pres)
                lens = [len(rows[i].tokens) for i in pres]
                t_max = max(lens)
                out, new = self._prefill([rows[i].tokens for i in pres], tuple(s[:, lo:hi] for s in start))
                bank_parts.append(out.reshape(-1, out.shape[-1]))
                for k, i in enumerate(pres):
                    base = cursor + k * t_max
                    out_index[i] = list(range(base, base + lens[k]))
                cursor += len(pres) * t_max
                new_parts.append(new)
                phases.append(("prefill", sum(lens), time.perf_counter() - t0))
            gate_traces: dict[int, torch.Tensor] = {}
            if gated:
                t0 = time.perf_counter()
                lo = len(steps) + len(pres)
                for k, i in enumerate(gated):
                    st = tuple(s[:, lo + k : lo + k + 1].contiguous() for s in start)
                    outs, new, trace = self._run_gates(rows[i].tokens, st)
                    bank_parts.append(outs)
                    out_index[i] = list(range(cursor, cursor + outs.shape[0]))
                    cursor += outs.shape[0]
                    new_parts.append(new)
                    gate_traces[i] = trace
                phases.append(("prefill", sum(len(rows[i].tokens) for i in gated), time.perf_counter() - t0))
            if peeks:
                lo = len(steps) + len(pres) + len(gated)
                new_parts.append(tuple(s[:, lo:] for s in start))
            finals = [torch.cat([p[a] for p in new_parts], dim=1) for a in range(pool.arity)]
        else:
            gate_traces = {}

        # ---- result points: every hidden vector a result reads, in one matrix ---------------
        def before(i: int, t: int) -> int:
            """Bank index of the hidden vector that predicts token t of row i (t may be T)."""
            return init_top_base + pos_of[i] if t == 0 else out_index[i][t - 1]

        pick: list[int] = []
        topk_pts: list[tuple[int, int]] = []  # (pick index, k)
        lp_pts: list[tuple[int, int]] = []  # (pick index, token)
        sample_pts: list[tuple[int, SampleParams]] = []
        for i in order:
            r = rows[i]
            for end, k in r.ends:
                if k > 0:
                    topk_pts.append((len(pick), k))
                    pick.append(before(i, end))
            if r.logprobs:
                for t, tok_id in enumerate(r.tokens):
                    lp_pts.append((len(pick), tok_id))
                    pick.append(before(i, t))
            if r.sample is not None:
                sample_pts.append((len(pick), r.sample))
                pick.append(before(i, len(r.tokens)))

        flat: list[torch.Tensor] = []
        kmax = max((k for _, k in topk_pts), default=0)
        if pick:
            bank = torch.cat(bank_parts, dim=0)  # [N_bank, H]
            hsel = bank.index_select(0, self._in.ints("pick", pick))  # [N, H]
            logits = self.model.head(hsel)  # [N, V]
            lsm = torch.log_softmax(logits, dim=-1)  # [N, V]
            if topk_pts:
                kmax = min(kmax, lsm.shape[1])
                vals, idx = lsm[self._in.ints("topk_at", [p for p, _ in topk_pts])].topk(kmax, dim=-1)  # [P, K]
                flat += [vals.exp().flatten(), idx.to(vals.dtype).flatten()]
            if lp_pts:
                sel = lsm[self._in.ints("logprob_at", [p for p, _ in lp_pts])]  # [Q, V]
                tok = self._in.ints("logprob_tok", [t for _, t in lp_pts])
                flat.append(sel.gather(1, tok[:, None]).flatten())
            if sample_pts:
                s_logits = logits[self._in.ints("sample_at", [p for p, _ in sample_pts])]  # [S, V]
                flat.append(choose(s_logits.float(), [sp for _, sp in sample_pts]).to(logits.dtype))
        for i in gated:
            flat.append(gate_traces[i].flatten())  # [T, G, L]
        host = torch.cat(flat).float().cpu().tolist() if flat else []  # the one device->host copy

        # ---- unpack the host numbers per row ------------------------------------------------
        results = [RowResult([], [], [], None) for _ in rows]
        cur = 0
        n_tk = len(topk_pts)
        tk_vals, tk_idx = host[: n_tk * kmax], host[n_tk * kmax : 2 * n_tk * kmax]
        cur = 2 * n_tk * kmax
        lp_vals = host[cur : cur + len(lp_pts)]
        cur += len(lp_pts)
        samples = host[cur : cur + len(sample_pts)]
        cur += len(sample_pts)
        tk_n = lp_n = s_n = 0
        for i in order:
            r, res = rows[i], results[i]
            for _end, k in r.ends:
                if k > 0:
                    base = tk_n * kmax
                    kk = min(k, kmax)
                    res.top_k.append([(int(tk_idx[base + j]), tk_vals[base + j]) for j in range(kk)])
                    tk_n += 1
                else:
                    res.top_k.append([])
            if r.logprobs:
                res.logprobs = lp_vals[lp_n : lp_n + len(r.tokens)]
                lp_n += len(r.tokens)
            if r.sample is not None:
                res.sampled = int(samples[s_n])
                s_n += 1
        for i in gated:
            assert self._ref is not None
            n_g, layers, t_len = len(self._ref.names), self.model.layers, len(rows[i].tokens)
            gv = host[cur : cur + t_len * n_g * layers]
            cur += t_len * n_g * layers
            results[i].gates = [
                [gv[(t * n_g + gi) * layers : (t * n_g + gi + 1) * layers] for gi in range(n_g)] for t in range(t_len)
            ]

        # ---- commit: write back states, then checkpoints, writes, reads ----------------------
        if n_rows:
            keep = [p for p, i in enumerate(order) if rows[i].dst is not None]
            if keep:
                dst = self._in.ints("dst", [rows[order[p]].dst for p in keep])  # type: ignore[misc]
                if len(keep) == n_rows:
                    pool.scatter(dst, tuple(finals))
                else:
                    kp = self._in.ints("keep", keep)
                    pool.scatter(dst, tuple(f.index_select(1, kp) for f in finals))
            ck = [(p, rows[i].checkpoint) for p, i in enumerate(order) if rows[i].checkpoint is not None]
            if ck:
                at = self._in.ints("ck_at", [p for p, _ in ck])
                self.checkpoints.scatter(
                    self._in.ints("ck_slot", [c for _, c in ck]),  # type: ignore[misc]
                    tuple(f.index_select(1, at) for f in finals),
                )
        for slot, src in plan.writes:
            for a, pt in enumerate(pool.tensors):
                if src is ZERO:
                    pt[:, slot].zero_()
                else:
                    pt[:, slot].copy_(self._tensors(src)[a])
        reads = [  # little-endian fp32 bytes, [layers, hidden] per state tensor
            [t[:, slot].float().contiguous().cpu().numpy().astype("<f4").tobytes() for t in pool.tensors]
            for slot in plan.reads
        ]
        return RunResult(results, reads, phases)

    def _step(
        self, tokens: list[int], state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The single-step phase: B rows of one token each (keystrokes, completion steps) as ONE
        batched step. tokens [B], state ([L, B, H] x arity) -> outputs [B, H], new state."""
        b = len(tokens)
        tok = self._in.ints("step_tok", tokens).view(b, 1)  # [B, 1]
        st = tuple(s.contiguous() for s in state)
        with onednn(not self.on_cpu or b >= ONEDNN_MIN_STEP_BATCH):
            out, new = self.model.rnn_forward(self.model.embed(tok), st)  # out [B, 1, H]
        return out[:, 0], new

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
                return self.model.rnn_forward(x, st)
        # packed: h_n is each row's own last step (never oneDNN on CPU: verified)
        packed = pack_padded_sequence(x, torch.tensor(lens), batch_first=True, enforce_sorted=False)
        # rnn_forward takes a PackedSequence too (its annotation says Tensor only)
        out_p, new = self.model.rnn_forward(packed, st)  # type: ignore[arg-type]
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
