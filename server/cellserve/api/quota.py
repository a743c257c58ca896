"""Per-tenant quotas: live sessions, open streams, running completion alternatives, and
appended characters per second (a token bucket).

Each tenant has its own counters and bucket, so a tenant at its limit is refused
(``CapacityExceeded`` -> RESOURCE_EXHAUSTED with a retry hint) without touching anyone else's
share. The global caps (``max_sessions``, ``max_concurrent_streams``...) still apply on top;
to guarantee every tenant its quota, keep the sum of the tenants' quotas within them.

The interface is narrow on purpose (the engine and the streams call four methods): it holds
no reference to sessions, only counts, and the live-session count comes from the engine
(``sessions_of``, read through the ``EngineClient``) so that expiry and close need no bookkeeping here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..config import Settings
from ..errors import CapacityExceeded

STREAM_RETRY_S = 1.0
SESSION_RETRY_S = 5.0
COMPLETION_RETRY_S = 0.5
_PRUNE_ABOVE = 4096  # usage records kept for tenants with nothing held and a full bucket


@dataclass(frozen=True)
class Limits:
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


class _Usage:
    __slots__ = ("completions", "refilled", "streams", "tokens")

    def __init__(self, burst: int, now: float) -> None:
        self.streams = 0
        self.completions = 0
        self.tokens = float(burst)
        self.refilled = now


class Lease:
    """A held stream or completion slot; ``release`` gives it back (once)."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class Quotas:
    def __init__(
        self, sessions_of: Callable[[str], Awaitable[int]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sessions_of = sessions_of
        self._clock = clock
        self._usage: dict[str, _Usage] = {}

    def _get(self, tenant: str, limits: Limits) -> _Usage:
        u = self._usage.get(tenant)
        if u is None:
            if len(self._usage) > _PRUNE_ABOVE:
                self._prune()
            u = self._usage[tenant] = _Usage(limits.chars_burst, self._clock())
        return u

    def _prune(self) -> None:
        now = self._clock()
        for t, u in list(self._usage.items()):
            if not u.streams and not u.completions and now - u.refilled > 60:
                del self._usage[t]

    async def check_session(self, tenant: str, limits: Limits) -> None:
        """Before opening or resuming a session."""
        held = await self._sessions_of(tenant)
        if held >= limits.max_sessions:
            raise CapacityExceeded(
                f"this tenant holds {held} sessions, its quota (max_sessions={limits.max_sessions}); "
                "close sessions you no longer use",
                retry_after_s=SESSION_RETRY_S,
            )

    def acquire_stream(self, tenant: str, limits: Limits) -> Lease:
        u = self._get(tenant, limits)
        if u.streams >= limits.max_streams:
            raise CapacityExceeded(
                f"this tenant has {u.streams} open streams, its quota (max_streams={limits.max_streams})",
                retry_after_s=STREAM_RETRY_S,
            )
        u.streams += 1

        def release() -> None:
            u.streams -= 1

        return Lease(release)

    def acquire_completions(self, tenant: str, limits: Limits, n: int) -> Lease:
        u = self._get(tenant, limits)
        if u.completions + n > limits.max_completions:
            raise CapacityExceeded(
                f"this tenant runs {u.completions} completion alternatives; {n} more would pass its quota "
                f"(max_completions={limits.max_completions})",
                retry_after_s=COMPLETION_RETRY_S,
            )
        u.completions += n

        def release() -> None:
            u.completions -= n

        return Lease(release)

    def take_chars(self, tenant: str, limits: Limits, n: int) -> None:
        """Spends ``n`` characters from the tenant's bucket, or refuses without spending."""
        u = self._get(tenant, limits)
        now = self._clock()
        u.tokens = min(float(limits.chars_burst), u.tokens + (now - u.refilled) * limits.chars_per_s)
        u.refilled = now
        # An append longer than the bucket goes once the bucket is full and leaves a debt, so a
        # small chars_burst override never blocks a long paste forever; the rate still holds.
        need = min(n, limits.chars_burst)
        if need > u.tokens:
            wait = (need - u.tokens) / limits.chars_per_s
            raise CapacityExceeded(
                f"this tenant is appending faster than its quota (chars_per_s={limits.chars_per_s:g})",
                retry_after_s=wait,
            )
        u.tokens -= n
