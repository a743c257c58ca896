"""Multi-process serving (``--frontends N``): any session through any frontend, and the
lifecycle (a dead frontend is restarted and its sessions go on; a dead core ends the server
with a non-zero status; SIGKILL of the parent leaves no process behind).

Which frontend a connection landed on is in the ``cellserve-frontend`` metadata of OpenSession
and GetSession. Every channel here has its own connection (``use_local_subchannel_pool``), so
the kernel spreads them over the frontends' shared port."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

from .conftest import SNAPSHOT_KEY, ServerProcess, start_server
from .helpers import Offline, SyncStream

FRONTEND_MD = "cellserve-frontend"
MAX_CONNECTS = 64  # P(every connection lands on one of 2 frontends) = 2^-63
WAIT_S = 60.0
STARTED = re.compile(r"(frontend (\d+)|engine core) started \(pid (\d+)\)")


class Connection:
    """One channel with a connection of its own, and the frontend it landed on."""

    def __init__(self, target: str, session_id: str) -> None:
        self.channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = rpc.CellserveServiceStub(self.channel)
        _, call = self.stub.GetSession.with_call(svc.GetSessionRequest(session_id=session_id), timeout=30)
        self.frontend = dict(call.initial_metadata())[FRONTEND_MD]

    def close(self) -> None:
        self.channel.close()


def connect_elsewhere(target: str, session_id: str, not_on: str) -> Connection:
    """A connection on a frontend other than ``not_on`` (bounded tries)."""
    for _ in range(MAX_CONNECTS):
        c = Connection(target, session_id)
        if c.frontend != not_on:
            return c
        c.close()
    pytest.fail(f"{MAX_CONNECTS} connections all landed on frontend {not_on}")


def append(stub: rpc.CellserveServiceStub, sid: str, offset: int, text: str) -> types.Prediction:
    req = svc.AppendRequest(session_id=sid, offset=offset, input=types.Input(text=text), top_k=6)
    return stub.Append(req, timeout=30).prediction


def children_of(server: ServerProcess) -> dict[str, int]:
    """ "core" and "frontend <i>" -> the latest pid the supervisor logged for each."""
    found: dict[str, int] = {}
    for line in list(server.stderr_lines):
        if m := STARTED.search(line):
            found[f"frontend {m.group(2)}" if m.group(2) else "core"] = int(m.group(3))
    return found


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate: object, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def two(model_dir: Path) -> Iterator[ServerProcess]:
    s = start_server(model_dir, "--frontends", "2", env={"CELLSERVE_SNAPSHOT_KEY": SNAPSHOT_KEY})
    try:
        yield s
    finally:
        s.kill()


def test_a_port_someone_listens_on_is_refused_not_shared(model_dir: Path) -> None:
    """SO_REUSEPORT would let the frontends share a port another server still listens on."""
    import socket
    import subprocess
    import sys

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "cellserve.cli", "serve", "--model-dir", str(model_dir), "--frontends", "2"]
            + ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_session_opened_on_one_frontend_is_served_exactly_by_another(two: ServerProcess, model_dir: Path) -> None:
    oracle = Offline(model_dir, "tiny-lstm")
    with grpc.insecure_channel(two.target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        stub = rpc.CellserveServiceStub(ch)
        opened, call = stub.OpenSession.with_call(svc.OpenSessionRequest(), timeout=30)
        here = dict(call.initial_metadata())[FRONTEND_MD]
        sid = opened.session.session_id
        first = append(stub, sid, 0, "def f(x):")
        other = connect_elsewhere(two.target, sid, here)
        try:
            # exactly-once across frontends: the retry of the last piece is answered from cache
            again = append(other.stub, sid, 0, "def f(x):")
            assert again.replayed and again.top_characters == first.top_characters
            p = append(other.stub, sid, 9, " return")
            assert p.position == 16 and not p.replayed
            oracle.check_prediction(p, oracle.log_probs("def f(x): return")[-1], 6)
            # a stream through the other frontend attaches and goes on at the same offset
            s = SyncStream(other.stub)
            try:
                r = s.ask(attach=svc.SessionRequest.Attach(session_id=sid))
                assert r.opened.session.position == 16
                q = s.append(16, " x*2", top_k=6).prediction
                oracle.check_prediction(q, oracle.log_probs("def f(x): return x*2")[-1], 6)
                rewound = s.ask(rewind=svc.SessionRequest.Rewind(chars=4))
                assert rewound.rewound.position == 16
            finally:
                s.cancel()
            # the first frontend sees the rewind, and a completion there continues the state
            chunks = list(stub.Complete(svc.CompleteRequest(session_id=sid, max_chars=8), timeout=30))
            assert "".join(c.chunk.text for c in chunks) == oracle.greedy("def f(x): return", 8)
            blob = other.stub.Snapshot(svc.SnapshotRequest(session_id=sid), timeout=30).blob
            resumed = stub.Resume(svc.ResumeRequest(blob=blob, replay=types.Input(text=" 1"), top_k=6), timeout=30)
            oracle.check_prediction(resumed.prediction, oracle.log_probs("def f(x): return 1")[-1], 6)
        finally:
            other.close()


@pytest.mark.slow
def test_a_dead_frontend_is_restarted_and_its_sessions_go_on(two: ServerProcess, model_dir: Path) -> None:
    oracle = Offline(model_dir, "tiny-lstm")
    with grpc.insecure_channel(two.target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        stub = rpc.CellserveServiceStub(ch)
        opened, call = stub.OpenSession.with_call(svc.OpenSessionRequest(), timeout=30)
        victim = dict(call.initial_metadata())[FRONTEND_MD]
        sid = opened.session.session_id
        append(stub, sid, 0, "import os")
    old = children_of(two)[f"frontend {victim}"]
    os.kill(old, signal.SIGKILL)  # a child of this test's own server
    wait_until(lambda: children_of(two).get(f"frontend {victim}") not in (None, old), "the restart")
    # every connection, whichever frontend it lands on, serves the session on from its offset
    for _ in range(4):
        c = Connection(two.target, sid)
        try:
            pos = c.stub.GetSession(svc.GetSessionRequest(session_id=sid), timeout=30).session.position
            p = append(c.stub, sid, pos, "x")
            assert p.position == pos + 1
        finally:
            c.close()
    oracle.check_prediction(p, oracle.log_probs("import os" + "x" * 4)[-1], 6)
    assert two.proc.poll() is None


@pytest.mark.slow
def test_a_dead_core_stops_the_server_with_an_error(two: ServerProcess) -> None:
    children = children_of(two)
    everything = descendants(two.pid)
    os.kill(children["core"], signal.SIGKILL)  # a child of this test's own server
    code = two.proc.wait(timeout=WAIT_S)
    assert code != 0
    lost = [line for line in two.stderr_lines if "the engine core is gone: health NOT_SERVING" in line]
    assert len(lost) == 2, two.stderr_lines[-20:]
    wait_until(lambda: not any(alive(p) for p in everything), "every child to exit")


@pytest.mark.slow
def test_sigkill_of_the_parent_leaves_no_process_behind(two: ServerProcess) -> None:
    everything = descendants(two.pid)
    assert set(children_of(two).values()) <= everything and len(everything) >= 3
    os.kill(two.pid, signal.SIGKILL)  # this test's own server
    two.proc.wait(timeout=WAIT_S)
    wait_until(lambda: not any(alive(p) for p in everything), "every child to exit")
