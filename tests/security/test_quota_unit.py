"""The quota accounting held by the engine core (``cellserve.engine.admission``) with a fake
clock: per-tenant isolation, token-bucket refill and hints, stream leases given back once, the
global stream cap and the fair-share reserve."""

from __future__ import annotations

import pytest
from cellserve.config import Settings
from cellserve.engine.admission import Admission, Limits, SessionLimitReached, over_fair_share
from cellserve.errors import CapacityExceeded

LIMITS = Limits(max_sessions=2, max_streams=1, max_completions=3, chars_per_s=10.0, chars_burst=20)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _admission(clock: Clock | None = None, **settings: object) -> Admission:
    a = Admission(Settings(**settings), clock or Clock())  # type: ignore[arg-type]
    for tenant in ("a", "b"):
        a.set_limits(tenant, LIMITS)
    return a


def test_bucket_refills_and_hints() -> None:
    clock = Clock()
    q = _admission(clock)
    q.take_chars("a", 20)
    with pytest.raises(CapacityExceeded) as info:
        q.take_chars("a", 5)
    assert info.value.retry_after_s == pytest.approx(0.5)
    q.take_chars("b", 20)  # b has a bucket of its own
    clock.now = 0.5
    q.take_chars("a", 5)  # refilled exactly enough


def test_an_append_longer_than_the_bucket_goes_when_full_and_leaves_a_debt() -> None:
    q = _admission()
    q.take_chars("a", 50)  # full bucket: allowed, 30 chars of debt
    with pytest.raises(CapacityExceeded) as info:
        q.take_chars("a", 1)
    assert info.value.retry_after_s == pytest.approx(3.1)


def test_a_tenant_without_limits_has_only_the_global_caps() -> None:
    q = _admission(max_concurrent_streams=3)
    q.take_chars("nobody", 10**6)
    assert [q.open_stream("nobody") for _ in range(3)] == [1, 2, 3]
    with pytest.raises(CapacityExceeded, match="max_concurrent_streams=3"):
        q.open_stream("nobody")


def test_stream_leases_are_per_tenant_and_given_back_once() -> None:
    q = _admission()
    lease = q.open_stream("a")
    with pytest.raises(CapacityExceeded, match="max_streams=1"):
        q.open_stream("a")
    q.open_stream("b")
    q.close_stream(lease)
    q.close_stream(lease)  # twice: still one slot back, not two
    q.open_stream("a")
    with pytest.raises(CapacityExceeded):
        q.open_stream("a")
    assert q.open_streams() == 2
    q.open_stream("nobody", holder="frontend-1")
    q.open_stream("nobody", holder="frontend-1")
    assert q.open_streams() == 4
    q.release_holder("frontend-1")  # that frontend restarted: its leases come back, once
    q.release_holder("frontend-1")
    assert q.open_streams() == 2


def test_completions_are_counted_per_alternative() -> None:
    q = _admission()
    q.start_completion("a", 3)
    with pytest.raises(CapacityExceeded, match="max_completions=3"):
        q.start_completion("a", 1)
    q.start_completion("b", 3)
    q.end_alternative("a")
    q.start_completion("a", 1)


def test_sessions_are_counted_at_admission_and_release() -> None:
    q = _admission()
    for tenant in ("a", "a", "b"):
        q.admit_session(tenant)
    with pytest.raises(CapacityExceeded, match="max_sessions=2"):
        q.admit_session("a")
    q.admit_session("b", count=False)  # a pre-check counts nothing
    assert (q.sessions_of("a"), q.sessions_of("b"), q.total_sessions()) == (2, 1, 3)
    q.release_session("a")
    q.admit_session("a")
    q.release_session("nobody")  # never counted: nothing to give back
    assert (q.sessions_of("a"), q.sessions_of("nobody"), q.total_sessions()) == (2, 0, 3)


def test_the_global_session_cap_is_told_apart() -> None:
    q = _admission(max_sessions=4)
    for tenant in ("nobody", "nobody", "a", "a"):
        q.admit_session(tenant)
    with pytest.raises(SessionLimitReached, match="session limit reached") as info:
        q.admit_session("nobody")
    assert info.value.retry_after_s == 5.0
    with pytest.raises(CapacityExceeded, match="max_sessions=2") as quota:
        q.admit_session("a")  # its own quota comes first: not a SessionLimitReached
    assert not isinstance(quota.value, SessionLimitReached)
    q.release_session("nobody")
    q.admit_session("nobody")


def test_fair_share_keeps_the_last_eighth_for_tenants_below_their_share() -> None:
    # 16 slots, reserve 2: below 14 taken anyone goes; from 14 on only tenants under their share
    # (16 // (tenants holding + 1)).
    assert not over_fair_share(13, 16, 13, 2)
    assert over_fair_share(14, 16, 13, 2)  # 13 >= 16 // 3
    assert not over_fair_share(14, 16, 1, 2)  # the other tenant still gets in
    assert over_fair_share(14, 16, 14, 1)  # alone: the reserve is kept for a tenant yet to come
    assert not over_fair_share(15, 16, 0, 3)  # a tenant holding nothing is never over its share
    assert not over_fair_share(6, 7, 6, 1)  # caps below 8 have no reserve
    q = _admission(max_sessions=16)
    q.set_limits("c", LIMITS)
    limits = Limits(max_sessions=100, max_streams=1, max_completions=3, chars_per_s=10.0, chars_burst=20)
    q.set_limits("a", limits)
    for tenant in ["a"] * 13 + ["b"]:
        q.admit_session(tenant)
    with pytest.raises(CapacityExceeded, match="fair share"):
        q.admit_session("a")
    q.admit_session("b", count=False)
    q.admit_session("c", count=False)  # a newcomer
    q = _admission(max_sessions=16)
    for _ in range(15):
        q.admit_session("nobody")
    q.admit_session("nobody")  # no limits (no authentication): no reserve


def test_fair_share_of_streams() -> None:
    q = _admission(max_concurrent_streams=8)
    q.set_limits("a", Limits(max_sessions=2, max_streams=100, max_completions=3, chars_per_s=10.0, chars_burst=20))
    for _ in range(7):  # alone: 7 of 8 (the reserve of 1 stays for another tenant)
        q.open_stream("a")
    with pytest.raises(CapacityExceeded, match="fair share"):
        q.open_stream("a")
    q.open_stream("b")
    with pytest.raises(CapacityExceeded, match="max_concurrent_streams=8"):
        q.open_stream("c")
