"""The model repository: loads, validates and lists the models the server serves.

``settings.model_dir`` holds one folder per model (``model.json`` + ``weights.safetensors``,
see ``cellserve.nn.spec``). Every folder is loaded at start (or only ``settings.models``), so
a broken model fails the start with ``ModelFileError`` naming the file and field, never a
request later. Lookups by clients raise ``NotFound`` without any path in the message.

Each model is served at the precision ``settings.precision`` (or, when that is auto, its
model.json ``precision``) resolves to on the device (``cellserve.nn.precision``): the loaded
model's ``served`` module, built once here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import Settings
from .engine.types import ModelInfo
from .errors import ModelFileError, NotFound
from .nn import precision
from .nn.checkpoint import LoadedModel, load_model
from .nn.spec import SPEC_FILE


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda[:n]' must be available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelFileError("settings", "device", f"{name} requested but CUDA is not available")
    return dev


class ModelRepository:
    def __init__(self, models: dict[str, LoadedModel], default: str, device: torch.device) -> None:
        if default not in models:
            raise ValueError(f"default model {default!r} is not among the loaded models")
        self._models = models
        self.default = default
        self.device = device

    @classmethod
    def load(cls, settings: Settings, device: torch.device | str | None = None) -> ModelRepository:
        """Loads ``settings.models`` (all folders when empty) from ``settings.model_dir``."""
        dev = resolve_device(settings.device) if device is None else torch.device(device)
        root = Path(settings.model_dir)
        if not root.is_dir():
            raise ModelFileError(str(root), "(folder)", "model directory does not exist")
        if settings.models:
            names = list(dict.fromkeys(settings.models))
            for n in names:
                if not (root / n).is_dir():
                    raise ModelFileError(str(root / n), "(folder)", "model folder does not exist")
        else:
            names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise ModelFileError(str(root), "(folder)", f"no model folders (each needs a {SPEC_FILE})")
        models: dict[str, LoadedModel] = {}
        for n in names:
            lm = load_model(root / n, dev)
            if lm.spec.name != n:
                raise ModelFileError(
                    str(root / n / SPEC_FILE), "name", f"{lm.spec.name!r} differs from the folder name {n!r}"
                )
            models[n] = at_precision(lm, settings, dev, root / n / SPEC_FILE)
        if settings.default_model:
            if settings.default_model not in models:
                raise ModelFileError(
                    "settings", "default_model", f"{settings.default_model!r} is not among the loaded models"
                )
            default = settings.default_model
        else:
            default = min(models, key=lambda n: (_bits(models[n]), n))
        return cls(models, default, dev)

    def get(self, name: str | None = None) -> LoadedModel:
        """The named model, or the default for None/""; ``NotFound`` for unknown names."""
        key = name or self.default
        lm = self._models.get(key)
        if lm is None:
            raise NotFound("unknown model")
        return lm

    def names(self) -> list[str]:
        return list(self._models)

    def infos(self) -> list[ModelInfo]:
        return [self.info(n) for n in self._models]

    def info(self, name: str) -> ModelInfo:
        lm = self.get(name)
        s = lm.spec
        return ModelInfo(
            name=s.name,
            cell=s.cell,
            layers=s.layers,
            hidden=s.hidden,
            vocabulary=tuple(s.vocabulary),
            weights_sha256=lm.weights_sha256,
            validation_bits_per_char=s.quality.validation_bits_per_char if s.quality else None,
            is_default=s.name == self.default,
            precision=lm.precision,
            precision_loss=precision.recorded_loss(s.quality, lm.precision),
        )


def at_precision(lm: LoadedModel, settings: Settings, device: torch.device, spec_path: Path) -> LoadedModel:
    """Sets ``lm.precision`` and builds ``lm.served``: the setting, or the model's own choice
    when the setting is auto. A precision the device cannot run fails the start, naming where
    it was asked for."""
    requested = settings.precision if settings.precision != "auto" else lm.spec.precision
    try:
        lm.precision = precision.resolve(requested, device, lm.spec.quality, settings.precision_max_loss)
    except precision.PrecisionUnavailable as e:
        where = ("settings", "precision") if settings.precision != "auto" else (str(spec_path), "precision")
        raise ModelFileError(*where, str(e)) from None
    lm.served = precision.convert(lm.model, lm.precision)
    return lm


def _bits(lm: LoadedModel) -> float:
    return lm.spec.quality.validation_bits_per_char if lm.spec.quality else float("inf")
