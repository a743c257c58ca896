"""`cellserve serve`: load the models, start the engine and the gRPC server, drain on SIGTERM.

Settings come from flags given explicitly, then ``CELLSERVE_*`` environment variables, then
defaults (``Settings.load``); they are validated before anything starts, and a bad value exits
with status 2 and a message naming the field. With no arguments the server serves the models
in models/ (the default model: the one with the lowest validation bits/char).

SIGTERM/SIGINT: health turns NOT_SERVING, streams stop reading and answer what they have read,
the engine refuses new sessions (UNAVAILABLE) and finishes in-flight work, the gRPC server
stops within ``drain_grace_s``, the engine stops, and the process exits 0.

``--frontends N`` (N >= 1; ``CELLSERVE_FRONTENDS``) runs the same server as one engine-core
process and N gRPC frontend processes on the port (``cellserve.multiproc``); 0 is the single
process described above. The default follows the CPU count (``config.default_frontends``).
``--cores K`` (with frontends) runs K engine-core processes, the sessions partitioned among them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .boot import start_engine, start_metrics, stop_metrics, tune_gc
from .config import ENV_PREFIX, Settings
from .errors import ModelFileError
from .logs import configure_logging

log = logging.getLogger("cellserve.serve")

EXIT_CONFIG = 2  # a bad setting or an unusable model folder: fix the configuration, do not retry
SNAPSHOT_KEY_ENV = ENV_PREFIX + "SNAPSHOT_KEY"

# (flag, Settings field, argparse keywords). Values stay strings: pydantic parses and
# validates them, so an error names the field exactly as it does for environment variables.
_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--model-dir", "model_dir", {}),
    ("--model", "models", {"action": "append", "metavar": "NAME"}),
    ("--default-model", "default_model", {}),
    ("--device", "device", {}),
    ("--precision", "precision", {"metavar": "auto|fp32|int8|bf16|fp16"}),
    ("--cpu-threads", "cpu_threads", {}),
    ("--frontends", "frontends", {"metavar": "N"}),
    ("--cores", "cores", {"metavar": "K"}),
    ("--host", "host", {}),
    ("--port", "port", {}),
    ("--metrics-host", "metrics_host", {}),
    ("--metrics-port", "metrics_port", {}),
    ("--max-sessions", "max_sessions", {}),
    ("--max-concurrent-streams", "max_concurrent_streams", {}),
    ("--session-idle-ttl", "session_idle_ttl_s", {"metavar": "SECONDS"}),
    ("--drain-grace", "drain_grace_s", {"metavar": "SECONDS"}),
    ("--log-level", "log_level", {"choices": ["debug", "info", "warning", "error"]}),
    ("--log-json", "log_json", {"action": "store_const", "const": True}),
    ("--log-user-text", "log_user_text", {"action": "store_const", "const": True}),
    ("--auth-tokens-file", "auth_tokens_file", {"metavar": "FILE"}),
    ("--insecure-no-auth", "insecure_no_auth", {"action": "store_const", "const": True}),
    ("--tls-cert", "tls_cert", {"metavar": "PEM"}),
    ("--tls-key", "tls_key", {"metavar": "PEM"}),
    ("--tls-client-ca", "tls_client_ca", {"metavar": "PEM"}),
    ("--snapshot-ttl", "snapshot_ttl_s", {"metavar": "SECONDS"}),
    ("--stream-idle-timeout", "stream_idle_timeout_s", {"metavar": "SECONDS"}),
    ("--stream-max-unread", "stream_max_unread", {"metavar": "N"}),
    ("--session-store", "session_store", {"metavar": "URL"}),
    ("--session-store-sync-s", "session_store_sync_s", {"metavar": "SECONDS"}),
]


def add_serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve models over gRPC", description=__doc__.split("\n\n")[0])
    fields = Settings.model_fields
    for flag, name, kw in _FLAGS:
        doc = " ".join((fields[name].description or "").split())
        # the flag's own default is None (unset: the environment, then the field, decides); show the field's
        help_text = f"{doc} (default: {_default_of(name)}) [{ENV_PREFIX}{name.upper()}]".replace("%", "%%")
        p.add_argument(flag, dest=name, default=None, help=help_text, **kw)
    p.add_argument(
        "--snapshot-key-file",
        type=Path,
        default=None,
        help=f"file holding the key that seals snapshot blobs (AES-256-GCM; HKDF-derived) (or set {SNAPSHOT_KEY_ENV}); unset: a per-process key",
    )
    p.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other setting by its field name, e.g. --set max_top_k=16",
    )
    p.set_defaults(handler=run_serve)


def _default_of(name: str) -> str:
    field = Settings.model_fields[name]
    if name == "model_dir":
        return "the repository's models/"
    if name == "models":
        return "every model in --model-dir"
    value = field.get_default(call_default_factory=True)
    if value == "":
        return "none"
    return "off" if value is False else repr(value) if isinstance(value, str) else str(value)


class SettingsError(Exception):
    """A setting cannot be used; the message names it."""


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if environ is None else environ)
    overrides: dict[str, Any] = {name: getattr(args, name) for _, name, _ in _FLAGS}
    for item in args.extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(f"--set {item!r}: expected FIELD=VALUE")
        overrides[key.strip()] = value
    if args.snapshot_key_file is not None:
        try:
            overrides["snapshot_key"] = args.snapshot_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise SettingsError(f"--snapshot-key-file: cannot read {args.snapshot_key_file}: {e}") from None
        if not overrides["snapshot_key"]:
            raise SettingsError(f"--snapshot-key-file: {args.snapshot_key_file} is empty")
    try:
        return Settings.load(overrides, env)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            name = ".".join(str(p) for p in err["loc"]) or "(settings)"
            source = _source_of(name, overrides, env)
            lines.append(f"invalid setting {name}{source}: {err['msg']}")
        raise SettingsError("\n".join(lines)) from None


def _source_of(name: str, overrides: dict[str, Any], env: dict[str, str]) -> str:
    flag = next((f for f, n, _ in _FLAGS if n == name), None)
    if overrides.get(name) is not None:
        return f" (from {flag})" if flag else " (from --set)"
    if ENV_PREFIX + name.upper() in env:
        return f" (from {ENV_PREFIX}{name.upper()})"
    return ""


def run_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except SettingsError as e:
        print(f"cellserve serve: {e}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings)
    if settings.insecure_no_auth and not settings.auth_enabled:
        log.warning(
            "serving WITHOUT authentication on %s (grpc) and %s (metrics): anyone who can reach them "
            "can use every session; use --auth-tokens-file (README: Security)",
            settings.host,
            settings.metrics_host,
        )
    # Idle OpenMP threads sleep instead of spinning (read when torch loads, below): spinning
    # threads on shared cores made a one-row step many times slower (docs/measurements.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if settings.frontends > 0:
        from .multiproc.supervisor import run_multiprocess

        return run_multiprocess(settings)
    return asyncio.run(serve(settings))


async def serve(settings: Settings) -> int:
    from .api import ApiServer
    from .api.server import format_address
    from .api.transport import TlsFileError
    from .tokens import TokensFileError

    try:
        engine = await start_engine(settings)
    except ModelFileError as e:  # names the file (or setting) and the field
        print(f"cellserve serve: cannot start: {e}", file=sys.stderr)
        return EXIT_CONFIG
    from .engine.inprocess import InProcessEngineClient

    client = InProcessEngineClient(engine)
    try:
        metrics, endpoint = start_metrics(settings, engine)
    except OSError as e:
        where = format_address(settings.metrics_host, settings.metrics_port)
        print(f"cellserve serve: cannot serve metrics on {where}: {e}", file=sys.stderr)
        await engine.stop()
        return EXIT_CONFIG
    print(f"cellserve metrics on {format_address(settings.metrics_host, endpoint.port)} (http)", flush=True)
    engine.add_stats_listener(metrics.observe_iteration)  # observations: pushed per iteration
    poller = asyncio.create_task(metrics.poll_engine(client))  # gauges and counters
    try:
        api = ApiServer(settings, client, recorder=metrics, gate_models=engine.repository.get)
    except (TokensFileError, TlsFileError) as e:  # names the file and the problem
        print(f"cellserve serve: cannot start: {e}", file=sys.stderr)
        await stop_metrics(poller, endpoint)
        await engine.stop()
        return EXIT_CONFIG
    try:
        port = await api.start()
    except (OSError, RuntimeError) as e:  # grpc raises RuntimeError when it cannot bind
        print(f"cellserve serve: cannot listen on {format_address(settings.host, settings.port)}: {e}", file=sys.stderr)
        await stop_metrics(poller, endpoint)
        await engine.stop()
        return EXIT_CONFIG
    tune_gc(settings)  # everything loaded: from here on the collector walks only what serving makes
    print(f"cellserve listening on {format_address(settings.host, port)} (grpc)", flush=True)
    log.info(
        "grpc transport: %s; authentication: %s",
        "TLS" + (" with client certificates" if settings.tls_client_ca else "") if settings.tls_cert else "plaintext",
        "on" if settings.auth_enabled else "OFF",
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if api.tokens is not None:  # SIGHUP: re-read the tokens file now (it is also watched)
        loop.add_signal_handler(signal.SIGHUP, api.tokens.reload)
    await stop.wait()
    log.info("shutting down: draining for at most %.1f s", settings.drain_grace_s)
    await api.shutdown()  # metrics stay up while draining: operators watch the drain
    await engine.stop()
    await metrics.poll_once(client)  # the last counters, for a scrape that may still come
    await stop_metrics(poller, endpoint)
    log.info("stopped")
    return 0
