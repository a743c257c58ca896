"""Settings: every knob of the server, its bounds and what it does. Validated once at start.

Sources, highest first: command-line flags, ``CELLSERVE_<FIELD>`` environment variables
(e.g. ``CELLSERVE_MAX_SESSIONS=5000``), defaults. Nothing reads the environment at import
time: ``Settings.load()`` does, when the server starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

ENV_PREFIX = "CELLSERVE_"


def default_model_dir() -> Path:
    """The repository's models/ when running from a checkout, else ./models."""
    repo_models = Path(__file__).resolve().parents[2] / "models"
    return repo_models if repo_models.is_dir() else Path("models")


def default_frontends() -> int:
    """0 on 2 CPUs or fewer, else CPUs - 1 (one for the core), at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus <= 2 else min(cpus - 1, 8)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)

    # --- models and device -------------------------------------------------------------
    model_dir: Path = Field(default_factory=default_model_dir)
    """Folder holding one sub-folder per model (model.json + weights.safetensors)."""
    models: list[str] = Field(default_factory=list)
    """Models to load by name; empty: every model in ``model_dir``."""
    default_model: str = Field(default="", max_length=64)
    """Model used when a session does not name one; empty: the loaded model with the lowest
    validation bits/char."""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """'auto' picks CUDA when available, else CPU."""
    cpu_threads: int = Field(default=0, ge=0, le=256)
    """torch intra-op threads on CPU; 0 leaves torch's default."""
    frontends: int = Field(default_factory=lambda: default_frontends(), ge=0, le=64)
    """gRPC frontend processes in front of one engine-core process (sharing the port);
    0: one process does everything. Default: 0 with 2 CPUs or fewer (a second process only
    competes for them), else one per CPU beyond the core's, at most 8 (the CPUs this process
    may run on, which in a container is the node's: set it explicitly there)."""

    # --- network -------------------------------------------------------------------------
    host: str = Field(default="0.0.0.0", min_length=1)
    """Address the gRPC server binds."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one (printed at start)."""
    metrics_host: str = Field(default="0.0.0.0", min_length=1)
    """Address the Prometheus metrics endpoint binds."""
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    """Prometheus metrics port (served by the metrics module)."""
    readiness_service: str = Field(default="cellserve.v1.Ready", min_length=1)
    """grpc.health.v1 service name that reports readiness ("" reports liveness)."""
    drain_grace_s: float = Field(default=20.0, ge=0, le=3600)
    """On SIGTERM: seconds in-flight work may take before the server stops."""
    drain_refusal_s: float = Field(default=0.5, ge=0, le=60)
    """After draining, how long the server keeps answering new calls itself (UNAVAILABLE, so
    clients go elsewhere) before gRPC stops; calls arriving once gRPC is stopping can only be
    cancelled by the transport. Taken out of the drain grace."""

    # --- capacity and limits -------------------------------------------------------------
    max_sessions: int = Field(default=10_000, ge=1, le=10_000_000)
    """Live sessions (= state-pool slots for sessions). Beyond: RESOURCE_EXHAUSTED."""
    pool_chunk: int = Field(default=256, ge=1, le=1_000_000)
    """The state pool grows by this many slots at a time, up to the maximum."""
    max_concurrent_streams: int = Field(default=1024, ge=1, le=1_000_000)
    """Open bidirectional streams. Beyond: RESOURCE_EXHAUSTED."""
    max_message_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    """Largest gRPC message accepted."""
    max_append_chars: int = Field(default=4096, ge=1, le=1_000_000)
    """Characters in one Append. Beyond: INVALID_ARGUMENT."""
    max_completion_chars: int = Field(default=256, ge=1, le=100_000)
    """Characters one completion may generate. Beyond: INVALID_ARGUMENT."""
    max_completion_alternatives: int = Field(default=8, ge=1, le=64)
    """Alternatives (n) one completion may ask for."""
    max_running_completions: int = Field(default=256, ge=1, le=100_000)
    """Completion alternatives decoding at once (scratch slots). Beyond: RESOURCE_EXHAUSTED."""
    max_top_k: int = Field(default=64, ge=1, le=4096)
    """Largest top_k a Prediction may ask for."""
    session_idle_ttl_s: float = Field(default=900.0, gt=0, le=7 * 86400)
    """A session untouched this long is closed and its slot freed."""
    max_batch_tokens: int = Field(default=64, ge=1, le=10_000_000)
    """The per-iteration character budget: prefill characters (pastes, coalesced appends) one
    engine iteration may run beside the keystrokes and completion steps (which always run).
    A longer piece is applied in chunks over several iterations, so a keystroke waits at most
    about one iteration of this size. Default measured on the 2-core dev box (2x512 LSTM, one
    thread, ``scripts/measure_budget.py``): a 64-character prefill chunk took
    15.6 ms quiet and 98 ms with the cores shared by a training job (load 6.5); each chunk
    also pays a fixed ~20 ms there, so much smaller chunks buy little latency and cost
    throughput. Raise it on a GPU, where a chunk of thousands costs about as much as one."""

    session_sweep_interval_s: float = Field(default=5.0, gt=0, le=3600)
    """How often the engine looks for sessions idle longer than ``session_idle_ttl_s`` (one
    pass over the session table; eviction happens within TTL + this interval)."""
    # --- exactly-once, rewind, snapshots -------------------------------------------------
    checkpoint_every: int = Field(default=64, ge=1, le=100_000)
    """Rewind checkpoints: the state is saved every this many characters."""
    rewind_window: int = Field(default=256, ge=0, le=100_000)
    """Characters back that Rewind can reach; beyond: FAILED_PRECONDITION."""
    snapshot_key: SecretStr | None = Field(default=None)
    """HMAC-SHA256 key for snapshot blobs (shared by all replicas so a session resumes on any
    of them). Unset: a random per-process key; snapshots then resume on this process only."""

    # --- logging -------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity."""
    log_json: bool = False
    """One JSON object per log line."""
    log_user_text: bool = False
    """Include user text in debug logs. Off by default: text is private."""

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults < ``CELLSERVE_*`` environment < ``overrides`` (flags given explicitly).

        Raises pydantic.ValidationError naming the bad field.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if field.annotation is not None and "list" in str(field.annotation):
                values[name] = [s.strip() for s in raw.split(",") if s.strip()]
            else:
                values[name] = raw
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.model_validate(values)
