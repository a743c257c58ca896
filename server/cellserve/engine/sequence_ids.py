"""KServe sequence ids -> sessions, held by the engine core so every frontend sees one table.

A sequence is named by (owner, model, sequence id); a frontend binds the id to the session it
opened for a START and looks the id up for each later request, on whichever frontend that
request arrives. Entries are plain strings (no session object): an entry whose session has
closed or expired is dropped when it is next looked up, or when the table grows past its bound.
"""

from __future__ import annotations

from collections.abc import Callable

Key = tuple[str, str, str]  # (owner, model, sequence id as "u:7" or "s:abc")


class SequenceIds:
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._ids: dict[Key, str] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def bind(self, key: Key, session_id: str, alive: Callable[[str], bool]) -> str | None:
        """Binds ``key`` to ``session_id``; returns the live session it was bound to before
        (the caller closes it: its owner restarted the sequence), or None."""
        if len(self._ids) >= self._max and key not in self._ids:
            self._prune(alive)
        previous = self._ids.get(key)
        self._ids[key] = session_id
        return previous if previous is not None and previous != session_id and alive(previous) else None

    def find(self, key: Key, alive: Callable[[str], bool]) -> str | None:
        sid = self._ids.get(key)
        if sid is not None and not alive(sid):
            del self._ids[key]
            return None
        return sid

    def of_sessions(self, session_ids: set[str]) -> dict[str, list[Key]]:
        """The keys bound to each of ``session_ids`` (handoff: they move with their session)."""
        out: dict[str, list[Key]] = {}
        for key, sid in self._ids.items():
            if sid in session_ids:
                out.setdefault(sid, []).append(key)
        return out

    def forget(self, key: Key, session_id: str) -> None:
        """Drops ``key`` if it still names ``session_id`` (a later START's binding stays)."""
        if self._ids.get(key) == session_id:
            del self._ids[key]

    def _prune(self, alive: Callable[[str], bool]) -> None:
        for key, sid in list(self._ids.items()):
            if not alive(sid):
                del self._ids[key]
