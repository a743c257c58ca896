"""Admission: the per-tenant quotas and the global caps, counted in one place.

Each engine core owns an ``Admission`` (core thread only), and the cores of a server count in
one ledger, so every way to create or feed a session, from any frontend and any API
(cellserve.v1 unary and stream, Resume, KServe unary and stream, completions), is counted by
the same numbers, exactly, in one process, with ``--frontends N`` and with several cores alike:

- sessions per tenant and ``max_sessions`` over all tenants: counted when the core creates a
  session (open, resume, KServe START, handoff adoption: ``admit_session``) and when it closes
  (``release_session``);
- streams per tenant and ``max_concurrent_streams`` over all tenants: a stream is a lease the
  core hands out (``open_stream``) and takes back (``close_stream``; a frontend that restarts
  gives back all of its previous incarnation's);
- running completion alternatives per tenant: counted from ``complete`` until each alternative
  ends, whatever ends it;
- characters per second per tenant: a token bucket charged by every accepted append (a retry
  of an applied piece is free).

Where the numbers live. Sessions, completions and the character buckets are counted in the
admission ledger (``engine/ledger.py``), each check and its count under the ledger's lock. With
one core process it is a private buffer with no lock; with several core processes (sessions
partitioned among them: docs/design-notes.md, "Several core processes") it is shared
memory, so a tenant's quotas, the global session cap and the fair-share count of tenants stay
exact server-wide, and the one-process server runs the same code. Stream leases stay in this
object's dicts: they are tied to no session, so one core holds every stream lease, exact. The
limits stay here too: every core is sent them.

A tenant's limits come from its frontend (the tokens file, read there): ``set_limits`` is sent
before the tenant's calls, so it reaches the core first. A tenant the core has no limits for
(authentication off) has only the global caps, and its appends touch no ledger at all.

Fair share (the reserve rule). Per-tenant quotas may add up to more than a global cap, so one
tenant within its quota could fill a cap and lock every other tenant out. The last eighth of
each global cap (``max_sessions``, ``max_concurrent_streams``: ``cap // RESERVE_DIVISOR``, none
below 8) is a reserve: once the cap is that close to full, an authenticated tenant that holds
its fair share or more is refused, where the share is ``cap // (n + 1)`` with ``n`` the tenants
holding any (the one asking counted; the "+ 1" keeps room for a tenant yet to come). A tenant
below its share, a newcomer first of all, takes the reserve until the cap itself is full. So
one tenant alone fills seven eighths of a cap, never all of it, and any other tenant finds at
least the reserve. Without authentication (no limits) the rule does not apply.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Settings
from ..errors import CapacityExceeded
from .ledger import Ledger

STREAM_RETRY_S = 1.0  # streams are long-lived: a slot frees up on the order of seconds
SESSION_RETRY_S = 5.0
COMPLETION_RETRY_S = 0.5
RESERVE_DIVISOR = 8  # the last eighth of a global cap is kept for tenants below their fair share


@dataclass(frozen=True)
class Limits:
    """One tenant's quotas (the Settings defaults, or its tokens-file overrides)."""

    max_sessions: int
    max_streams: int
    max_completions: int
    chars_per_s: float
    chars_burst: int

    @classmethod
    def defaults(cls, settings: Settings) -> Limits:
        return cls(
            settings.tenant_max_sessions,
            settings.tenant_max_streams,
            settings.tenant_max_completions,
            settings.tenant_chars_per_s,
            max(settings.tenant_chars_burst, settings.max_append_chars),
        )


def over_fair_share(total: int, cap: int, held: int, holders: int) -> bool:
    """The reserve rule: ``total`` of ``cap`` are taken, ``held`` by the tenant asking, and
    ``holders`` tenants (the one asking counted) hold any."""
    reserve = cap // RESERVE_DIVISOR
    if reserve == 0 or total < cap - reserve or held == 0:
        return False
    return held >= cap // (holders + 1)


class SessionLimitReached(CapacityExceeded):
    """The global ``max_sessions`` cap is full (the core counts these refusals apart)."""


class Admission:
    def __init__(
        self, settings: Settings, clock: Callable[[], float] = time.monotonic, ledger: Ledger | None = None
    ) -> None:
        """``ledger``: where sessions, completions and characters are counted (a shared one when
        several core processes serve; default, a private one). ``clock``: the buckets' time, in
        seconds; with a shared ledger, one clock for every process (``time.monotonic``)."""
        self._settings = settings
        self._clock = clock
        self._ledger = ledger if ledger is not None else Ledger.local()
        self._limits: dict[str, Limits] = {}
        self._streams: dict[int, tuple[str, str]] = {}  # stream lease -> (tenant, holder)
        self._tenant_streams: dict[str, int] = {}
        self._ids = itertools.count(1)

    # ---- limits -------------------------------------------------------------------------------
    def set_limits(self, owner: str, limits: Limits) -> None:
        self._limits[owner] = limits

    def limits(self, owner: str) -> Limits | None:
        return self._limits.get(owner)

    # ---- sessions ----------------------------------------------------------------------------
    def admit_session(self, owner: str, count: bool = True) -> None:
        """Counts a new session of ``owner``, or raises CapacityExceeded (nothing counted): the
        tenant's quota, the reserve rule, then the global cap (``SessionLimitReached``).
        ``count=False``: the same checks, nothing counted (a pre-check before work that a
        refusal would waste; the counting call still decides)."""
        lim = self._limits.get(owner)
        cap = self._settings.max_sessions
        led = self._ledger
        with led.lock:  # check and count as one: no other core process gets in between
            i = led.slot(owner)
            mine = led.sessions(i)
            if lim is not None and mine >= lim.max_sessions:
                raise CapacityExceeded(
                    f"this tenant holds {mine} sessions, its quota (max_sessions={lim.max_sessions}); "
                    "close sessions you no longer use",
                    retry_after_s=SESSION_RETRY_S,
                )
            total = led.total_sessions()
            if lim is not None and over_fair_share(total, cap, mine, led.holders() + (mine == 0)):
                raise CapacityExceeded(
                    f"the server is nearly full (max_sessions={cap}) and this tenant holds its fair share "
                    f"({mine} sessions); close sessions you no longer use",
                    retry_after_s=SESSION_RETRY_S,
                )
            if total >= cap:
                raise SessionLimitReached(
                    "session limit reached", retry_after_s=min(SESSION_RETRY_S, self._settings.session_idle_ttl_s)
                )
            if count:
                led.add_session(i, 1)

    def release_session(self, owner: str) -> None:
        """One session of ``owner`` closed (never below zero)."""
        led = self._ledger
        with led.lock:
            i = led.find(owner)
            if i >= 0:
                led.add_session(i, -1)

    def sessions_of(self, owner: str) -> int:
        """Live sessions of ``owner``, over every core process."""
        led = self._ledger
        with led.lock:
            i = led.find(owner)
            return led.sessions(i) if i >= 0 else 0

    def total_sessions(self) -> int:
        """Live sessions of every tenant, over every core process."""
        led = self._ledger
        with led.lock:
            return led.total_sessions()

    # ---- streams ------------------------------------------------------------------------------
    def open_stream(self, owner: str, holder: str = "") -> int:
        """A stream lease for ``owner``, or CapacityExceeded (nothing held). ``holder``: the
        frontend that holds it (``release_holder`` gives back all of a frontend's at once)."""
        mine = self._tenant_streams.get(owner, 0)
        lim = self._limits.get(owner)
        if lim is not None and mine >= lim.max_streams:
            raise CapacityExceeded(
                f"this tenant has {mine} open streams, its quota (max_streams={lim.max_streams})",
                retry_after_s=STREAM_RETRY_S,
            )
        cap = self._settings.max_concurrent_streams
        total = len(self._streams)
        if total >= cap:
            raise CapacityExceeded(
                f"too many concurrent streams (max_concurrent_streams={cap})", retry_after_s=STREAM_RETRY_S
            )
        holders = len(self._tenant_streams) + (owner not in self._tenant_streams)
        if lim is not None and over_fair_share(total, cap, mine, holders):
            raise CapacityExceeded(
                f"too many concurrent streams (max_concurrent_streams={cap}) and this tenant holds its "
                f"fair share ({mine} streams)",
                retry_after_s=STREAM_RETRY_S,
            )
        lease = next(self._ids)
        self._streams[lease] = (owner, holder)
        self._tenant_streams[owner] = mine + 1
        return lease

    def close_stream(self, lease: int) -> None:
        """Gives a stream lease back; an unknown (or already returned) one is ignored."""
        entry = self._streams.pop(lease, None)
        if entry is None:
            return
        owner = entry[0]
        left = self._tenant_streams.pop(owner, 1) - 1
        if left > 0:
            self._tenant_streams[owner] = left

    def release_holder(self, holder: str) -> None:
        """Every lease ``holder`` holds comes back (that frontend restarted: its streams died)."""
        for lease in [k for k, (_, h) in self._streams.items() if h == holder]:
            self.close_stream(lease)

    def open_streams(self) -> int:
        return len(self._streams)

    # ---- completions --------------------------------------------------------------------------
    def start_completion(self, owner: str, n: int) -> None:
        """Holds ``n`` running alternatives of ``owner`` (each ended by ``end_alternative``)."""
        lim = self._limits.get(owner)
        led = self._ledger
        with led.lock:
            i = led.slot(owner)
            running = led.completions(i)
            if lim is not None and running + n > lim.max_completions:
                raise CapacityExceeded(
                    f"this tenant runs {running} completion alternatives; {n} more would pass its quota "
                    f"(max_completions={lim.max_completions})",
                    retry_after_s=COMPLETION_RETRY_S,
                )
            led.add_completions(i, n)

    def end_alternative(self, owner: str) -> None:
        led = self._ledger
        with led.lock:
            i = led.find(owner)
            if i >= 0:
                led.add_completions(i, -1)

    # ---- characters per second ----------------------------------------------------------------
    def take_chars(self, owner: str, n: int) -> None:
        """Spends ``n`` characters from the tenant's bucket, or refuses without spending."""
        lim = self._limits.get(owner)
        if lim is None:
            return
        burst = float(lim.chars_burst)
        led = self._ledger
        with led.lock:
            i = led.slot(owner)
            now = self._clock()  # under the lock: refills in clock order, none ever negative
            b = led.bucket(i)
            if b is None:
                tokens = burst  # a new bucket starts full
            else:
                tokens = min(burst, b[0] + (now - b[1]) * lim.chars_per_s)
            # An append longer than the bucket goes once the bucket is full and leaves a debt, so a
            # small chars_burst override never blocks a long paste forever; the rate still holds.
            need = min(n, lim.chars_burst)
            if need > tokens:
                led.set_bucket(i, tokens, now)
                raise CapacityExceeded(
                    f"this tenant is appending faster than its quota (chars_per_s={lim.chars_per_s:g})",
                    retry_after_s=(need - tokens) / lim.chars_per_s,
                )
            led.set_bucket(i, tokens - n, now)
