"""What a session needs to survive the loss of its server: a journal of the text and
snapshots the server has acknowledged, the rule for which errors move a session, and the
backoff between attempts.

A session can be rebuilt on any server with the same key and weights from its journal: a
Resume of the newest snapshot with the text typed since as replay, or (before any snapshot,
or after a reset) an OpenSession and a replay of everything. Only acknowledged work goes into
the journal; requests in flight when a server died are re-sent by the session afterwards, at
the same offsets.

The replay keeps the pieces as they were appended (one Append per piece, not one big
piece): the server runs a multi-character piece as one packed sequence, which is not
bit-identical to single steps on every backend, and the rebuilt session must give exactly the
predictions the lost one would have.
"""

from __future__ import annotations

import random
import time

from . import _errors
from ._types import FailoverPolicy, _Snapshot


def moves_session(err: BaseException) -> bool:
    """True for failures after which the session continues elsewhere: the server is gone or
    draining (UNAVAILABLE, a broken connection) or it no longer knows the session."""
    return isinstance(err, _errors.Unavailable | _errors.SessionNotFound) and not isinstance(
        err, _errors.FailoverFailed
    )


def another_try_can_fix(err: BaseException) -> bool:
    """True for failures that a retry, on the same target later or on another replica, can
    fix: the server is unreachable or draining, it lost the session, or (on another replica)
    it lacks the model. Everything else is the server's definite answer and is raised at
    once: a cap or the tenant's quota (``CapacityExceeded``: retrying would only spend the
    quota, the caller waits ``retry_after``), bad input, refused credentials, a timeout."""
    return isinstance(err, _errors.Unavailable | _errors.NotFound) and not isinstance(err, _errors.FailoverFailed)


def retry_hint(err: BaseException) -> float:
    """The server's own retry delay (seconds) carried by ``err``; 0 when it gave none."""
    return float(getattr(err, "retry_after", 0.0) or 0.0)


def backoff_delays(policy: FailoverPolicy, rng: random.Random | None = None) -> list[float]:
    """The sleep before each attempt: none before the first, then exponential with full jitter
    (a uniform draw below the cap), so sessions of a dead server do not retry in lockstep."""
    rng = rng or random.Random()
    delays = [0.0]
    for attempt in range(1, policy.max_attempts):
        cap = min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (attempt - 1))
        delays.append(rng.uniform(cap / 2, cap))
    return delays


class Journal:
    """The acknowledged state of a session, enough to rebuild it on another server.

    ``pieces`` hold the characters from ``text_start`` up to ``position``, as appended. ``snapshots`` (oldest
    first, at most ``policy.snapshots_kept``) all lie in that range; ``origin`` says that
    ``text_start`` is 0 and an empty new session is a valid base (no snapshot needed). Text older
    than the oldest kept snapshot is dropped, so memory stays bounded by the snapshot cadence.
    """

    def __init__(self, policy: FailoverPolicy, model: str, *, position: int = 0, blob: bytes | None = None) -> None:
        self.policy = policy
        self.model = model
        self.memory = True  # the session keeps a session memory (a rebuilt one opens likewise)
        self.position = position
        self.text_start = position
        self.pieces: list[str] = []
        self.origin = blob is None and position == 0
        self.snapshots: list[_Snapshot] = [] if blob is None else [_Snapshot(position, blob)]
        self._chars_since = 0
        self._snapshot_at = time.monotonic()

    # --- acknowledged operations -----------------------------------------------------------

    def appended(self, text: str, position: int) -> None:
        if position != self.position + len(text):  # cannot happen with a well-behaved server
            self._lose_base(position)
            return
        if text:
            self.pieces.append(text)
        self.position = position
        self._chars_since += len(text)

    def rewound(self, position: int) -> None:
        if position < self.text_start:
            self._lose_base(position)
            return
        self.pieces = _cut(self.pieces, position - self.text_start)
        self.position = position
        self.snapshots = [s for s in self.snapshots if s.position <= position]
        self._chars_since = position - self.snapshots[-1].position if self.snapshots else position

    def reset(self) -> None:
        self.position = self.text_start = 0
        self.pieces = []
        self.origin = True
        self.snapshots.clear()
        self._chars_since = 0

    def snapshotted(self, blob: bytes) -> None:
        self.snapshots.append(_Snapshot(self.position, blob))
        self._chars_since = 0
        self._snapshot_at = time.monotonic()
        while len(self.snapshots) > self.policy.snapshots_kept:
            self.snapshots.pop(0)
            oldest = self.snapshots[0].position
            self.pieces = _drop(self.pieces, oldest - self.text_start)
            self.text_start = oldest
            self.origin = False

    def _lose_base(self, position: int) -> None:
        # The session is somewhere the journal cannot rebuild (e.g. rewound past the oldest
        # kept text). It goes on working; a failover before the next snapshot is impossible.
        self.position = self.text_start = position
        self.pieces = []
        self.origin = False
        self.snapshots.clear()

    # --- queries -----------------------------------------------------------------------------

    def snapshot_due(self) -> bool:
        if self._chars_since == 0:
            return False
        every_chars, every_s = self.policy.snapshot_every_chars, self.policy.snapshot_every_s
        if every_chars is not None and self._chars_since >= every_chars:
            return True
        return every_s is not None and time.monotonic() - self._snapshot_at >= every_s

    @property
    def recoverable(self) -> bool:
        return self.origin or bool(self.snapshots)

    def base(self) -> tuple[bytes | None, list[str]]:
        """The newest snapshot (None: start from an empty session) and the pieces to replay."""
        if self.snapshots:
            snap = self.snapshots[-1]
            return snap.blob, _drop(self.pieces, snap.position - self.text_start)
        if self.origin:
            return None, list(self.pieces)
        raise _errors.FailoverFailed("the session cannot be rebuilt: no snapshot covers its position")


def pieces(text: str, limit: int) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` characters (the server's max append)."""
    return [text[i : i + limit] for i in range(0, len(text), limit)] or [""]


def _cut(parts: list[str], chars: int) -> list[str]:
    """The first ``chars`` characters of ``parts``, keeping the piece boundaries."""
    out: list[str] = []
    for p in parts:
        if chars <= 0:
            break
        out.append(p[:chars])
        chars -= len(p)
    return out


def _drop(parts: list[str], chars: int) -> list[str]:
    """``parts`` without their first ``chars`` characters (snapshots lie on piece boundaries;
    a cut inside a piece keeps its rest as a piece)."""
    out: list[str] = []
    for p in parts:
        if chars >= len(p):
            chars -= len(p)
            continue
        out.append(p[max(chars, 0) :])
        chars = 0
    return out
