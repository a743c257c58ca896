"""Save and load model folders (model.json + weights.safetensors). No pickle anywhere.

Loading checks everything a server relies on and raises ``ModelFileError`` naming the file
and the field: missing files, invalid JSON or schema, missing/unexpected tensors, wrong
shapes (including a vocabulary whose size disagrees with the embedding), wrong dtypes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import ModelFileError
from .charlm import CharLM
from .spec import SPEC_FILE, WEIGHTS_FILE, ModelSpec
from .vocab import Vocab

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: CharLM  # fp32: the reference (gates, offline tools)
    vocab: Vocab
    weights_sha256: str  # identifies the weights: snapshots only resume on the same hash
    folder: Path | None = None  # where it was loaded from (files stored beside it, e.g. units.json)
    precision: str = "fp32"  # what the served steps run at (nn/precision.py; the repository sets it)
    served: CharLM | None = None  # the module those steps run on; None: ``model`` itself

    @property
    def serving(self) -> CharLM:
        """The module the engine steps: ``served`` at ``precision``, else the fp32 model."""
        return self.model if self.served is None else self.served


def build_model(spec: ModelSpec) -> CharLM:
    return CharLM(spec.cell, len(spec.vocabulary), spec.embedding, spec.hidden, spec.layers)


def save_model(folder: Path, spec: ModelSpec, model: CharLM) -> None:
    """Writes ``folder/model.json`` and ``folder/weights.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = _DTYPES[spec.dtype]
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "cellserve-charlm", "name": spec.name})
    (folder / SPEC_FILE).write_text(json.dumps(spec.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    # safetensors writes 0600; model folders are shipped and read by other users (the container's
    # non-root user), so both files are world-readable like any other source file.
    for name in (WEIGHTS_FILE, SPEC_FILE):
        (folder / name).chmod(0o644)


def read_spec(folder: Path) -> ModelSpec:
    path = folder / SPEC_FILE
    if not path.is_file():
        raise ModelFileError(str(path), "(file)", "missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(str(path), "(file)", f"not valid JSON ({e})") from None
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise ModelFileError(str(path), loc, err["msg"]) from None


def load_model(folder: Path | str, device: torch.device | str = "cpu") -> LoadedModel:
    """Loads and validates a model folder; the model is in eval mode on ``device``, fp32 compute."""
    folder = Path(folder)
    spec = read_spec(folder)
    wpath = folder / WEIGHTS_FILE
    if not wpath.is_file():
        raise ModelFileError(str(wpath), "(file)", "missing")
    blob = wpath.read_bytes()
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(str(wpath), "(file)", f"not a valid safetensors file ({e})") from None
    model = build_model(spec)
    expected = model.state_dict()
    for name in sorted(set(expected) - set(tensors)):
        raise ModelFileError(str(wpath), name, "tensor missing")
    for name in sorted(set(tensors) - set(expected)):
        raise ModelFileError(str(wpath), name, "unexpected tensor")
    want_dtype = _DTYPES[spec.dtype]
    for name in expected:  # model order: embed, rnn layer by layer, head
        t = tensors[name]
        if tuple(t.shape) != tuple(expected[name].shape):
            hint = ""
            if name in ("embed.weight", "head.weight", "head.bias") and t.shape[0] != len(spec.vocabulary):
                hint = f" (model.json vocabulary has {len(spec.vocabulary)} entries, weights have {t.shape[0]})"
            raise ModelFileError(
                str(wpath),
                name,
                f"shape {tuple(t.shape)} does not match model.json, expected {tuple(expected[name].shape)}{hint}",
            )
        if t.dtype != want_dtype:
            raise ModelFileError(str(wpath), name, f"dtype {t.dtype} does not match model.json dtype {spec.dtype}")
        if not torch.isfinite(t).all():
            raise ModelFileError(str(wpath), name, "contains NaN or infinite values")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    model.to(device).eval()
    return LoadedModel(spec, model, Vocab(spec.vocabulary), hashlib.sha256(blob).hexdigest(), folder)
