"""Server-side session handoff between replicas through an external store (Redis).

Public surface::

    HandoffRecord, seal_record, open_record      record.py: what a replica leaves behind
    SessionStore, RedisSessionStore, StoreStats  store.py: where it leaves it

A replica that drains writes every live session as a sealed record; a replica that gets a
request for a session it does not hold takes that session's record (atomically: get and
delete in one command, so two replicas never both own it) and resumes it under the same id.
The store only ever sees ciphertext keyed by hashes: no text, no state, no tenant name.
"""

from .record import HandoffRecord, open_record, seal_record
from .store import RedisSessionStore, SessionStore, StoreStats, StoreUnavailable

__all__ = [
    "HandoffRecord",
    "RedisSessionStore",
    "SessionStore",
    "StoreStats",
    "StoreUnavailable",
    "open_record",
    "seal_record",
]
