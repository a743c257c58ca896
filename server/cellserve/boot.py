"""Starting the pieces a server process is made of: the models and the engine, the metrics
endpoint. Shared by ``serve`` (one process) and ``multiproc.processes`` (the engine core
process), so neither imports the other.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import TYPE_CHECKING

from .config import Settings

if TYPE_CHECKING:
    from .engine.core import EngineCore
    from .engine.engine import Engine
    from .metrics import Metrics, MetricsEndpoint
    from .repository import ModelRepository

log = logging.getLogger("cellserve.serve")


def load_models(settings: Settings) -> ModelRepository:
    """The served models (raises ``ModelFileError``), logged one line each."""
    # Imported here: torch and the models load only when serving, not to print --help.
    from .repository import ModelRepository

    repository = ModelRepository.load(settings)  # resolves settings.device ("auto": CUDA if available)
    log_loaded(repository)
    return repository


async def start_engine(settings: Settings) -> Engine:
    from .engine.engine import Engine

    engine = Engine(settings, load_models(settings))
    await engine.start()
    return engine


def tune_gc(settings: Settings) -> None:
    """Once the process has loaded what it serves, before it serves: that is collected once
    and frozen (never walked again by the cyclic collector), and young collections wait for
    ``gc_young_threshold`` objects (Settings.gc_young_threshold)."""
    if settings.gc_young_threshold == 0:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(settings.gc_young_threshold, older, oldest)


def log_loaded(repository: ModelRepository) -> None:
    """One line per model and one for the device: what this process actually serves."""
    for name in repository.names():
        lm = repository.get(name)
        s = lm.spec
        loss = repository.info(name).precision_loss
        log.info(
            "loaded model %s%s: %s %dx%d, %d symbols, weights sha256 %s, served at %s%s",
            name,
            " (default)" if name == repository.default else "",
            s.cell,
            s.layers,
            s.hidden,
            len(s.vocabulary),
            lm.weights_sha256[:12],
            lm.precision,
            "" if loss is None else f" (recorded held-out loss {loss:+.2%} bits/char)",
        )
    log.info("serving %d model(s) on device %s", len(repository.names()), repository.device)


def new_metrics(settings: Settings, engine: Engine | EngineCore) -> Metrics:
    """The metrics of this engine, not served (another core of a ``--cores K`` server reports
    them to core 0)."""
    from .metrics import Metrics, cuda_memory_reader

    return Metrics(
        (m.name for m in engine.models()),
        sessions_max=settings.max_sessions,
        device_memory=cuda_memory_reader(engine.device),
    )


def start_metrics(settings: Settings, engine: Engine | EngineCore) -> tuple[Metrics, MetricsEndpoint]:
    """The metrics of this engine, served over HTTP on their own port (raises OSError)."""
    metrics = new_metrics(settings, engine)
    return metrics, metrics.serve(settings.metrics_host, settings.metrics_port, settings.metrics_max_threads)


async def stop_metrics(poller: asyncio.Task[None], endpoint: MetricsEndpoint) -> None:
    poller.cancel()
    await asyncio.gather(poller, return_exceptions=True)
    await asyncio.to_thread(endpoint.close)  # shutdown() waits for the serving thread's loop
