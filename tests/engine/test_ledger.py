"""The admission ledger (``cellserve.engine.ledger``): the tenant table (lookups, probing past
collisions, a full table), the same behaviour over private and shared memory, and exact counts
when several spawned processes charge one shared ledger at once (sessions, completions,
characters); the segment outlives a child and goes with the parent's close.

Cross-process tests start their processes with the "spawn" context (as the supervisor does),
hold them at a barrier so they charge together, and join every one (killed after a timeout)."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import SpawnContext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cellserve.config import Settings
from cellserve.engine.admission import Admission, Limits, SessionLimitReached
from cellserve.engine.core_io import Deliveries
from cellserve.engine.ledger import Ledger, LedgerHandle, tenant_key
from cellserve.engine.session_table import SessionTable
from cellserve.engine.types import SessionEvent
from cellserve.errors import CapacityExceeded

JOIN_S = 20.0  # a child still running by then is killed (and the test fails)


def _limits(sessions: int = 100, completions: int = 100, per_s: float = 10.0, burst: int = 20) -> Limits:
    return Limits(
        max_sessions=sessions, max_streams=10, max_completions=completions, chars_per_s=per_s, chars_burst=burst
    )


def _names_at(home: int, capacity: int, count: int) -> list[str]:
    """``count`` tenant names whose probe starts at slot ``home`` of a ``capacity`` table."""
    names = (f"tenant-{i}" for i in itertools.count())
    return list(itertools.islice((n for n in names if tenant_key(n) % capacity == home), count))


@pytest.fixture
def ctx() -> SpawnContext:
    return mp.get_context("spawn")


@pytest.fixture
def handles(ctx: SpawnContext) -> Iterator[Callable[..., LedgerHandle]]:
    """Makes shared ledgers; every one is unlinked after the test."""
    made: list[LedgerHandle] = []

    def make(tenants: int = 64) -> LedgerHandle:
        made.append(Ledger.create_shared(ctx, tenants))
        return made[-1]

    yield make
    for h in made:
        h.close()


@pytest.fixture(params=["local", "shared"])
def make_ledger(
    request: pytest.FixtureRequest, handles: Callable[..., LedgerHandle]
) -> Iterator[Callable[[int], Ledger]]:
    """A ledger of either storage: every behaviour below holds for both."""
    opened: list[Ledger] = []

    def make(tenants: int) -> Ledger:
        led = Ledger.local(tenants) if request.param == "local" else Ledger.attach(handles(tenants))
        opened.append(led)
        return led

    yield make
    for led in opened:
        led.close()


# ---- the tenant table ---------------------------------------------------------------------------
def test_a_tenant_keeps_its_slot_and_an_unknown_one_takes_none(make_ledger: Callable[[int], Ledger]) -> None:
    led = make_ledger(64)
    with led.lock:
        a, b = led.slot("alice"), led.slot("bob")
        assert a != b and led.slot("alice") == a and led.find("bob") == b
        assert led.find("carol") == -1  # a read claims nothing
        assert led.tenants() == 2
        led.add_session(a, 1)
        led.add_session(a, 1)
        led.add_completions(b, 3)
        assert (led.sessions(a), led.sessions(b), led.completions(a), led.completions(b)) == (2, 0, 0, 3)


def test_colliding_tenants_probe_on_and_wrap_around(make_ledger: Callable[[int], Ledger]) -> None:
    led = make_ledger(5)
    first, second, third = _names_at(4, 5, 3)  # all start at the last slot
    (at_zero,) = _names_at(0, 5, 1)
    with led.lock:
        assert [led.slot(first), led.slot(second), led.slot(third)] == [4, 0, 1]
        assert led.slot(at_zero) == 2  # its own slot 0 taken by a collision: probes past 0 and 1
        for n, name in enumerate([first, second, third, at_zero], start=1):
            led.add_session(led.slot(name), n)
        assert [led.sessions(led.find(n)) for n in (first, second, third, at_zero)] == [1, 2, 3, 4]


def test_another_process_view_finds_the_probed_slots(handles: Callable[..., LedgerHandle]) -> None:
    h = handles(5)
    one, two = Ledger.attach(h), Ledger.attach(h)  # two has an empty name -> slot cache
    try:
        names = _names_at(4, 5, 2) + _names_at(0, 5, 1)
        with one.lock:
            slots = [one.slot(n) for n in names]
            one.add_session(slots[1], 1)
        with two.lock:
            assert [two.find(n) for n in names] == slots == [4, 0, 1]
            assert two.sessions(two.find(names[1])) == 1
    finally:
        one.close()
        two.close()


def test_a_full_table_refuses_a_new_tenant_only(make_ledger: Callable[[int], Ledger]) -> None:
    led = make_ledger(3)
    with led.lock:
        known = [led.slot(f"t{i}") for i in range(3)]
        with pytest.raises(CapacityExceeded, match="at most 3 tenants"):
            led.slot("one-too-many")
        assert led.find("one-too-many") == -1
        assert [led.slot(f"t{i}") for i in range(3)] == known  # the known ones still count
        assert led.tenants() == 3


def test_sessions_keep_the_total_and_the_holders(make_ledger: Callable[[int], Ledger]) -> None:
    led = make_ledger(8)
    with led.lock:
        a, b = led.slot("a"), led.slot("b")
        led.add_session(a, 1)
        led.add_session(a, 1)
        led.add_session(b, 1)
        assert (led.total_sessions(), led.holders()) == (3, 2)
        led.add_session(b, -1)
        led.add_session(b, -1)  # never below zero, the total neither
        assert (led.sessions(b), led.total_sessions(), led.holders()) == (0, 2, 1)
        assert led.bucket(a) is None
        led.set_bucket(a, 2.5, 7.0)
        assert led.bucket(a) == (2.5, 7.0)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _admission_script(led: Ledger) -> list[object]:
    """Every refusal kind and count, through an Admission over ``led``."""
    clock = Clock()
    adm = Admission(Settings(max_sessions=16), clock, ledger=led)
    adm.set_limits("a", _limits(sessions=13, completions=3))
    adm.set_limits("b", _limits(sessions=2, completions=3))
    out: list[object] = []

    def attempt(call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
            out.append("ok")
        except CapacityExceeded as e:
            out.append((type(e).__name__, str(e), round(e.retry_after_s, 9)))

    for _ in range(14):
        attempt(adm.admit_session, "a")  # 13, then its quota
    for _ in range(3):
        attempt(adm.admit_session, "b")  # 2 (into the reserve: below its share), then its quota
    for _ in range(3):
        attempt(adm.admit_session, "nobody")  # no limits: the last one, then SessionLimitReached
    adm.release_session("a")
    attempt(adm.admit_session, "a")  # 12 of 16: over its fair share in the reserve
    attempt(adm.start_completion, "a", 2)
    attempt(adm.start_completion, "a", 2)
    adm.end_alternative("a")
    attempt(adm.start_completion, "a", 2)
    for n in (15, 10, 1):
        attempt(adm.take_chars, "a", n)  # 5 left: 10 refused, 1 goes
    clock.now = 0.25
    attempt(adm.take_chars, "a", 3)  # refilled to 6.5
    attempt(adm.take_chars, "a", 100)  # waits for a full bucket: 1.65 s
    out.append((adm.sessions_of("a"), adm.sessions_of("b"), adm.sessions_of("nobody"), adm.total_sessions()))
    return out


def test_local_and_shared_ledgers_admit_alike(handles: Callable[..., LedgerHandle]) -> None:
    local = _admission_script(Ledger.local())
    shared_ledger = Ledger.attach(handles())
    try:
        shared = _admission_script(shared_ledger)
    finally:
        shared_ledger.close()
    assert local == shared
    kinds = {o[0] for o in local if isinstance(o, tuple) and isinstance(o[0], str)}
    assert kinds == {"CapacityExceeded", "SessionLimitReached"}
    assert local[-1] == (12, 2, 1, 15)


def test_the_table_gives_the_count_back_when_an_open_fails() -> None:
    adm = Admission(Settings(max_sessions=1))
    table = SessionTable(adm, {}, Deliveries(), None)

    def no_slot() -> int:
        raise CapacityExceeded("no slot")

    rt = SimpleNamespace(alloc=SimpleNamespace(alloc=no_slot))
    with pytest.raises(CapacityExceeded, match="no slot"):
        table.open(rt, "a", 0, None, SessionEvent.OPENED)
    assert adm.total_sessions() == 0 and table.owner_count("a") == 0
    adm.admit_session("a")
    with pytest.raises(SessionLimitReached):
        table.open(rt, "a", 0, None, SessionEvent.OPENED)
    assert table.events == {SessionEvent.REJECTED_SESSIONS: 1}


# ---- several processes, one shared ledger --------------------------------------------------------
def _run(ctx: SpawnContext, target: Callable[..., None], args: list[tuple[Any, ...]], out: Any) -> list[Any]:
    """Starts one process per args (each puts one result on ``out``); their results once all
    have joined."""
    procs = [ctx.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=JOIN_S) for _ in procs]  # before join: a queue's feeder holds a child
    finally:
        for p in procs:
            p.join(JOIN_S)
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return results


def _admit_sessions(
    handle: LedgerHandle, tenant: str, limits: Limits | None, cap: int, together: Any, greedy: Any, out: Any
) -> None:
    """Admits and releases at the cap's edge, then (all processes together) admits up to 200
    more without releasing; puts the sessions it holds."""
    led = Ledger.attach(handle)
    try:
        adm = Admission(Settings(max_sessions=cap), ledger=led)
        if limits is not None:
            adm.set_limits(tenant, limits)
        held = 0
        together.wait(JOIN_S)
        for i in range(3000):  # +2 -1 per three steps: soon at the cap, then churning there
            if held and i % 3 == 2:
                adm.release_session(tenant)
                held -= 1
                continue
            try:
                adm.admit_session(tenant)
                held += 1
            except CapacityExceeded:
                pass
        greedy.wait(JOIN_S)  # no process releases from here on
        for _ in range(200):
            try:
                adm.admit_session(tenant)
                held += 1
            except CapacityExceeded:
                pass
        out.put((tenant, held))
    finally:
        led.close()


@pytest.mark.parametrize(
    ("tenants", "limits", "expected"),
    [
        (["a", "a", "a"], _limits(sessions=100), {"a": 100}),  # one tenant's quota
        (["a", "b", "c"], None, None),  # no limits: the global cap alone, 250
    ],
    ids=["one-tenant-quota", "global-cap"],
)
def test_sessions_are_exact_across_processes(
    ctx: SpawnContext,
    handles: Callable[..., LedgerHandle],
    tenants: list[str],
    limits: Limits | None,
    expected: dict[str, int] | None,
) -> None:
    cap = 250
    h = handles()
    together, greedy, out = ctx.Barrier(len(tenants)), ctx.Barrier(len(tenants)), ctx.Queue()
    results = _run(ctx, _admit_sessions, [(h, t, limits, cap, together, greedy, out) for t in tenants], out)
    held: dict[str, int] = {}
    for tenant, n in results:
        held[tenant] = held.get(tenant, 0) + n
    led = Ledger.attach(h)
    try:
        with led.lock:
            counted = {t: led.sessions(led.find(t)) for t in held}
            total = led.total_sessions()
    finally:
        led.close()
    assert counted == held  # no update lost: the ledger counts what the processes hold
    assert total == sum(held.values()) == (cap if expected is None else sum(expected.values()))
    if expected is not None:
        assert held == expected


def _run_completions(handle: LedgerHandle, quota: int, together: Any, greedy: Any, out: Any) -> None:
    led = Ledger.attach(handle)
    try:
        adm = Admission(Settings(), ledger=led)
        adm.set_limits("a", _limits(completions=quota))
        running = 0
        together.wait(JOIN_S)
        for i in range(3000):
            if running and i % 3 == 2:
                adm.end_alternative("a")
                running -= 1
                continue
            try:
                adm.start_completion("a", 1)
                running += 1
            except CapacityExceeded:
                pass
        greedy.wait(JOIN_S)
        for _ in range(100):
            try:
                adm.start_completion("a", 1)
                running += 1
            except CapacityExceeded:
                pass
        out.put(running)
    finally:
        led.close()


def test_the_completions_quota_is_exact_across_processes(
    ctx: SpawnContext, handles: Callable[..., LedgerHandle]
) -> None:
    h = handles()
    together, greedy, out = ctx.Barrier(3), ctx.Barrier(3), ctx.Queue()
    running = _run(ctx, _run_completions, [(h, 50, together, greedy, out)] * 3, out)
    led = Ledger.attach(h)
    try:
        with led.lock:
            counted = led.completions(led.find("a"))
    finally:
        led.close()
    assert sum(running) == counted == 50


RATE, BURST = 2000.0, 5000  # a deep bucket: both processes drain it together for a while


def _drain_chars(handle: LedgerHandle, seconds: float, together: Any, out: Any) -> None:
    """Takes one character at a time for ``seconds``; puts (granted, first try, last try)."""
    led = Ledger.attach(handle)
    try:
        adm = Admission(Settings(), ledger=led)
        adm.set_limits("a", _limits(per_s=RATE, burst=BURST))
        granted = 0
        together.wait(JOIN_S)
        first = time.monotonic()
        end = first + seconds
        while (last := time.monotonic()) < end:
            try:
                adm.take_chars("a", 1)
                granted += 1
            except CapacityExceeded:
                pass
        out.put((granted, first, last))
    finally:
        led.close()


def test_a_shared_bucket_drained_by_two_processes_gives_out_no_more_than_its_rate(
    ctx: SpawnContext, handles: Callable[..., LedgerHandle]
) -> None:
    h = handles()
    together, out = ctx.Barrier(2), ctx.Queue()
    results = _run(ctx, _drain_chars, [(h, 0.5, together, out)] * 2, out)
    granted = sum(g for g, _, _ in results)
    # every charge fell in [first try, last try] of all: the bucket was full at the first
    window = max(last for _, _, last in results) - min(first for _, first, _ in results)
    assert all(g > 0 for g, _, _ in results)  # both charged the one bucket
    assert BURST + RATE * window * 0.5 <= granted <= BURST + RATE * window


# ---- the segment's life ---------------------------------------------------------------------------
def _attach_count_exit(handle: LedgerHandle, out: Any) -> None:
    """Attaches, counts a session, closes its copy of the handle (which must not unlink), and
    exits without closing the ledger."""
    led = Ledger.attach(handle)
    Admission(Settings(), ledger=led).admit_session("child")
    handle.close()
    out.put("done")


def test_the_segment_outlives_a_child_and_goes_with_the_parents_close(ctx: SpawnContext) -> None:
    h = Ledger.create_shared(ctx, 16)
    try:
        out = ctx.Queue()
        assert _run(ctx, _attach_count_exit, [(h, out), (h, out)], out) == ["done", "done"]
        led = Ledger.attach(h)  # still there after both children exited
        assert Admission(Settings(), ledger=led).sessions_of("child") == 2
        led.close()
    finally:
        h.close()
    with pytest.raises(FileNotFoundError):
        Ledger.attach(h)
    h.close()  # twice: nothing left to do


LIFECYCLE = """
import multiprocessing as mp
import sys
from cellserve.engine.ledger import Ledger

def child(handle):
    led = Ledger.attach(handle)
    with led.lock:
        led.add_session(led.slot("x"), 1)
    # no close: the exit must neither unlink nor complain

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    handle = Ledger.create_shared(ctx, 16)
    led = Ledger.attach(handle)
    p = ctx.Process(target=child, args=(handle,))
    p.start()
    p.join(20)
    with led.lock:
        assert led.sessions(led.find("x")) == 1, "the child's count is lost"
    led.close()
    handle.close()
    print("ok", p.exitcode)
"""


def test_a_process_tree_leaves_no_segment_and_no_tracker_complaint(tmp_path: Path) -> None:
    """The whole life (create, a child attaches and exits, the parent attaches, closes and
    unlinks) in a fresh interpreter, whose resource tracker writes to the stderr read here: it
    prints a KeyError if a child unregistered the segment, a warning if one was leaked."""
    script = tmp_path / "lifecycle.py"
    script.write_text(textwrap.dedent(LIFECYCLE))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok 0", "")
