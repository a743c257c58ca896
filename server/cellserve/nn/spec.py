"""model.json: the description of a model folder, validated by pydantic.

A model folder ``models/<name>/`` holds ``model.json`` (this schema) and
``weights.safetensors`` (tensors named exactly as ``CharLM.state_dict()``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_VERSION = 1


class Provenance(BaseModel):
    """How the weights were made, so a model can be reproduced and judged."""

    model_config = ConfigDict(extra="forbid")

    corpus: str = Field(description="What the model was trained on (human-readable).")
    train_chars: int = Field(ge=0, description="Characters in the training split.")
    validation_chars: int = Field(ge=0, description="Characters in the validation split.")
    steps: int = Field(ge=0, description="Optimizer steps taken.")
    wall_seconds: float = Field(ge=0, description="Wall-clock training time.")
    seed: int = Field(description="Random seed of the run.")
    device: str = Field(description="Device trained on, e.g. 'cpu' or 'cuda (NVIDIA H200)'.")
    git_commit: str = Field(description="Commit of the code that trained it ('unknown' outside git).")
    command: str = Field(default="", description="The command line that trained it.")
    init_from: str = Field(
        default="",
        description="Model the weights were initialised from (name, weights sha256 prefix), '' for a fresh start.",
    )


class _PackageText(BaseModel):
    """The text a held-out score was measured on."""

    model_config = ConfigDict(extra="forbid")

    package: str = Field(description="Held-out package name (never trained on).")
    chars: int = Field(ge=1, description="Characters of its source measured.")


class HeldOutScore(_PackageText):
    """bits/char on one held-out package, beside general-purpose compressors on the same text."""

    bits_per_char: float = Field(gt=0, description="The model's bits/char on that text.")
    bzip2_bits_per_char: float = Field(gt=0, description="bzip2 -9 on the same text (UTF-8), bits per character.")
    xz_bits_per_char: float = Field(gt=0, description="xz -9e on the same text (UTF-8), bits per character.")


class PackageLoss(_PackageText):
    """bits/char on one held-out package at a reduced precision and at fp32, on the same text."""

    bits_per_char: float = Field(gt=0, description="bits/char at the precision.")
    fp32_bits_per_char: float = Field(gt=0, description="bits/char at fp32 on the same text, same method.")

    @property
    def relative_loss(self) -> float:
        """How much worse than fp32, as a fraction of fp32's bits/char (negative: better)."""
        return self.bits_per_char / self.fp32_bits_per_char - 1.0


class PrecisionQuality(BaseModel):
    """A reduced serving precision measured on the held-out packages (``cellserve eval``)."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["int8", "fp16", "bf16"] = Field(description="The serving precision measured.")
    device: str = Field(description="Where it was measured, e.g. 'cpu' or 'cuda (NVIDIA H200)'.")
    heldout: list[PackageLoss] = Field(min_length=1, description="Per held-out package, beside fp32.")

    @property
    def relative_loss(self) -> float:
        """The worst package's loss: what ``precision_max_loss`` is compared with."""
        return max(p.relative_loss for p in self.heldout)


class Quality(BaseModel):
    model_config = ConfigDict(extra="forbid")

    validation_bits_per_char: float = Field(gt=0, description="Mean bits/char on the validation split.")
    heldout: list[HeldOutScore] = Field(
        default_factory=list, description="Per held-out package scores (empty for an explicit corpus)."
    )
    precisions: list[PrecisionQuality] = Field(
        default_factory=list,
        description="Reduced serving precisions measured against fp32 (at most one entry per precision); "
        "`auto` serves a precision only when its loss here is within the server's bound.",
    )

    @field_validator("precisions")
    @classmethod
    def _one_per_precision(cls, v: list[PrecisionQuality]) -> list[PrecisionQuality]:
        names = [q.precision for q in v]
        if len(set(names)) != len(names):
            raise ValueError("at most one entry per precision")
        return v

    def precision(self, name: str) -> PrecisionQuality | None:
        """The recorded measurement of ``name``, if any."""
        return next((q for q in self.precisions if q.precision == name), None)


class MemoryHeldOut(BaseModel):
    """bits/char on one held-out package with the session memory off and on."""

    model_config = ConfigDict(extra="forbid")

    package: str = Field(description="Held-out package name (never trained on).")
    chars: int = Field(ge=1, description="Characters measured (read as one session from its start).")
    bits_per_char_off: float = Field(gt=0, description="The model alone.")
    bits_per_char_on: float = Field(gt=0, description="The model mixed with the session memory.")
    zpaq_bits_per_char: float | None = Field(
        default=None, description="zpaq -m5 on the same text (UTF-8), bits per character; None without zpaq."
    )
    saved_greedy_off: float | None = Field(default=None, description="`cellserve eval`: greedy savings, model alone.")
    saved_greedy_on: float | None = Field(default=None, description="`cellserve eval`: greedy savings with memory.")
    saved_top3_off: float | None = Field(default=None, description="`cellserve eval`: top-3 savings, model alone.")
    saved_top3_on: float | None = Field(default=None, description="`cellserve eval`: top-3 savings with memory.")
    saved_trie: float | None = Field(default=None, description="`cellserve eval`: the prefix trie's savings.")


class MemoryMixer(BaseModel):
    """The session memory's mixer of this model (``mixer.safetensors``): how it was trained and
    how it does held out."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(default="mixer.safetensors", description="Weights file in the model folder.")
    window: int = Field(ge=1, description="Memory window (characters) it was trained and measured with.")
    command: str = Field(description="The command line that trained it.")
    corpus: str = Field(description="What it was trained on (training corpus only).")
    train_chars: int = Field(ge=0, description="Characters of training text read (rows).")
    train_bits_per_char: float = Field(ge=0, description="bits/char of the mixed distribution on those rows.")
    date: str = Field(description="When it was trained (UTC, ISO 8601).")
    git_commit: str = Field(description="Commit of the code that trained it.")
    wall_seconds: float = Field(ge=0, description="Wall-clock time of the run.")
    heldout: list[MemoryHeldOut] = Field(default_factory=list, description="Per held-out package.")
    eval_command: str = Field(default="", description="The `cellserve eval` run whose savings are recorded here.")


class ModelSpec(BaseModel):
    """Architecture, vocabulary, provenance and quality of one model."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = Field(default=1, description="model.json schema version (FORMAT_VERSION).")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="Model name; its folder name.")
    cell: Literal["lstm", "gru"] = Field(description="Recurrent cell type.")
    layers: int = Field(ge=1, le=16, description="Stacked recurrent layers.")
    hidden: int = Field(ge=1, le=8192, description="Hidden units per layer.")
    embedding: int = Field(ge=1, le=8192, description="Character embedding size.")
    vocabulary: list[str] = Field(
        min_length=2,
        description='Ordered characters; entry 0 is "" and stands for every unknown character.',
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(default="float32", description="Stored weight dtype.")
    precision: Literal["auto", "fp32", "int8", "bf16", "fp16"] = Field(
        default="auto",
        description="Serving precision of this model when the server's `precision` setting is auto "
        "(see docs/precision.md); auto: the rule by device and recorded quality.",
    )
    provenance: Provenance
    quality: Quality | None = Field(default=None, description="Absent until the model was evaluated.")
    memory: MemoryMixer | None = Field(default=None, description="The session memory's mixer; absent: memory off.")

    @field_validator("vocabulary")
    @classmethod
    def _check_vocabulary(cls, v: list[str]) -> list[str]:
        if v[0] != "":
            raise ValueError('entry 0 must be "" (reserved for unknown characters)')
        if any(len(ch) != 1 for ch in v[1:]):
            bad = next(i for i, ch in enumerate(v[1:], 1) if len(ch) != 1)
            raise ValueError(f"entry {bad} must be exactly one character, got {v[bad]!r}")
        if len(set(v)) != len(v):
            raise ValueError("characters must be unique")
        return v
