"""The core's table of live sessions: open (caps and quotas first), look up (with the owner
check), close, expire by a deadline heap, and the session events counted on the way. One
session's record and its queued ops are ``engine/sessions.py``; this is the set of them.

Unknown, closed, expired and other owners' sessions are all ``NotFound("session not found")``;
a session handed to another replica on drain is ``Unavailable`` (retry there). Caps raise
``CapacityExceeded`` with a retry hint; new sessions while draining raise ``Unavailable``.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

from ..errors import NotFound, Unavailable
from ..memory.window import SessionMemory
from .admission import Admission, SessionLimitReached
from .completion_book import CompletionBook
from .core_io import Deliveries
from .runtime import ModelRuntime
from .sessions import AppendOp, ControlOp, Session, SessionState
from .shards import ONE
from .types import SessionEvent

SESSION_NOT_FOUND = "session not found"


class SessionTable:
    def __init__(
        self,
        admission: Admission,
        runtimes: dict[str, ModelRuntime],
        deliveries: Deliveries,
        completions: CompletionBook,
        mint_id: Callable[[], str] = ONE.mint_id,
    ) -> None:
        """``mint_id``: a new session id (with several core processes, one naming this core:
        ``engine/shards.py``). The caps are the admission's (``settings.max_sessions`` there)."""
        self._mint_id = mint_id
        self._admission = admission
        self._runtimes = runtimes
        self._deliveries = deliveries
        self._completions = completions
        self._by_id: dict[str, Session] = {}  # this core's sessions; the admission counts every core's
        # (last use when pushed, tie-break, session): the idle-TTL sweep's queue (expire)
        self._expiry: list[tuple[float, int, Session]] = []
        self._expiry_seq = itertools.count()
        self._moved: set[str] = set()  # sessions handed to the session store on drain (handoff)
        self.draining = False  # new sessions are refused (Unavailable)
        self.events: dict[str, int] = {}  # SessionEvent -> count (EngineStats.session_events)

    # ---- lookups -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._by_id

    def __getitem__(self, session_id: str) -> Session:
        return self._by_id[session_id]

    def values(self) -> list[Session]:
        return list(self._by_id.values())

    def ids(self) -> set[str]:
        return set(self._by_id)

    def get(self, session_id: str, owner: str) -> Session:
        """The live session ``session_id`` of ``owner``."""
        s = self._by_id.get(session_id)
        if s is None or s.owner != owner:
            if s is None and session_id in self._moved:
                raise Unavailable("this replica is shutting down and handed the session on; retry on another replica")
            raise NotFound(SESSION_NOT_FOUND)
        return s

    def held(self, session_id: str) -> Session | None:
        """The live session ``session_id``, whoever owns it."""
        return self._by_id.get(session_id)

    def alive_of(self, owner: str) -> Callable[[str], bool]:
        """Whether a session id names a live session of ``owner``."""

        def alive(sid: str) -> bool:
            s = self._by_id.get(sid)
            return s is not None and s.owner == owner

        return alive

    def owner_count(self, owner: str) -> int:
        """Live sessions of ``owner`` (over every core process: the admission's count)."""
        return self._admission.sessions_of(owner)

    def memory_bytes(self) -> int:
        return sum(s.memory_bytes for s in self._by_id.values())  # no walk of the memories

    def count(self, event: SessionEvent) -> None:
        self.events[event] = self.events.get(event, 0) + 1

    # ---- open ----------------------------------------------------------------------------------
    def check_open(self) -> None:
        if self.draining:
            raise Unavailable("server is draining; open a session on another replica")

    def check_quota(self, owner: str) -> None:
        """Whether ``owner`` may open a session now, counting nothing (a pre-check before work a
        refusal would waste; ``open`` decides)."""
        self._admit(owner, count=False)

    def _admit(self, owner: str, count: bool) -> None:
        """The session quotas and caps (engine/admission.py); a full server is counted."""
        try:
            self._admission.admit_session(owner, count)
        except SessionLimitReached:
            self.count(SessionEvent.REJECTED_SESSIONS)
            raise

    def open(
        self,
        rt: ModelRuntime,
        owner: str,
        position: int,
        state: object,
        event: SessionEvent,
        memory: SessionMemory | None = None,
        session_id: str = "",
    ) -> Session:
        """A new session at ``position`` whose start state ``state`` the next iteration writes
        (a new random id unless ``session_id`` is given)."""
        self.check_open()
        self._admit(owner, count=True)  # counted from here on
        try:
            slot = rt.alloc.alloc()  # the one step below that can refuse (no slot left)
        except BaseException:
            self._admission.release_session(owner)
            raise
        now = time.time()
        sid = session_id or self._mint_id()
        s = Session(sid, rt.name, owner, slot, now, now, rt.new_history(position, state), position, position, position)
        # the slot holds a previous owner's state: the first iteration writes this session's
        # start state (folded into the first append's row when one is waiting by then)
        s.queue.append(ControlOp("write", None, time.perf_counter(), state=state, position=position, memory=memory))
        s.memory = memory  # empty until the write lands (nothing reads it before: every row
        # of the session until then starts from that write, whose memory it forks)
        self._by_id[sid] = s
        heapq.heappush(self._expiry, (s.last_used_at, next(self._expiry_seq), s))
        rt.work[s] = None
        self.count(event)
        return s

    # ---- close ---------------------------------------------------------------------------------
    def close(self, s: Session, reason: SessionEvent) -> None:
        """``s`` ends: its queued ops fail with NotFound, its completions are cancelled, its
        slots are freed (a write-back in flight to them lands before any new owner's first
        write)."""
        if not s.mark_closed():
            return
        del self._by_id[s.session_id]
        self._admission.release_session(s.owner)
        gone = NotFound(SESSION_NOT_FOUND)
        rt = self._runtimes[s.model]
        for op in s.queue:
            self._deliveries.fail(op, gone)
            if isinstance(op, AppendOp):
                rt.free_scratch(op)  # an in-flight chunk's write-back lands before a new owner's write
        s.queue.clear()
        self._completions.cancel_of(s)
        rt.work.pop(s, None)
        rt.speculator.forget(s)
        s.history.release_all()
        rt.alloc.free(s.slot)
        self.count(reason)

    def hand_out(self, s: Session) -> None:
        """``s`` continues on another replica (drain): a later call for it is Unavailable."""
        self._moved.add(s.session_id)
        self.close(s, SessionEvent.HANDED_OUT)

    def expire(self, cutoff: float) -> None:
        """Closes sessions unused since ``cutoff`` (unix seconds) whose work is all done:
        queued or running work is never expired.

        No scan of the table: a heap holds every session under the last-use time it had when
        pushed (at open, then whenever a sweep finds it used since or busy). A sweep pops only
        the entries older than ``cutoff``: each session comes up about once per TTL."""
        heap = self._expiry
        while heap and heap[0][0] < cutoff:
            _, _, s = heapq.heappop(heap)
            if s.closed:
                continue
            if s.last_used_at < cutoff and s.state is SessionState.IDLE:
                self.close(s, SessionEvent.EXPIRED)
            else:  # used since, or busy: look again once it may have gone idle for a TTL
                heapq.heappush(heap, (max(s.last_used_at, cutoff), next(self._expiry_seq), s))
