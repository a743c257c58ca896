"""Admission: the per-tenant quotas and the global stream cap, counted in one place.

The engine core owns the one ``Admission`` of a server (core thread only: no lock), so every way
to create or feed a session, from any frontend and any API (cellserve.v1 unary and stream,
Resume, KServe unary and stream, completions), is counted by the same numbers, exactly, in one
process and with ``--frontends N`` alike:

- sessions per tenant: checked when the core creates a session (open, resume, KServe START),
  against the live sessions the core counts for that tenant;
- streams per tenant and ``max_concurrent_streams`` over all tenants: a stream is a lease the
  core hands out (``open_stream``) and takes back (``close_stream``; a frontend that restarts
  gives back all of its previous incarnation's);
- running completion alternatives per tenant: counted from ``complete`` until each alternative
  ends, whatever ends it;
- characters per second per tenant: a token bucket charged by every accepted append (a retry
  of an applied piece is free).

A tenant's limits come from its frontend (the tokens file, read there): ``set_limits`` is sent
before the tenant's calls, so it reaches the core first. A tenant the core has no limits for
(authentication off) has only the global caps.

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

STREAM_RETRY_S = 1.0  # streams are long-lived: a slot frees up on the order of seconds
SESSION_RETRY_S = 5.0
COMPLETION_RETRY_S = 0.5
RESERVE_DIVISOR = 8  # the last eighth of a global cap is kept for tenants below their fair share
_PRUNE_ABOVE = 4096  # buckets kept for tenants with nothing held and a full bucket


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


class _Bucket:
    __slots__ = ("refilled", "tokens")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.refilled = now


class Admission:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._limits: dict[str, Limits] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[int, tuple[str, str]] = {}  # stream lease -> (tenant, holder)
        self._tenant_streams: dict[str, int] = {}
        self._completions: dict[str, int] = {}  # running alternatives per tenant
        self._ids = itertools.count(1)

    # ---- limits -------------------------------------------------------------------------------
    def set_limits(self, owner: str, limits: Limits) -> None:
        self._limits[owner] = limits

    def limits(self, owner: str) -> Limits | None:
        return self._limits.get(owner)

    # ---- sessions -----------------------------------------------------------------------------
    def check_session(self, owner: str, held: dict[str, int], total: int) -> None:
        """Before a new session of ``owner``; ``held``: live sessions per tenant, ``total``: all."""
        mine = held.get(owner, 0)
        lim = self._limits.get(owner)
        if lim is not None and mine >= lim.max_sessions:
            raise CapacityExceeded(
                f"this tenant holds {mine} sessions, its quota (max_sessions={lim.max_sessions}); "
                "close sessions you no longer use",
                retry_after_s=SESSION_RETRY_S,
            )
        cap = self._settings.max_sessions
        if lim is not None and over_fair_share(total, cap, mine, len(held) + (owner not in held)):
            raise CapacityExceeded(
                f"the server is nearly full (max_sessions={cap}) and this tenant holds its fair share "
                f"({mine} sessions); close sessions you no longer use",
                retry_after_s=SESSION_RETRY_S,
            )

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
        running = self._completions.get(owner, 0)
        lim = self._limits.get(owner)
        if lim is not None and running + n > lim.max_completions:
            raise CapacityExceeded(
                f"this tenant runs {running} completion alternatives; {n} more would pass its quota "
                f"(max_completions={lim.max_completions})",
                retry_after_s=COMPLETION_RETRY_S,
            )
        self._completions[owner] = running + n

    def end_alternative(self, owner: str) -> None:
        left = self._completions.pop(owner, 1) - 1
        if left > 0:
            self._completions[owner] = left

    # ---- characters per second ----------------------------------------------------------------
    def take_chars(self, owner: str, n: int) -> None:
        """Spends ``n`` characters from the tenant's bucket, or refuses without spending."""
        lim = self._limits.get(owner)
        if lim is None:
            return
        now = self._clock()
        b = self._buckets.get(owner)
        if b is None:
            if len(self._buckets) > _PRUNE_ABOVE:
                self._prune(now)
            b = self._buckets[owner] = _Bucket(lim.chars_burst, now)
        b.tokens = min(float(lim.chars_burst), b.tokens + (now - b.refilled) * lim.chars_per_s)
        b.refilled = now
        # An append longer than the bucket goes once the bucket is full and leaves a debt, so a
        # small chars_burst override never blocks a long paste forever; the rate still holds.
        need = min(n, lim.chars_burst)
        if need > b.tokens:
            raise CapacityExceeded(
                f"this tenant is appending faster than its quota (chars_per_s={lim.chars_per_s:g})",
                retry_after_s=(need - b.tokens) / lim.chars_per_s,
            )
        b.tokens -= n

    def _prune(self, now: float) -> None:
        for owner, b in list(self._buckets.items()):
            if now - b.refilled > 60:  # refilled by now whatever the rate: forgetting it changes nothing
                del self._buckets[owner]
