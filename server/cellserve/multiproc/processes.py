"""The entry points of the child processes (started by ``supervisor`` with multiprocessing's
spawn method; each reports to the parent over a one-way pipe).

- ``run_core``: loads the models, starts the core's threads (``core_server``: no event loop)
  and the metrics endpoint, binds the internal socket, reports ``("ready", metrics_port)``.
  SIGTERM: drain the engine, stop, exit 0.
- ``run_frontend``: connects to the core, waits for its first answer, serves gRPC on the shared
  port, reports ``("listening", port)``. Its health follows the core's (polled every
  ``CORE_POLL_S``). SIGTERM: the usual drain of ``ApiServer.shutdown``. SIGUSR1 (sent by the
  parent when the core died): every call fails with UNAVAILABLE and health is NOT_SERVING.

Both ignore SIGINT (a terminal's Ctrl-C reaches the whole group; the parent decides) and die
with the parent (``lifecycle.die_with_parent``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import ModelFileError
from ..logs import configure_logging
from .lifecycle import die_with_parent

if TYPE_CHECKING:
    from ..api.health import Health
    from ..engine.ledger import LedgerHandle
    from .client import ZmqEngineClient
    from .routing import RoutingEngineClient

log = logging.getLogger("cellserve.supervisor")

EXIT_CONFIG = 2
CORE_POLL_S = 0.5  # a frontend's health (and its metric events) follow the core this often
CORE_ANSWER_S = 2.0  # the core not answering a health poll this long: NOT_SERVING
FIRST_ANSWER_S = 60.0  # a new frontend waits this long for the core's first answer


def _child_setup(settings: Settings, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings)


def run_core(
    settings: Settings, addresses: list[str], index: int, ledger: LedgerHandle | None, conn: Connection, parent_pid: int
) -> None:
    """Core ``index`` of ``len(addresses)``, bound at ``addresses[index]``; ``ledger``: the
    shared admission ledger of a server with several cores."""
    _child_setup(settings, parent_pid)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see serve.run_serve
    _exit(_core_main(settings, addresses, index, ledger, conn))


def _core_main(
    settings: Settings, addresses: list[str], index: int, ledger: LedgerHandle | None, conn: Connection
) -> int:
    """The engine core process: no event loop. The main thread starts the threads
    (``CoreServer``: input, core, output; the gate thread) and waits for SIGTERM. Core 0
    serves the metrics endpoint; another core reports to core 0 instead."""
    import threading

    import zmq

    from ..boot import load_models, new_metrics, start_metrics, tune_gc
    from ..engine.core import EngineCore
    from ..engine.ledger import Ledger
    from ..engine.shards import Shard
    from ..errors import Unavailable
    from ..metrics import MetricsEndpoint
    from .core_server import CoreServer
    from .gate_thread import GateThread

    try:
        repository = load_models(settings)
    except ModelFileError as e:
        conn.send(("error", f"cannot start: {e}"))
        return EXIT_CONFIG
    shard = Shard(index, len(addresses))
    core = EngineCore(settings, repository, ledger=Ledger.attach(ledger) if ledger else None, shard=shard)
    if settings.cpu_threads and core.device.type == "cpu":
        import torch

        torch.set_num_threads(settings.cpu_threads)
    endpoint: MetricsEndpoint | None = None
    if index == 0:
        try:
            metrics, endpoint = start_metrics(settings, core)
        except OSError as e:
            conn.send(("error", f"cannot serve metrics on {_address(settings)}: {e}"))
            return EXIT_CONFIG
    else:
        metrics = new_metrics(settings, core)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gates = GateThread(repository.get)
    server = CoreServer(core, ctx, addresses[index], settings, metrics, gates, report_to=addresses[0] if index else "")
    tune_gc(settings)  # before the core thread starts: what it makes from now on is all the collector walks
    gates.start()
    server.start()
    conn.send(("ready", endpoint.port if endpoint is not None else 0))
    code = 0
    while not stop.wait(CORE_POLL_S):  # the main thread takes the signal between waits
        if not server.alive:  # a thread died: a bug; exit so the parent restarts the pod
            log.error("a thread of the engine core stopped")
            code = 1
            break
    if code == 0:
        log.info("engine core: draining for at most %.1f s", settings.drain_grace_s)
        try:
            if not server.drain(settings.drain_grace_s):
                log.warning("engine drain did not finish within drain_grace_s=%s", settings.drain_grace_s)
        except TimeoutError:
            log.warning("the engine core did not answer while draining")
    server.stop(Unavailable("server is stopping"))
    gates.stop()
    ctx.term()
    try:
        metrics.observe_stats(core.stats())  # the last counters (the core thread is gone)
    except Exception:  # noqa: BLE001 (metrics must never block the exit)
        log.exception("reading engine statistics failed")
    if endpoint is not None:
        endpoint.close()
    return code


def _address(settings: Settings) -> str:
    host, port = settings.metrics_host, settings.metrics_port
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def run_frontend(settings: Settings, index: int, addresses: list[str], conn: Connection, parent_pid: int) -> None:
    _child_setup(settings, parent_pid)
    _exit(asyncio.run(_frontend_main(settings, index, addresses, conn)))


def _exit(code: int) -> None:
    """Everything was closed in order: leave without the interpreter's teardown, which can
    take seconds (torch) or wait on library threads, while the parent counts the drain."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _frontend_main(settings: Settings, index: int, addresses: list[str], conn: Connection) -> int:
    from ..api import ApiServer
    from ..api.server import format_address
    from ..api.transport import TlsFileError
    from ..boot import tune_gc
    from ..tokens import TokensFileError
    from .client import ForwardingRecorder, ZmqEngineClient
    from .gates import CoreGates
    from .routing import RoutingEngineClient

    recorder = ForwardingRecorder()  # events go to core 0 (the metrics endpoint)
    cores = [
        ZmqEngineClient(
            address,
            index,
            recorder if i == 0 else None,
            settings.core_call_deadline_s,
            settings.core_send_queue_messages,
        )
        for i, address in enumerate(addresses)
    ]
    client: ZmqEngineClient | RoutingEngineClient = cores[0] if len(cores) == 1 else RoutingEngineClient(cores)
    await client.start()
    try:
        async with asyncio.timeout(FIRST_ANSWER_S):
            await client.health("")
    except (TimeoutError, Exception) as e:  # noqa: BLE001 (reported to the parent)
        conn.send(("error", f"frontend {index}: the engine core does not answer ({type(e).__name__})"))
        await client.stop()
        return 1
    try:
        api = ApiServer(
            settings,
            client,
            recorder=recorder,
            reuse_port=True,
            frontend=str(index),
            gates=CoreGates(client, settings),
            handoff_writer=index == 0,  # one writer per replica (drain, background sync)
            tokens_source=client.tokens,
        )
    except (TokensFileError, TlsFileError) as e:  # names the file and the problem
        conn.send(("error", f"cannot start: {e}"))
        await client.stop()
        return EXIT_CONFIG
    try:
        port = await api.start()
    except (OSError, RuntimeError) as e:
        conn.send(("error", f"cannot listen on {format_address(settings.host, settings.port)}: {e}"))
        await client.stop()
        return EXIT_CONFIG
    tune_gc(settings)
    conn.send(("listening", port))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def core_lost() -> None:
        log.error("frontend %d: the engine core is gone: health NOT_SERVING", index)
        client.core_lost()
        tasks.add(asyncio.create_task(api.health.set_serving(False)))

    tasks: set[asyncio.Task[None]] = set()
    loop.add_signal_handler(signal.SIGUSR1, core_lost)
    if api.tokens is not None:  # SIGHUP (forwarded by the supervisor): re-read the tokens file now
        loop.add_signal_handler(signal.SIGHUP, api.tokens.reload)
    watcher = asyncio.create_task(follow_core(client, api.health))
    await stop.wait()
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await api.shutdown()
    client.flush_metrics()
    await client.stop()
    log.info("frontend %d: drained and stopped", index)
    return 0


async def follow_core(client: ZmqEngineClient | RoutingEngineClient, health: Health) -> None:
    """Health follows the core: SERVING while it answers and takes sessions. Runs until
    cancelled; each poll also carries the frontend's metric events.

    The poll's bound is ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 a
    ``wait_for`` whose awaited answer lands in the same pass as a cancellation returns the
    answer and drops the cancellation, and this loop then never ended. A frontend told to stop
    (SIGTERM) about as its poll was answered hung until the supervisor killed it, after the
    whole drain grace (tests/api/test_core_wire.py rebuilds that race)."""
    serving = True
    while True:
        await asyncio.sleep(CORE_POLL_S)
        client.flush_metrics()
        try:
            now = False
            if client.connected:
                async with asyncio.timeout(CORE_ANSWER_S):
                    now = (await client.health("")).serving
        except Exception:  # noqa: BLE001 (no answer, or the core is gone: not serving)
            now = False
        if now != serving:
            serving = now
            log.warning("engine core %s", "answers again" if now else "is not serving: health NOT_SERVING")
            await health.set_serving(now)
