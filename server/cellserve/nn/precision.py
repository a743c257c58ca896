"""Serving precision: the numeric format a model's steps run in, and the module that runs them.

- ``fp32``: the model as loaded; every other precision is measured against it.
- ``int8`` (CPU): ``nn.int8.FixedRangeRNN``: int8 weights, activations quantized on the fixed
  range [-1, 1], stepped one time step at a time in every phase, and the output Linear at int8
  the same way; layer 1's input projection is an exact fp32 table. A row's numbers are bitwise
  independent of its batch companions and of how its text was cut into calls (``nn/int8.py``).
  ``quantize_dynamic_int8`` (torch's ``quantize_dynamic``, per-call activation ranges: not
  batch- or cut-invariant) stays for comparisons (scripts/bench_precision.py).
- ``fp16`` / ``bf16`` (for CUDA; they run on CPU too, slowly): half weights in the recurrent
  layers and the output Linear behind an fp32 boundary. Inputs and state are cast in, outputs
  and state cast back, so the state pool, checkpoints and snapshots stay fp32 at every
  precision and a snapshot resumes on a server of any precision.

The embedding is never converted (a lookup: nothing to gain). The serving module is a
``CharLM`` with the same surface (``embed``, ``rnn_forward``, ``head``, ``forward``), so the
engine calls it exactly as it calls the fp32 model. Gates (InspectGates, ``want_gates``)
always come from the fp32 reference cells: gates are what users inspect.

``auto`` (``resolve``): on CPU, int8 when the model's recorded int8 loss (``cellserve eval``:
the worst held-out package's bits/char relative to fp32) is within ``max_loss``, else fp32;
unrecorded means fp32 (quantization error depends on the weights). On CUDA, fp16 unless its
recorded loss exceeds the bound (half rounding with fp32 state is far below int8's
quantization error, so it needs no measurement to be taken), then bf16 when recorded within the
bound, else fp32.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal, cast, get_args

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .charlm import CharLM
from .int8 import FixedRangeRNN, batch_invariant_int8
from .spec import Quality

Precision = Literal["auto", "fp32", "int8", "bf16", "fp16"]
Served = Literal["fp32", "int8", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
HALF: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}


class PrecisionUnavailable(ValueError):
    """The requested precision cannot run on this device; the message says what can."""


def available(device: torch.device) -> tuple[Served, ...]:
    """Precisions this device can serve, fp32 first."""
    if device.type == "cpu":
        int8: tuple[Served, ...] = ("int8",) if int8_supported() else ()
        return ("fp32", *int8, "fp16", "bf16")
    if device.type == "cuda":
        bf16: tuple[Served, ...] = ("bf16",) if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else ()
        return ("fp32", "fp16", *bf16)
    return ("fp32",)


def int8_supported() -> bool:
    """A quantized CPU engine (x86/fbgemm, onednn or qnnpack) is built in."""
    return any(e != "none" for e in torch.backends.quantized.supported_engines)


def resolve(requested: Precision, device: torch.device, quality: Quality | None, max_loss: float) -> Served:
    """The precision to serve at: ``requested`` itself unless it is ``auto`` (module docstring).
    Raises ``PrecisionUnavailable`` for an explicit precision the device cannot run."""
    can = available(device)
    if requested != "auto":
        if requested not in can:
            if requested == "int8":
                where = "CPU-only (dynamic quantization)" if device.type != "cpu" else "not built into this torch"
            else:
                where = f"not available on {device.type}"
            raise PrecisionUnavailable(f"{requested} is {where}; this device serves {', '.join(can)}")
        return requested
    if device.type == "cpu":
        return "int8" if "int8" in can and _within(quality, "int8", max_loss, unrecorded=False) else "fp32"
    for name in ("fp16", "bf16"):
        if name in can and _within(quality, name, max_loss, unrecorded=name == "fp16"):
            return cast(Served, name)
    return "fp32"


def recorded_loss(quality: Quality | None, precision: str) -> float | None:
    """The recorded relative bits/char loss of ``precision`` (worst package), if measured."""
    q = quality.precision(precision) if quality is not None else None
    return None if q is None else q.relative_loss


def _within(quality: Quality | None, precision: str, max_loss: float, *, unrecorded: bool) -> bool:
    loss = recorded_loss(quality, precision)
    return unrecorded if loss is None else loss <= max_loss


def convert(model: CharLM, precision: Served) -> CharLM:
    """The module that serves ``model`` at ``precision`` (``model`` itself for fp32; otherwise a
    copy, the fp32 model is left as it is)."""
    if precision == "fp32":
        return model
    if precision == "int8":
        return quantize_int8(model)
    return to_half(model, HALF[precision])


_DYNAMIC = {nn.LSTM, nn.GRU, nn.Linear}


def quantize_int8(model: CharLM) -> CharLM:
    """The int8 serving module of ``model`` (CPU): batch- and cut-invariant (``nn/int8.py``)."""
    if model.embed.weight.device.type != "cpu":
        raise PrecisionUnavailable("int8 is CPU-only (dynamic quantization)")
    q = batch_invariant_int8(model)
    if not isinstance(q.rnn, FixedRangeRNN):  # pragma: no cover - a guard against a refactor
        raise RuntimeError("int8 left the recurrent layers unquantized")
    return q


def quantize_dynamic_int8(model: CharLM) -> CharLM:
    """torch's dynamic int8 copy of ``model`` (CPU): recurrent layers and the output Linear,
    activation ranges taken per call (not batch- or cut-invariant; kept for comparisons)."""
    if model.embed.weight.device.type != "cpu":
        raise PrecisionUnavailable("int8 is CPU-only (dynamic quantization)")
    with warnings.catch_warnings():
        # torch marks torch.ao.quantization deprecated in favour of torchao (not a dependency);
        # quantize_dynamic is still the tool that measured the gain, and it warns on each use.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        q = cast(CharLM, torch.ao.quantization.quantize_dynamic(model, _DYNAMIC, dtype=torch.qint8))  # type: ignore[no-untyped-call]
    # a torch that stopped mapping a layer would otherwise serve it at fp32 under the int8 label
    for part in (q.rnn, q.head):
        if not type(part).__module__.startswith("torch.ao.nn.quantized.dynamic"):
            raise RuntimeError(f"quantize_dynamic left {type(part).__name__} unquantized")
    return q.eval()


def to_half(model: CharLM, dtype: torch.dtype) -> CharLM:
    """A copy of ``model`` with half recurrent layers and output Linear behind an fp32 boundary."""
    half = copy.deepcopy(model)
    # CharLM calls them as it calls nn.LSTM/nn.GRU and nn.Linear (the annotations say those)
    half.rnn = HalfBoundary(half.rnn, dtype)  # type: ignore[assignment]
    half.head = HalfBoundary(half.head, dtype)  # type: ignore[assignment]
    return half.eval()


class HalfBoundary(nn.Module):
    """Runs ``inner`` (an nn.LSTM, nn.GRU or nn.Linear) in ``dtype``; what goes in (a tensor,
    a PackedSequence, a state tensor or tuple) is cast to ``dtype`` and what comes out back
    to fp32, so callers and the state pool see fp32 only."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor | PackedSequence, *state: object) -> object:
        out = self.inner(x.to(self.dtype), *(_cast(s, self.dtype) for s in state))
        return _cast(out, torch.float32)


def _cast(value: object, dtype: torch.dtype) -> object:
    """Tensors and PackedSequences (also inside tuples) cast to ``dtype``; None as it is."""
    if isinstance(value, torch.Tensor | PackedSequence):
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return value
