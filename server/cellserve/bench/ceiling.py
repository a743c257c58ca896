"""The compute ceiling: the model alone, batched, in this process. No gRPC, no sessions, no
pool gather/scatter: only what a server must compute per keystroke.

- keystrokes: one step [B, 1] -> head -> log-softmax -> top-5 -> host, from a state held in
  plain tensors; the better of oneDNN on and off (the ceiling, whatever the kernel rule). At
  int8 the same step of torch's ``quantize_dynamic`` of the same weights is timed beside it
  (``dynamic_step_s``: not served, its activation ranges are per call, but the yardstick of
  int8's floor, issue 19);
- completions: greedy decoding at batch B: step -> head -> argmax -> host -> next input;
- memory (a model that ships a mixer): the session memory's own work per keystroke, batched as
  the server batches it: each row's prediction from its memory after the keystroke, the step's
  ONE mixing call as the runner makes it (on the CPU ``memory_mix.mix_on_host``; on a GPU the
  memory arrays and ``Mixer.mix``), and the keystroke pushed at commit. Not part of the model's
  step above; a served distribution needs both.

The model runs at the precision a server with default settings would serve it at
(``self.precision``). Timing: median of repeated calls (robust to the machine's noise) after a warm-up.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..config import Settings
from ..engine.memory_mix import load_mixer, memory_settings, mix_on_host, mixes_on_host, point_arrays, point_predictions
from ..engine.plan import Row
from ..memory.window import SessionMemory
from ..nn.charlm import CharLM
from ..nn.checkpoint import load_model
from ..nn.kernels import onednn
from ..nn.precision import quantize_dynamic_int8
from ..nn.spec import SPEC_FILE
from ..repository import at_precision
from .model import ModelRef


def _median_time(fn: Callable[[], None], seconds: float, sync: Callable[[], None], min_reps: int = 5) -> float:
    for _ in range(2):
        fn()
    sync()
    times: list[float] = []
    stop = time.perf_counter() + seconds
    while len(times) < min_reps or time.perf_counter() < stop:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10_000:
            break
    return statistics.median(times)


MEMORY_TYPED = 128  # characters each session has read when the memory's timing starts (about
# what a session of the bench's closed-loop runs has typed by then)


class Ceiling:
    def __init__(self, ref: ModelRef, device: str, threads: int) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        # the module a server with default settings steps (nn/precision.py: int8 on CPU when recorded
        # within the bound, half on CUDA), so the ceiling is the floor of what the servers run
        loaded = at_precision(load_model(ref.folder, self.device), Settings(), self.device, ref.folder / SPEC_FILE)
        self.model, self.precision = loaded.serving, loaded.precision
        self.vocab = loaded.vocab
        self.mixer = load_mixer(loaded, Settings(), self.device)
        self.dynamic = quantize_dynamic_int8(loaded.model) if self.precision == "int8" else None
        self.threads = torch.get_num_threads()
        self.on_cpu = self.device.type == "cpu"

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def keystrokes(self, batch: int, seconds: float) -> dict[str, Any]:
        """Keystrokes/s at ``batch`` sessions per step (at int8, also ``dynamic_step_s``)."""
        best = self._step(self.model, batch, seconds)
        best["batch"], best["precision"] = batch, self.precision
        best["throughput_rps"] = batch / best["step_s"]
        if self.dynamic is not None:
            best["dynamic_step_s"] = self._step(self.dynamic, batch, seconds)["step_s"]
        return best

    def _step(self, m: CharLM, batch: int, seconds: float) -> dict[str, Any]:
        """The median step time of ``m`` at ``batch`` rows, the better kernel's."""
        tok = torch.randint(1, m.vocab_size, (batch, 1), device=self.device)
        st = m.init_state(batch, self.device)

        def step() -> None:
            x = m.embed(tok)
            out, _ = m.rnn_forward(x, st)
            lsm = torch.log_softmax(m.head(out[:, 0]), dim=-1)
            v, i = lsm.topk(5, dim=-1)
            torch.cat([v.exp().flatten(), i.to(v.dtype).flatten()]).cpu().tolist()

        best: dict[str, Any] = {}
        with torch.inference_mode():
            for kernel in [True, False] if self.on_cpu else [True]:
                with onednn(kernel):
                    t = _median_time(step, seconds / 2, self._sync)
                if not best or t < best["step_s"]:
                    best = {"step_s": t, "kernel": ("onednn" if kernel else "native") if self.on_cpu else "cuda"}
        return best

    def completions(self, batch: int, chars: int, seconds: float) -> dict[str, Any]:
        """Generated characters/s when ``batch`` greedy completions of ``chars`` run together."""
        m = self.model

        def decode() -> None:
            tok = torch.ones(batch, 1, dtype=torch.long, device=self.device)
            st = m.init_state(batch, self.device)
            for _ in range(chars):
                out, st = m.rnn_forward(m.embed(tok), st)
                nxt = m.head(out[:, 0]).argmax(dim=-1)
                nxt.cpu().tolist()  # the server must see every character
                tok = nxt.view(batch, 1)

        best: dict[str, Any] = {}
        with torch.inference_mode():
            for kernel in [True, False] if self.on_cpu else [True]:
                with onednn(kernel):
                    t = _median_time(decode, seconds / 2, self._sync, min_reps=3)
                if not best or t < best["decode_s"]:
                    best = {"decode_s": t, "kernel": ("onednn" if kernel else "native") if self.on_cpu else "cuda"}
        best.update(batch=batch, chars=chars, chars_per_s=batch * chars / best["decode_s"], precision=self.precision)
        return best

    def memory(self, batch: int, seconds: float, text: str) -> dict[str, Any] | None:
        """The session memory's CPU per keystroke at ``batch`` rows per step (``row_s``), each
        row a session typing ``text`` from its own place, with ``MEMORY_TYPED`` characters read
        before timing starts; None: the model ships no mixer (it serves no memory)."""
        mixer = self.mixer
        if mixer is None:
            return None
        ids = self.vocab.encode(text)
        v = self.model.vocab_size
        span = max(1, len(ids) - MEMORY_TYPED)
        at = [(i * 7919) % span for i in range(batch)]  # where each session types (as the load does)
        mems = [SessionMemory.rebuild(ids[a : a + MEMORY_TYPED], memory_settings(Settings())) for a in at]
        at = [a + MEMORY_TYPED for a in at]
        lsm = torch.log_softmax(torch.randn(batch, v, device=self.device), dim=-1)

        on_host = mixes_on_host(self.device)

        def step() -> None:
            rows = [Row([ids[a]], src=None, memory=m.fork()) for m, a in zip(mems, at, strict=True)]
            points = [(i, 1) for i in range(batch)]  # after the keystroke
            if on_host:  # as the runner mixes on the CPU: one C call over the predictions
                mix_on_host(mixer, lsm.clone(), range(batch), point_predictions(rows, points))
            else:
                dists, host = point_arrays(rows, points, v)
                mixer.mix(lsm, dists.to(self.device), host.to(self.device)).cpu()
            for k, (m, a) in enumerate(zip(mems, at, strict=True)):  # the commit reads it
                m.push([ids[a]])
                at[k] = (a + 1) % len(ids)

        with torch.inference_mode():
            t = _median_time(step, seconds / 2, self._sync)
        return {"batch": batch, "step_s": t, "row_s": t / batch, "typed_before": MEMORY_TYPED}
