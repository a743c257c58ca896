"""A session as a snapshot blob and back (the blob format is ``engine/snapshot.py``).

Sealing (Snapshot, a handoff export) takes the session's state as the runner read it, its
position and its session memory; opening (Resume, a handoff adopt) checks the blob
(authentication, header, tenant, expiry: no torch) and that this server serves its model with
the same weights and shapes. The state bytes become tensors in the runner (``HostState``).
"""

from __future__ import annotations

import secrets
import time

from ..config import Settings
from ..errors import PreconditionFailed
from ..memory.settings import MemorySettings
from ..memory.window import SessionMemory
from . import snapshot as snap
from .plan import HostState
from .runtime import ModelRuntime
from .sessions import Session


class SessionBlobs:
    def __init__(self, settings: Settings, runtimes: dict[str, ModelRuntime], memory: MemorySettings) -> None:
        # Unset key: a random per-process key; snapshots then resume on this process only.
        self._key = (
            settings.snapshot_key.get_secret_value().encode() if settings.snapshot_key else secrets.token_bytes(32)
        )
        self._ttl_s = settings.snapshot_ttl_s
        self._runtimes = runtimes
        self._memory = memory

    def seal(self, rt: ModelRuntime, s: Session, raw: list[bytes], now: float) -> bytes:
        """The blob of ``s`` with the state ``raw`` (one bytes per state tensor), taken ``now``."""
        m = rt.loaded.model
        data = snap.SnapshotData(
            rt.name,
            rt.loaded.weights_sha256,
            m.cell,
            s.position,
            now,
            tuple((m.layers, m.hidden) for _ in range(m.state_arity)),
            tuple(raw),
            tenant=s.owner,
            expires_at=now + self._ttl_s,
            memory=s.memory.snapshot() if s.memory is not None else None,  # sealed with the state
        )
        return snap.encode(data, self._key)

    def open(self, blob: bytes, owner: str) -> tuple[ModelRuntime, snap.SnapshotData, HostState]:
        """The blob's model, contents and state. Bad or tampered blob: InvalidInput; a model or
        weights this server does not serve: PreconditionFailed."""
        data = snap.decode(blob, self._key, tenant=owner, now=time.time())
        rt = self._runtimes.get(data.model)
        if rt is None or rt.loaded.weights_sha256 != data.weights_sha256:
            raise PreconditionFailed("the snapshot was taken with model weights this server does not serve")
        m = rt.loaded.model
        if data.shapes != tuple((m.layers, m.hidden) for _ in range(m.state_arity)):
            raise PreconditionFailed("the snapshot's state does not fit the model")
        return rt, data, HostState(tuple(data.tensors), m.layers, m.hidden)

    def memory_of(self, rt: ModelRuntime, data: snap.SnapshotData) -> SessionMemory | None:
        """The session memory as the snapshot left it; None when it carried none or the model
        mixes none."""
        if data.memory is None or rt.mixer is None:
            return None
        return SessionMemory.restore(data.memory, self._memory)
