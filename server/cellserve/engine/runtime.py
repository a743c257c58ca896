"""One served model inside the engine core: its state pools, runner, scheduler, beam searches
and the work waiting for it (``ModelRuntime``), built per model of the repository
(``build_runtimes``). Owned by the core thread like the rest of the core.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import CapacityExceeded
from ..memory.mixer import Mixer
from ..nn.cells import GRU_GATES, LSTM_GATES
from ..nn.checkpoint import LoadedModel
from ..repository import ModelRepository
from .beam import BeamSearches
from .memory_mix import load_mixer
from .plan import CheckpointRef
from .rewind import RewindLog
from .runner import ModelRunner
from .scheduler import Scheduler
from .speculation import EXACT_PRECISIONS, Speculator
from .state_pool import SlotAllocator, StatePool
from .types import ModelInfo

if TYPE_CHECKING:
    from .completions import Completion
    from .sessions import AppendOp, Session

# Scratch slots for chunked prefill (one per piece being applied in chunks at a time); beyond
# this many, a long piece runs whole (over the iteration budget) rather than wait.
CHUNK_SLOTS = 64

log = logging.getLogger(__name__)

RunnerFactory = Callable[[LoadedModel, StatePool, StatePool], Any]


@dataclass(eq=False)
class ModelRuntime:
    """One served model: its pool, runner, scheduler and the work waiting for it."""

    name: str
    loaded: LoadedModel
    info: ModelInfo
    alloc: SlotAllocator
    pool: StatePool
    ck_alloc: SlotAllocator  # the checkpoint pool (rewind checkpoints), slot-indexed like ``pool``
    ck_pool: StatePool
    runner: ModelRunner
    scheduler: Scheduler
    gate_names: tuple[str, ...]
    checkpoint_every: int  # a session's rewind log (Settings.checkpoint_every, rewind_window)
    rewind_window: int
    work: dict[Session, None] = field(default_factory=dict)  # sessions with queued ops (ordered set)
    completions: dict[Completion, None] = field(default_factory=dict)  # started, still running
    beams: BeamSearches = field(init=False)  # ranked suggestions (engine/beam.py)
    speculator: Speculator = field(init=False)  # speculative keystrokes (engine/speculation.py)
    decode_step_s: float = 0.0  # the latest completion iteration's time per step
    mixer: Mixer | None = None  # the session memory's mixer; None: this model serves no memory
    scratch_used: int = 0  # chunked-prefill scratch slots held (<= CHUNK_SLOTS)

    def take_scratch(self) -> int | None:
        if self.scratch_used >= CHUNK_SLOTS:
            return None
        try:
            slot = self.alloc.alloc()
        except CapacityExceeded:
            return None
        self.scratch_used += 1
        return slot

    def take_checkpoint(self) -> int | None:
        try:
            return self.ck_alloc.alloc()
        except CapacityExceeded:  # not reached: slots_max covers every log's bound
            return None

    def release_checkpoint(self, handle: object) -> None:
        """A ``RewindLog`` dropped ``handle``: its checkpoint slot is free again (a read of it
        in the running step lands before any new owner's write, as for state slots)."""
        if isinstance(handle, CheckpointRef):
            self.ck_alloc.free(handle.slot)

    def free_scratch(self, op: AppendOp) -> None:
        if op.scratch is not None:
            self.alloc.free(op.scratch)
            self.scratch_used -= 1
            op.scratch = None

    def new_history(self, position: int, state: object) -> RewindLog:
        """A session's rewind log starting at ``position`` with ``state``."""
        return RewindLog(self.checkpoint_every, self.rewind_window, position, state, self.release_checkpoint)


def build_runtimes(
    settings: Settings, repository: ModelRepository, runner_factory: RunnerFactory | None
) -> dict[str, ModelRuntime]:
    """Every model of the repository, in its order. ``runner_factory(loaded, pool,
    checkpoint_pool)`` builds each model's runner (anything with ``execute(plan) ->
    RunResult``); the default is ``ModelRunner``."""
    device = repository.device
    slots_max = settings.max_sessions + settings.max_running_completions + CHUNK_SLOTS + settings.speculation_slots
    # a session's log holds at most window / every + 2 checkpoints, plus one planned per step,
    # and a speculative guess at most one
    ck_max = settings.max_sessions * (settings.rewind_window // settings.checkpoint_every + 3)
    ck_max += settings.speculation_slots
    if settings.rewind_window == 0:
        ck_max = 0
    mixers = {name: load_mixer(repository.get(name), settings, device) for name in repository.names()}
    make_runner = runner_factory or (
        lambda lm, pool, ck: ModelRunner(lm.serving, pool, ck, reference=lm.model, mixer=mixers[lm.spec.name])
    )
    runtimes: dict[str, ModelRuntime] = {}
    for name in repository.names():
        lm = repository.get(name)
        m = lm.model
        pool = StatePool(m.layers, m.hidden, m.state_arity, device)
        ck_pool = StatePool(m.layers, m.hidden, m.state_arity, device)
        rt = ModelRuntime(
            name,
            lm,
            repository.info(name),
            SlotAllocator(settings.pool_chunk, slots_max),
            pool,
            SlotAllocator(settings.pool_chunk, ck_max),
            ck_pool,
            make_runner(lm, pool, ck_pool),
            Scheduler(lm.vocab.encode),
            LSTM_GATES if m.cell == "lstm" else GRU_GATES,
            settings.checkpoint_every,
            settings.rewind_window,
        )
        rt.scheduler = Scheduler(lm.vocab.encode, rt.take_scratch, rt.take_checkpoint)
        rt.beams = BeamSearches(lm.serving, lm.vocab)
        rt.mixer = getattr(rt.runner, "mixer", None)  # a runner that cannot mix serves no memory
        rt.beams.mixer = rt.mixer
        exact = rt.info.precision in EXACT_PRECISIONS
        if settings.speculation and not exact:
            log.info("speculative keystrokes off for %s: %s steps are not batch-invariant", name, rt.info.precision)
        rt.speculator = Speculator(
            settings, settings.speculation and exact, lm.vocab, rt.runner, rt.alloc, rt.ck_alloc, rt.mixer is not None
        )
        runtimes[name] = rt
    return runtimes
