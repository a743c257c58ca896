"""The live exposition of a real server: promtool-clean, holding every metric the rules and the
dashboard name, and with labels that never carry session ids or user text."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cellserve.api.recorder import APPEND_SINGLE
from cellserve.metrics import KEYSTROKE_KINDS, PHASES, SESSION_REASONS, SPECULATION_RESULTS
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types
from prometheus_client.parser import text_string_to_metric_families
from servers import START_TIMEOUT_S, ServerProcess

from . import names
from .conftest import sample as sample_value
from .conftest import scrape_until

SECRET_TEXT = "Zq7 secret words"  # every character is in the test vocabulary
CUDA_ONLY = {"cellserve_device_memory_bytes"}  # registered only when the engine runs on CUDA


def promtool_check_metrics(promtool: str, exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def exposition(server: ServerProcess, stub: rpc.CellserveServiceStub) -> str:
    """The exposition after a bit of every kind of traffic, including a failure and user text."""
    sid = stub.OpenSession(svc.OpenSessionRequest()).session.session_id
    stub.Append(svc.AppendRequest(session_id=sid, offset=0, input=types.Input(text="a")))
    stub.Append(svc.AppendRequest(session_id=sid, offset=1, input=types.Input(text=SECRET_TEXT)))
    with pytest.raises(grpc.RpcError):
        stub.Append(svc.AppendRequest(session_id=sid, offset=99, input=types.Input(text=SECRET_TEXT)))
    list(stub.Complete(svc.CompleteRequest(session_id=sid, max_chars=4)))
    # the engine's counters reach the metrics on a poll (and a frontend's request metrics on
    # its next message to the core): wait until the completion's are there
    return scrape_until(
        server.metrics_target,
        lambda body: (
            (sample_value(body, "cellserve_chars_processed_total", phase="completion") or 0) > 0
            and (sample_value(body, "cellserve_requests_total", method="Complete", code="OK") or 0) > 0
        ),
    )


def test_promtool_check_metrics_passes_on_the_live_exposition(promtool: str, exposition: str) -> None:
    result = promtool_check_metrics(promtool, exposition)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


def test_promtool_check_metrics_would_catch_a_bad_metric(promtool: str, exposition: str) -> None:
    bad = exposition + "# TYPE cellserve_oops counter\ncellserve_oops 1\n"  # no help, no _total
    assert promtool_check_metrics(promtool, bad).returncode != 0


def test_promtool_check_rules(promtool: str) -> None:
    assert names.RULES, "no rule files under deploy/prometheus"
    result = subprocess.run(
        [promtool, "check", "rules", *map(str, names.RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_fire_each_alert(promtool: str) -> None:
    assert names.RULE_TESTS, "no rule unit tests under deploy/prometheus"
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, names.RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_in_the_rules_and_dashboard_is_exported(exposition: str) -> None:
    live = names.exposed(exposition)
    for where, exprs in (("rules", names.rule_expressions()), ("dashboard", names.dashboard_expressions())):
        wanted = set().union(*map(names.referenced, exprs))
        assert "cellserve_keystroke_latency_seconds_bucket" in wanted, f"{where}: parsed no keystroke histogram"
        missing = wanted - live - CUDA_ONLY
        assert not missing, f"{where} name metrics the server does not export: {sorted(missing)}"


def test_alerts_use_only_recorded_series_that_exist() -> None:
    recorded = names.recorded_names()
    used = set().union(*map(names.recorded_references, names.rule_expressions()))
    assert used, "no alert reads a recorded series"
    assert used <= recorded, f"undefined recorded series: {sorted(used - recorded)}"


def test_the_name_check_catches_an_unknown_metric(exposition: str) -> None:
    expr = "sum(rate(cellserve_no_such_metric_total[1m])) / sum(cellserve_active_sessions)"
    assert names.referenced(expr) - names.exposed(exposition) == {"cellserve_no_such_metric_total"}


def test_hpa_metric_is_exported(exposition: str) -> None:
    assert "cellserve_active_sessions" in names.exposed(exposition)


def test_keystrokes_were_recorded_with_their_kind(exposition: str) -> None:
    samples = {
        (s.name, s.labels.get("kind")): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == "cellserve_keystroke_latency_seconds_count" and s.labels.get("model") == "tiny-lstm"
    }
    assert samples[("cellserve_keystroke_latency_seconds_count", APPEND_SINGLE)] >= 1
    assert samples[("cellserve_keystroke_latency_seconds_count", "append_multi")] >= 1
    assert samples[("cellserve_keystroke_latency_seconds_count", "completion_first_chunk")] >= 1


def _allowed_label_values() -> dict[str, set[str]]:
    methods = {m.name for m in svc.DESCRIPTOR.services_by_name["CellserveService"].methods}
    ops = {f.name for f in svc.SessionRequest.DESCRIPTOR.oneofs_by_name["op"].fields}
    return {
        "model": {"tiny-lstm", "tiny-gru"},
        "kind": set(KEYSTROKE_KINDS) | {"allocated", "reserved"},
        "phase": set(PHASES),
        "reason": set(SESSION_REASONS),
        "method": methods | {f"Session.{op}" for op in ops} | {"Session.unset"},
        "code": {c.name for c in grpc.StatusCode},
        "result": set(SPECULATION_RESULTS),
    }


def test_labels_are_closed_sets_never_ids_or_text(exposition: str, server: ServerProcess) -> None:
    assert SECRET_TEXT not in exposition and "secret" not in exposition
    allowed = _allowed_label_values()
    seen: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        if not family.name.startswith("cellserve_"):
            continue
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label == "le":
                    float(value)
                    continue
                assert label in allowed, f"{sample.name}: unexpected label {label}"
                assert value in allowed[label], f"{sample.name}: {label}={value!r} is not a known value"
                seen.add(label)
    assert {"model", "kind", "phase", "reason", "method", "code", "result"} <= seen


def test_session_ids_never_appear(server: ServerProcess, stub: rpc.CellserveServiceStub) -> None:
    ids = [stub.OpenSession(svc.OpenSessionRequest()).session.session_id for _ in range(3)]
    body = scrape_until(server.metrics_target, lambda b: (sample_value(b, "cellserve_active_sessions") or 0) >= 3)
    assert "cellserve_active_sessions" in body
    for sid in ids:
        assert sid not in body and sid[:12] not in body


def test_a_taken_metrics_port_exits_2_naming_it(model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", "0"]
        result = subprocess.run(
            [sys.executable, "-m", "cellserve.cli", "serve", *args, "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "cellserve listening" not in result.stdout  # gRPC never started
