"""The quota accounting (``cellserve.api.quota``) with a fake clock: per-tenant isolation,
token-bucket refill and hints, leases given back once."""

from __future__ import annotations

import asyncio

import pytest
from cellserve.api.quota import Limits, Quotas
from cellserve.errors import CapacityExceeded

LIMITS = Limits(max_sessions=2, max_streams=1, max_completions=3, chars_per_s=10.0, chars_burst=20)


async def no_sessions(tenant: str) -> int:
    return 0


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_and_hints() -> None:
    clock = Clock()
    q = Quotas(no_sessions, clock)
    q.take_chars("a", LIMITS, 20)
    with pytest.raises(CapacityExceeded) as info:
        q.take_chars("a", LIMITS, 5)
    assert info.value.retry_after_s == pytest.approx(0.5)
    q.take_chars("b", LIMITS, 20)  # b has a bucket of its own
    clock.now = 0.5
    q.take_chars("a", LIMITS, 5)  # refilled exactly enough


def test_an_append_longer_than_the_bucket_goes_when_full_and_leaves_a_debt() -> None:
    clock = Clock()
    q = Quotas(no_sessions, clock)
    q.take_chars("a", LIMITS, 50)  # full bucket: allowed, 30 chars of debt
    with pytest.raises(CapacityExceeded) as info:
        q.take_chars("a", LIMITS, 1)
    assert info.value.retry_after_s == pytest.approx(3.1)


def test_leases_are_per_tenant_and_released_once() -> None:
    q = Quotas(no_sessions)
    lease = q.acquire_stream("a", LIMITS)
    with pytest.raises(CapacityExceeded):
        q.acquire_stream("a", LIMITS)
    q.acquire_stream("b", LIMITS)
    lease.release()
    lease.release()  # twice: still one slot back, not two
    q.acquire_stream("a", LIMITS)
    with pytest.raises(CapacityExceeded):
        q.acquire_stream("a", LIMITS)
    c = q.acquire_completions("a", LIMITS, 3)
    with pytest.raises(CapacityExceeded):
        q.acquire_completions("a", LIMITS, 1)
    c.release()
    q.acquire_completions("a", LIMITS, 1)


def test_sessions_come_from_the_engine_count() -> None:
    held = {"a": 2, "b": 1}

    async def sessions_of(tenant: str) -> int:
        return held.get(tenant, 0)

    q = Quotas(sessions_of)
    with pytest.raises(CapacityExceeded, match="max_sessions=2"):
        asyncio.run(q.check_session("a", LIMITS))
    asyncio.run(q.check_session("b", LIMITS))
