"""Settings of the session memory (bounds and meaning of each knob)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MemorySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)

    window: int = Field(default=32_768, ge=64, le=1 << 20)
    """Characters of the session's own text the memory learns from (the last ones); older text
    leaves the statistics. Bytes per session grow about linearly with it (``SessionMemory.nbytes``)."""
    max_rewind: int = Field(default=256, ge=0, le=100_000)
    """Characters beyond the window kept so a rewind this far back is exact (the engine's
    ``rewind_window``)."""
    occurrences: int = Field(default=32, ge=1, le=1024)
    """Most recent occurrences of each context counted (bounds the CPU per keystroke)."""
    max_links: int = Field(default=256, ge=1, le=65_536)
    """Hash-chain links walked per context at most (bounds the CPU on adversarial text)."""
