"""The session memory on the served path (docs/session-memory.md): which model mixes, with
what settings, the memory each planned row starts from, and the memory arrays of a step's
mixed points.

The runner mixes in ``_pick``, the one place full per-row log-probs exist. A row's memory is
the session's memory as of the row's start (the memory itself, or a fork); the point before
token t of the row sees that memory plus the row's first t tokens, exactly as an offline memory
that read the same text (``memory/reference.py``).
Two ways, the same arithmetic:

- on a GPU (or where the memory's C extension was not built): the memory arrays of every
  point of the step are built here on the host (small: [experts, V] per point), moved to the
  distribution's device once and mixed with ONE ``Mixer.mix`` call (``point_arrays``);
- on the CPU: ``mix_on_host``, one C call over the step's predictions (memory/_window.c:
  ``mix``) that keeps each expert sparse (its few characters) instead of multiplying dense
  [experts, V] arrays. It agrees with ``Mixer.mix`` to float32 rounding (its sums run in
  double), and a row mixes to the same bits whatever rows share the call (speculation relies
  on that).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from ..config import Settings
from ..memory import features, window
from ..memory.features import memory_arrays_many
from ..memory.mixer import EPS, MIXER_FILE, Mixer
from ..memory.settings import MemorySettings
from ..memory.window import MemoryFork, MemoryPrediction, SessionMemory
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
    start (the runner never changes a memory; pushes happen at commit). A run that starts
    with a write starts from the memory the write installs; a run finishing (or a chunk
    continuing) a piece sees the piece's characters applied so far, through a fork. Any other
    run (every keystroke) gets the memory itself: nothing changes it before the runner's
    pick (only a commit pushes, after it), and a fork per keystroke cost about a microsecond."""
    rows = b.plan.rows
    for run in b.appends:
        base = run.leading_write.memory if run.leading_write is not None else run.session.memory
        ops = run.ops
        if base is None or not (ops[0].options.memory if len(ops) == 1 else all(op.options.memory for op in ops)):
            continue  # per request: an op that turns the memory off serves the model alone
        if run.first_done:
            fork = base.fork()
            fork.push(ops[0].tokens[: run.first_done])
            rows[run.row].memory = fork
        else:
            rows[run.row].memory = base
    for sw in b.steps:
        alt, c = sw.alt, sw.completion
        if alt.memory is None and alt.last_token is None and c.request.memory and c.session.memory is not None:
            alt.memory = c.session.memory.fork()  # the first character: the session's memory
        rows[sw.row].memory = alt.memory


def point_predictions(rows: Sequence[Row], points: Sequence[tuple[int, int]]) -> list[MemoryPrediction]:
    """The memory's prediction at each point (row index, tokens of the row read before the
    point), in the order given: the row's fork followed by those tokens (the fork itself is
    not changed)."""
    preds = []
    for i, t in points:
        r = rows[i]
        preds.append(fork_of(r).predict_after(r.tokens[:t] if t < len(r.tokens) else r.tokens))
    return preds


def fork_of(row: Row) -> MemoryFork | SessionMemory:
    """The memory ``attach_memory`` (or a completion, or speculation) gave ``row``: a fork, or a
    session's memory itself (a row that is mixed has one; the runner only predicts from it)."""
    fork = row.memory
    assert isinstance(fork, MemoryFork | SessionMemory)
    return fork


def point_arrays(
    rows: Sequence[Row], points: Sequence[tuple[int, int]], vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked memory arrays ([P, EXPERTS, V], [P, HOST_FEATURES], host tensors) of the points
    (``point_predictions``), for ``Mixer.mix``."""
    dists, host = memory_arrays_many(point_predictions(rows, points), vocab_size)
    return torch.from_numpy(dists), torch.from_numpy(host)


def host_kernels(device: torch.device) -> ModuleType | None:
    """The C extension (memory/_window.c: the mix, and the pick's top-k) when the runner on
    ``device`` uses it (the CPU, where it was built); else None."""
    return window._native if device.type == "cpu" else None


def mixes_on_host(device: torch.device) -> bool:
    """The runner on ``device`` mixes with ``mix_on_host`` (the CPU, with the C extension)."""
    return host_kernels(device) is not None


def mix_on_host(mixer: Mixer, lsm: torch.Tensor, at: Sequence[int], preds: Sequence[MemoryPrediction]) -> None:
    """Writes the mix of ``lsm``'s rows ``at`` (the model's log-probs: float32 [N, V] on the
    CPU, contiguous) with the predictions ``preds`` (one per row of ``at``, in that order)
    over those rows, in ONE C call (memory/_window.c: ``mix``; ``Mixer.mix`` is its reference).
    ``at`` ascending: all of ``lsm``'s rows are mixed in place, others through a copy."""
    native = window._native
    assert native is not None and lsm.dtype == torch.float32 and lsm.is_contiguous()
    if not preds:
        return
    w1, b1, w2, b2 = mixer.host_weights()
    whole = len(at) == lsm.shape[0]  # ascending and as many as the rows: all of them, in order
    rows = None if whole else torch.tensor(at)
    part = lsm if rows is None else lsm[rows]
    native.mix(part.numpy(), preds, w1, b1, w2, b2, lsm.shape[1], EPS, features._LOG_OCC_OF, features._LOG_MATCH_OF)
    if rows is not None:
        lsm[rows] = part
