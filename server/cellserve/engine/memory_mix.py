"""The session memory on the served path (docs/session-memory.md): which model mixes, with
what settings, the memory each planned row starts from, and the memory arrays of a step's
mixed points.

The runner mixes in ``_pick``, the one place full per-row log-probs exist: the memory arrays
of every point of the step are built here on the host (small: [experts, V] per point), moved
to the distribution's device once and mixed with ONE ``Mixer.mix`` call. A row's memory is a
fork as of the row's start; the point before token t of the row sees that fork plus the row's
first t tokens, exactly as an offline memory that read the same text (``memory/reference.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..config import Settings
from ..memory.features import memory_arrays_many
from ..memory.mixer import MIXER_FILE, Mixer
from ..memory.settings import MemorySettings
from ..memory.window import MemoryFork
from ..nn.checkpoint import LoadedModel
from .plan import Row

if TYPE_CHECKING:
    from .scheduler import Batch


def load_mixer(lm: LoadedModel, settings: Settings, device: torch.device) -> Mixer | None:
    """The model's mixer when it ships one (``mixer.safetensors`` beside its weights) and the
    server mixes at all (``Settings.memory``); None: the model serves its own distribution."""
    if not settings.memory or lm.folder is None or not (lm.folder / MIXER_FILE).exists():
        return None
    return Mixer.load(lm.folder, device)


def memory_settings(settings: Settings) -> MemorySettings:
    """The served memory: the serving window, and a rewind margin as deep as Rewind reaches."""
    return MemorySettings(window=settings.memory_window, max_rewind=settings.rewind_window)


def attach_memory(b: Batch) -> None:
    """Gives every row that serves a distribution its session's memory as of the row's
    start (a fork: the runner never changes a memory; pushes happen at commit). A run that
    starts with a write starts from the memory the write installs; a run finishing (or a
    chunk continuing) a piece sees the piece's characters applied so far."""
    rows = b.plan.rows
    for run in b.appends:
        head = run.ops[0]
        base = run.leading_write.memory if run.leading_write is not None else run.session.memory
        if base is None or not all(op.options.memory for op in run.ops):
            continue  # per request: an op that turns the memory off serves the model alone
        fork = base.fork()
        fork.push(head.tokens[: run.first_done])
        rows[run.row].memory = fork
    for sw in b.steps:
        alt, c = sw.alt, sw.completion
        if alt.memory is None and alt.last_token is None and c.request.memory and c.session.memory is not None:
            alt.memory = c.session.memory.fork()  # the first character: the session's memory
        rows[sw.row].memory = alt.memory


def point_arrays(
    rows: Sequence[Row], points: Sequence[tuple[int, int]], vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked memory arrays ([P, EXPERTS, V], [P, HOST_FEATURES], host tensors) of the points
    (row index, tokens of the row read before the point), in the order given: each point's
    prediction is its row's fork followed by those tokens (the fork itself is not changed)."""
    preds = []
    for i, t in points:
        fork = rows[i].memory
        assert isinstance(fork, MemoryFork)
        preds.append(fork.predict_after(rows[i].tokens[:t]))
    dists, host = memory_arrays_many(preds, vocab_size)
    return torch.from_numpy(dists), torch.from_numpy(host)
