"""Several engine-core processes (``--frontends 2 --cores 2``): what holds only because there
are several. The API surface itself runs on this shape with every wire test (the
``two-cores`` shape of tests/api, tests/kserve, tests/security and tests/metrics); here:
sessions spread over both cores and are served exactly, the one ``/metrics`` endpoint counts
both cores' work, a dead core ends the server, and the shared ledger leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve.engine.shards import core_of
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc

from .conftest import SNAPSHOT_KEY, ServerProcess, start_server
from .helpers import Offline
from .test_frontends import alive, append, descendants, wait_until

CORE_STARTED = re.compile(r"engine core (\d+) started \(pid (\d+)\)")
WAIT_S = 60.0


def _segments(pid: int) -> set[str]:
    """The shared-memory segments process ``pid`` has mapped (the ledger's)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {line.split()[-1] for line in maps.splitlines() if "/dev/shm/psm_" in line}


@pytest.fixture(scope="module")
def cores(model_dir: Path) -> Iterator[ServerProcess]:
    s = start_server(model_dir, "--frontends", "2", "--cores", "2", env={"CELLSERVE_SNAPSHOT_KEY": SNAPSHOT_KEY})
    try:
        yield s
    finally:
        s.kill()


def _metric(target: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://{target}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _settled(target: str) -> tuple[float, float, float]:
    """Sessions, characters and rows once the endpoint shows every earlier call (a core's
    figures reach it within a second or two): two readings in a row agree."""
    names = ("cellserve_active_sessions", "cellserve_chars_processed_total", "cellserve_batch_size_sum")
    last = None
    for _ in range(30):
        now = tuple(_metric(target, n) for n in names)
        if now == last:
            return now  # type: ignore[return-value]
        last = now
        time.sleep(1.5)
    pytest.fail("the metrics did not settle")


def _core_pids(server: ServerProcess) -> dict[int, int]:
    return {int(m.group(1)): int(m.group(2)) for line in list(server.stderr_lines) if (m := CORE_STARTED.search(line))}


def test_sessions_spread_over_both_cores_and_are_served_exactly(cores: ServerProcess, model_dir: Path) -> None:
    oracle = Offline(model_dir, "tiny-lstm")
    with grpc.insecure_channel(cores.target) as ch:
        stub = rpc.CellserveServiceStub(ch)
        sids = [stub.OpenSession(svc.OpenSessionRequest(), timeout=30).session.session_id for _ in range(6)]
        assert {core_of(s, 2) for s in sids} == {0, 1}
        texts = ["def f(x):", "import os", "class A:", "x = [1, 2]", "return y", "for i in r"]
        for sid, text in zip(sids, texts, strict=True):
            p = append(stub, sid, 0, text)
            oracle.check_prediction(p, oracle.log_probs(text)[-1], 6)
            again = append(stub, sid, 0, text)  # exactly-once on either core
            assert again.replayed and again.top_characters == p.top_characters
        # a snapshot from one core resumes on either, exactly
        blob = stub.Snapshot(svc.SnapshotRequest(session_id=sids[1]), timeout=30).blob
        for _ in range(2):
            resumed = stub.Resume(svc.ResumeRequest(blob=blob), timeout=30).session
            p = append(stub, resumed.session_id, len(texts[1]), "\n")
            oracle.check_prediction(p, oracle.log_probs(texts[1] + "\n")[-1], 6)
        for sid in sids:
            stub.CloseSession(svc.CloseSessionRequest(session_id=sid), timeout=30)


def test_one_metrics_endpoint_counts_both_cores(cores: ServerProcess) -> None:
    target = cores.metrics_target
    with grpc.insecure_channel(cores.target) as ch:
        stub = rpc.CellserveServiceStub(ch)
        before_sessions, before_chars, before_rows = _settled(target)
        sids = [stub.OpenSession(svc.OpenSessionRequest(), timeout=30).session.session_id for _ in range(4)]
        assert {core_of(s, 2) for s in sids} == {0, 1}
        for sid in sids:
            append(stub, sid, 0, "abcde")
        want = (before_sessions + 4, before_chars + 20, before_rows + 4)

        def counted() -> bool:
            got = (
                _metric(target, "cellserve_active_sessions"),
                _metric(target, "cellserve_chars_processed_total"),
                _metric(target, "cellserve_batch_size_sum"),
            )
            return got[0] == want[0] and got[1] == want[1] and got[2] >= want[2]

        wait_until(counted, "both cores' sessions, characters and rows on core 0's endpoint", 10.0)
        for sid in sids:
            stub.CloseSession(svc.CloseSessionRequest(session_id=sid), timeout=30)
        wait_until(lambda: _metric(target, "cellserve_active_sessions") == before_sessions, "the closes", 10.0)


@pytest.mark.slow
def test_a_dead_core_stops_the_server_and_the_ledger_is_removed(cores: ServerProcess) -> None:
    pids = _core_pids(cores)
    assert set(pids) == {0, 1}
    ledger = _segments(pids[0])
    assert len(ledger) == 1 and ledger == _segments(pids[1]), "both cores map the one ledger"
    assert Path(next(iter(ledger))).exists()
    everything = descendants(cores.pid)
    os.kill(pids[1], signal.SIGKILL)  # a child of this test's own server
    code = cores.proc.wait(timeout=WAIT_S)
    assert code != 0
    assert any("cellserve-core-1 exited" in line for line in cores.stderr_lines), cores.stderr_lines[-20:]
    wait_until(lambda: not any(alive(p) for p in everything), "every child to exit")
    assert not Path(next(iter(ledger))).exists(), "the parent unlinks the ledger"
