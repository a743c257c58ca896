"""Sessions as handoff records and back (``cellserve.handoff``): what the core does for a
replica's session store. ``export`` seals idle sessions (snapshot, id, tenant, the last applied
piece and its answer, KServe sequence ids); ``adopt`` continues a record's session here under
its own id, answering its last piece again if it is retried (exactly once across the move).
"""

from __future__ import annotations

import time

from ..config import Settings
from ..errors import NotFound
from ..handoff.record import HandoffRecord, decode_prediction, encode_prediction
from .runtime import ModelRuntime
from .sequence_ids import SequenceIds
from .session_blobs import SessionBlobs
from .session_table import SESSION_NOT_FOUND, SessionTable
from .sessions import Session, SessionState
from .types import Prediction, SessionEvent, SessionInfo


class SessionHandoff:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionTable,
        runtimes: dict[str, ModelRuntime],
        blobs: SessionBlobs,
        sequence_ids: SequenceIds,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._runtimes = runtimes
        self._blobs = blobs
        self._sequence_ids = sequence_ids

    def export(self, idle_s: float | None, move: bool = False) -> list[HandoffRecord]:
        """Every idle session as a handoff record; ``idle_s`` set: only sessions unused for
        that long and used since their last export. Sessions with work queued or running are
        left out (their slot does not hold their state yet); after a drain there are none.
        ``move`` (the drain): the exported sessions leave this engine, and a later call for one
        of them is UNAVAILABLE (it continues on another replica) rather than NOT_FOUND."""
        now = time.time()
        by_model: dict[str, list[Session]] = {}
        for s in self._sessions.values():
            if s.state is not SessionState.IDLE or (s.position == 0 and s.last_applied is None):
                continue  # busy, or nothing typed yet (a fresh session costs nothing to reopen)
            if idle_s is not None and (now - s.last_used_at < idle_s or s.exported_at == s.last_used_at):
                continue
            by_model.setdefault(s.model, []).append(s)
        records: list[HandoffRecord] = []
        seqs = self._sequence_ids.of_sessions({s.session_id for ss in by_model.values() for s in ss})
        for name, sessions in by_model.items():
            rt = self._runtimes[name]
            for s, raw in zip(sessions, rt.runner.read_states([s.slot for s in sessions]), strict=True):
                expires = s.last_used_at + self._settings.session_idle_ttl_s  # as long as it would live here
                blob = self._blobs.seal(rt, s, raw, now)
                last = s.last_applied
                records.append(
                    HandoffRecord(
                        s.session_id,
                        s.owner,
                        blob,
                        min(expires, now + self._settings.snapshot_ttl_s),
                        last[0] if last else -1,
                        last[1] if last else "",
                        encode_prediction(last[2]) if last and isinstance(last[2], Prediction) else b"",
                        tuple((model, seq) for _, model, seq in seqs.get(s.session_id, ())),
                    )
                )
                s.exported_at = s.last_used_at
                if move:
                    self._sessions.hand_out(s)
                else:
                    self._sessions.count(SessionEvent.SYNCED)
        return records

    def adopt(self, owner: str, record: HandoffRecord) -> SessionInfo:
        """The record's session continues here under its own id: its snapshot is checked like a
        resume's (tenant, expiry, weights), and its last applied piece is answered again if
        retried."""
        self._sessions.check_open()
        held = self._sessions.held(record.session_id)
        if held is not None:  # a concurrent recovery of the same id got here first
            if held.owner != owner:
                raise NotFound(SESSION_NOT_FOUND)
            return held.info()
        rt, data, state = self._blobs.open(record.blob, owner)
        memory = self._blobs.memory_of(rt, data)
        s = self._sessions.open(rt, owner, data.position, state, SessionEvent.HANDED_IN, memory, record.session_id)
        if record.last_offset >= 0 and record.last_answer:
            pred = decode_prediction(record.last_answer)
            if pred.position == data.position and record.last_offset + len(record.last_text) == data.position:
                s.last_applied = s.last_piece = (record.last_offset, record.last_text, pred)
        alive = self._sessions.alive_of(owner)
        for model, seq in record.sequences:  # its KServe sequence ids continue here too
            self._sequence_ids.bind((owner, model, seq), s.session_id, alive)
        return s.info()
