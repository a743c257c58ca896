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

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

ENV_PREFIX = "CELLSERVE_"


def default_model_dir() -> Path:
    """The repository's models/ when running from a checkout, else ./models."""
    repo_models = Path(__file__).resolve().parents[2] / "models"
    return repo_models if repo_models.is_dir() else Path("models")


def default_frontends() -> int:
    """0 on 2 CPUs or fewer, else CPUs - 1 (one for the core), at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus <= 2 else min(cpus - 1, 8)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


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
    precision: Literal["auto", "fp32", "int8", "bf16", "fp16"] = "auto"
    """Serving precision of every model's steps (gates are always fp32; docs/precision.md).
    auto: each model's model.json ``precision``, whose own auto is int8 on CPU when the model's
    recorded int8 loss is within ``precision_max_loss`` (else fp32), fp16/bf16 on CUDA."""
    precision_max_loss: float = Field(default=0.005, ge=0, le=1)
    """The largest held-out bits/char loss, relative to fp32 (worst package, as ``cellserve eval``
    records it), at which auto serves a reduced precision; 0.005 = 0.5%."""
    cpu_threads: int = Field(default=0, ge=0, le=256)
    """torch intra-op threads on CPU; 0 leaves torch's default."""
    gc_young_threshold: int = Field(default=20_000, ge=0, le=10_000_000)
    """Python's cyclic garbage collector: container objects allocated (net) before a young
    collection (``gc.set_threshold``'s first value; Python's own is 700). A step of hundreds
    of keystrokes holds thousands of short-lived objects, so at 700 the collector ran several
    times per step, walking them and every object older than them (docs/measurements.md).
    What the server loaded at start is frozen out of collections (``gc.freeze``). 0: Python's
    defaults, nothing frozen."""
    frontends: int = Field(default_factory=lambda: default_frontends(), ge=0, le=64)
    """gRPC frontend processes in front of one engine-core process (sharing the port);
    0: one process does everything. Default: 0 with 2 CPUs or fewer (a second process only
    competes for them), else one per CPU beyond the core's, at most 8 (the CPUs this process
    may run on, which in a container is the node's: set it explicitly there)."""
    cores: int = Field(default=1, ge=1, le=64)
    """Engine-core processes (with ``frontends`` >= 1): sessions are partitioned among them by
    id, each core holding its own copy of the models; quotas and the session cap are counted
    together in shared memory. One core serves about one CPU of model steps: on a machine with
    many CPUs, e.g. a third of them as cores and the rest as frontends (docs/design-notes.md:
    "Several core processes")."""

    # --- network -------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", min_length=1)
    """Address the gRPC server binds. Anything but loopback needs authentication (a tokens file
    or client certificates) or ``insecure_no_auth``."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one (printed at start)."""
    metrics_host: str = Field(default="127.0.0.1", min_length=1)
    """Address the Prometheus metrics endpoint binds (same rule as ``host``)."""
    metrics_max_threads: int = Field(default=8, ge=1, le=256)
    """Requests the metrics endpoint serves at once; further connections wait in the backlog."""
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

    # --- security (README "Security") --------------------------------------------------
    auth_tokens_file: Path | None = None
    """Tenants and their SHA-256 token hashes (YAML or JSON; ``cellserve token new``). Every
    call must then carry ``authorization: Bearer <token>``. Re-read on change and on SIGHUP."""
    insecure_no_auth: bool = False
    """Allow a non-loopback ``host``/``metrics_host`` without authentication (logs a warning)."""
    tls_cert: Path | None = None
    """PEM certificate chain of the gRPC server; with ``tls_key``: TLS."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    tls_client_ca: Path | None = None
    """PEM CA bundle; set: clients must present a certificate it signed (mTLS), and a call
    without a token belongs to the tenant named by its certificate's CN."""
    snapshot_ttl_s: float = Field(default=86_400.0, gt=0, le=365 * 86400)
    """Snapshot blobs expire this long after they are taken (then FAILED_PRECONDITION)."""
    min_temperature: float = Field(default=1e-3, ge=0, le=1)
    """Temperatures in (0, min_temperature) decode greedily (as 0): below it sampling only
    amplifies float error."""
    malformed_log_interval_s: float = Field(default=60.0, gt=0, le=86400)
    """Undecodable requests are counted always but logged at most once per this interval."""

    # --- per-tenant quotas (defaults; a tenant in the tokens file may override each) ----
    tenant_max_sessions: int = Field(default=1000, ge=1, le=10_000_000)
    """Live sessions one tenant may hold. Beyond: RESOURCE_EXHAUSTED."""
    tenant_max_streams: int = Field(default=256, ge=1, le=1_000_000)
    """Open Session streams one tenant may hold."""
    tenant_max_completions: int = Field(default=64, ge=1, le=100_000)
    """Completion alternatives one tenant may run at once."""
    tenant_chars_per_s: float = Field(default=20_000.0, gt=0, le=1e9)
    """Characters per second one tenant may append (token bucket refill rate)."""
    tenant_chars_burst: int = Field(default=8192, ge=1, le=1_000_000_000)
    """Token bucket size: characters one tenant may append at once (at least max_append_chars
    so that one full append always fits)."""

    # --- connections (gRPC server options) ---------------------------------------------
    keepalive_min_ping_interval_s: float = Field(default=10.0, ge=0, le=3600)
    """Clients pinging more often than this (without data) are sent GOAWAY."""
    keepalive_time_s: float = Field(default=60.0, gt=0, le=86400)
    """The server pings an idle connection this often ..."""
    keepalive_timeout_s: float = Field(default=20.0, gt=0, le=3600)
    """... and closes it when the ping is not answered within this."""
    max_connection_age_s: float = Field(default=0.0, ge=0, le=30 * 86400)
    """Connections are closed (GOAWAY) after this long, spreading clients over replicas;
    0: never."""
    max_connection_age_grace_s: float = Field(default=30.0, ge=0, le=86400)
    """Calls still open on an aged connection get this long before they are cancelled."""
    http2_max_streams_per_connection: int = Field(default=256, ge=1, le=1_000_000)
    """HTTP/2 concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS)."""
    max_metadata_bytes: int = Field(default=16_384, ge=1024, le=1 << 20)
    """Largest request header block (metadata) accepted."""
    stream_idle_timeout_s: float = Field(default=600.0, gt=0, le=7 * 86400)
    """A Session stream that sends no request for this long is closed (UNAVAILABLE); its slot
    comes back and its session is kept (attach again)."""
    stream_max_unread: int = Field(default=32, ge=1, le=63)
    """A Session stream whose client stops reading is ended (RESOURCE_EXHAUSTED "client is not
    reading") once more than this many answers are ready but not taken by gRPC (HTTP/2 flow
    control holds the writer) and none is taken for a second; the session is kept (attach
    again). Below the stream's window of 64 unanswered requests, or it could never trip."""

    # --- capacity and limits -------------------------------------------------------------
    max_sessions: int = Field(default=10_000, ge=1, le=10_000_000)
    """Live sessions (= state-pool slots for sessions). Beyond: RESOURCE_EXHAUSTED. In its last
    eighth, an authenticated tenant holding its fair share is refused (engine/admission.py)."""
    pool_chunk: int = Field(default=256, ge=1, le=1_000_000)
    """The state pool grows by this many slots at a time, up to the maximum."""
    max_concurrent_streams: int = Field(default=1024, ge=1, le=1_000_000)
    """Open bidirectional streams, over every frontend (counted by the engine core). Beyond:
    RESOURCE_EXHAUSTED. In its last eighth, an authenticated tenant holding its fair share is refused."""
    core_call_deadline_s: float = Field(default=120.0, gt=0, le=3600)
    """With --frontends N: a call a frontend sent to the engine core and got no answer for in
    this long fails UNAVAILABLE (retry), so a lost message never leaves a caller waiting
    forever. Above the longest queueing a call can see (a full flood of pastes)."""
    core_send_queue_messages: int = Field(default=1024, ge=1, le=1_000_000)
    """With --frontends N: messages (each a batch of calls) a frontend queues for the engine
    core (the ZMQ send high-water mark). A full queue makes new calls fail RESOURCE_EXHAUSTED
    with a retry hint instead of growing without bound."""
    max_concurrent_rpcs: int = Field(default=4096, ge=1, le=1_000_000)
    """Calls in progress at once in one gRPC server (streams included), counted by gRPC itself
    before any servicer runs. Beyond: RESOURCE_EXHAUSTED. Bounds the memory a flood of calls
    can hold; keep it above max_concurrent_streams."""
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
    about one iteration of this size. On CPU each chunk also pays a fixed cost, so much
    smaller chunks buy little latency and cost throughput (figures: docs/measurements.md).
    Raise it on a GPU, where a chunk of thousands costs about as much as one."""

    session_sweep_interval_s: float = Field(default=5.0, gt=0, le=3600)
    """How often the engine looks for sessions idle longer than ``session_idle_ttl_s`` (one
    pass over the session table; eviction happens within TTL + this interval)."""
    # --- speculative keystrokes (engine/speculation.py) -----------------------------------
    speculation: bool = Field(default=True)
    """Between keystrokes, step each recently active session's likeliest next characters on
    scratch slots, so a keystroke that is one of them is answered without a model step. Only
    models served at a batch-invariant precision speculate (int8: the answer and state are
    bit-identical to the keystroke's own step); fp32, fp16 and bf16 never do. False: never."""
    speculation_k: int = Field(default=4, ge=1, le=16)
    """Characters guessed per session: the k most probable next characters (k rows each)."""
    speculation_slots: int = Field(default=1024, ge=1, le=1_000_000)
    """State slots speculation may hold at once, per model (one per guessed character, plus at
    most one rewind checkpoint each); counted in ``state_bytes``. With k=4, 1024 slots cover
    256 typing sessions; beyond, the most recently active sessions are guessed first."""
    speculation_recent_s: float = Field(default=5.0, gt=0, le=3600)
    """A session counts as typing (worth guessing for) this long after its last append; its
    guesses are dropped once it has been quiet longer."""
    speculation_delay_s: float = Field(default=0.005, ge=0, le=1.0)
    """How long the core stays idle before it starts guessing. Guessing holds the interpreter
    lock for most of a batch, so started at once it would slow the event loop that is still
    writing the answers just made (docs/measurements.md: a keystroke answered from a guess
    took as long as one that was stepped); a typist's next keystroke is 100+ ms away, so a few
    milliseconds cost no hits."""
    speculation_busy_rows: int = Field(default=16, ge=1, le=1_000_000)
    """A step of at least this many keystrokes (one-character rows) means the core is serving
    many typing sessions at once: it then guesses nothing for ``speculation_busy_hold_s``.
    Under such load a guess costs k rows in a small batch of its own to save one row of a
    large step (at N=256 on a 2-core box with one core taken by another process: 12-19 us of
    core CPU per keystroke; docs/measurements.md), and the idle gaps it fills are the ones the
    event loop needs. Human-paced typists, even many, rarely land 16 keystrokes in one step."""
    speculation_busy_hold_s: float = Field(default=0.5, ge=0, le=3600)
    """How long after a busy step (``speculation_busy_rows``) the core guesses nothing. Guesses
    already made stay, and can still answer a keystroke."""
    # --- exactly-once, rewind, snapshots -------------------------------------------------
    checkpoint_every: int = Field(default=64, ge=1, le=100_000)
    """Rewind checkpoints: the state is saved every this many characters."""
    rewind_window: int = Field(default=256, ge=0, le=100_000)
    """Characters back that Rewind can reach; beyond: FAILED_PRECONDITION."""
    memory_window: int = Field(default=4096, ge=64, le=1 << 20)
    """Session memory (models that ship a ``mixer.safetensors``): characters of each session's
    own text its memory learns from. Bytes per session grow with it (about 70 bytes per
    character once the window is full, plus 8 x 4 bytes per hash bucket, half a bucket per
    character of window: ~0.28 MB at 4096); 4096 keeps 10,000 full sessions under 3 GB.
    The mixers were trained at 32,768 (docs/session-memory.md gives the bits/char cost)."""
    memory: bool = Field(default=True)
    """Mix the session memory into served distributions for models that ship a mixer
    (sessions and requests can still turn it off); False: never."""
    snapshot_key: SecretStr | None = Field(default=None)
    """Secret of snapshot blobs: their AES-256-GCM key is derived from it with HKDF (shared by
    all replicas so a session resumes on any of them). Unset: a random per-process key;
    snapshots then resume on this process only."""

    # --- handoff between replicas (README "Many replicas") -------------------------------
    session_store: SecretStr | None = Field(default=None)
    """Where sessions move between replicas: ``redis://[:password@]host:port/db``,
    ``rediss://...`` (TLS; redis-py URL options such as ``?ssl_ca_certs=/path``) or
    ``unix:///path``. Set: a draining replica writes every live session there (sealed, as its
    snapshot), and a replica asked for a session it does not hold takes it from there under the
    same id. Unset: no handoff. Needs ``snapshot_key`` (shared by the replicas)."""
    session_store_password_file: Path | None = None
    """File holding the store's password (a mounted Secret), instead of one in the URL."""
    session_store_deployment: str = Field(default="cellserve", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Key space of this deployment in the store: replicas that share it hand sessions to each
    other; another deployment on the same Redis never sees them."""
    session_store_timeout_s: float = Field(default=0.5, gt=0, le=60)
    """Deadline of one store call. After a failure the store is skipped for a back-off
    (0.5 s doubling to 30 s): serving goes on without handoff while it is down."""
    session_store_sync_s: float = Field(default=0.0, ge=0, le=86_400)
    """Sessions idle this long are also written to the store in the background, so a replica
    that dies without draining loses at most the typing of this interval; 0: only on drain."""

    # --- logging -------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity."""
    log_json: bool = False
    """One JSON object per log line."""
    log_user_text: bool = False
    """Include user text in debug logs. Off by default: text is private."""

    @property
    def auth_enabled(self) -> bool:
        """Calls must prove a tenant: a bearer token, or (mTLS) a client certificate."""
        return self.auth_tokens_file is not None or self.tls_client_ca is not None

    @model_validator(mode="after")
    def _check_together(self) -> Settings:
        if self.cores > 1 and self.frontends == 0:
            raise ValueError("cores > 1 needs frontends >= 1 (the core processes serve behind gRPC frontends)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (client certificates need TLS)")
        if self.session_store is not None and self.snapshot_key is None:
            raise ValueError(
                "session_store needs snapshot_key: replicas can only take each other's sessions "
                "when they share the key their records are sealed with"
            )
        if not (self.auth_enabled or self.insecure_no_auth):
            exposed = [h for h in (self.host, self.metrics_host) if not is_loopback(h)]
            if exposed:
                raise ValueError(
                    f"binding {exposed[0]} without authentication: set auth_tokens_file "
                    "(--auth-tokens-file) or tls_client_ca, or accept the risk with --insecure-no-auth"
                )
        return self

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
