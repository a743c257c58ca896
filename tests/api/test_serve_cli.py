"""`cellserve serve` settings: a bad value exits 2 with a message naming the field and where it
came from; nothing is loaded before the settings are valid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cellserve.cli import build_parser
from cellserve.serve import settings_from_args


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cellserve.cli", "serve", *args],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "needles"),
    [
        (["--port", "70000"], {}, ["port", "--port"]),
        (["--port", "abc"], {}, ["port", "integer"]),
        (["--device", "tpu"], {}, ["device", "--device"]),
        ([], {"CELLSERVE_MAX_SESSIONS": "0"}, ["max_sessions", "CELLSERVE_MAX_SESSIONS"]),
        (["--set", "no_such_knob=1"], {}, ["no_such_knob"]),
        (["--set", "max_top_k"], {}, ["FIELD=VALUE"]),
        (["--snapshot-key-file", "/nonexistent/key"], {}, ["--snapshot-key-file"]),
        (["--frontends", "65"], {}, ["frontends", "--frontends"]),
        ([], {"CELLSERVE_FRONTENDS": "-1"}, ["frontends", "CELLSERVE_FRONTENDS"]),
    ],
)
def test_bad_setting_exits_2_naming_it(args: list[str], env: dict[str, str], needles: list[str]) -> None:
    result = _serve(*args, env=env)
    assert result.returncode == 2, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    assert "Traceback" not in result.stderr


def test_flags_override_environment(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    args = build_parser().parse_args(
        ["serve", "--port", "0", "--model", "a", "--model", "b", "--snapshot-key-file", str(key), "--log-json"]
    )
    s = settings_from_args(args, {"CELLSERVE_PORT": "123", "CELLSERVE_MAX_SESSIONS": "7"})
    assert (s.port, s.max_sessions, s.models, s.log_json) == (0, 7, ["a", "b"], True)
    assert s.snapshot_key is not None and s.snapshot_key.get_secret_value() == "s3cret"
    s = settings_from_args(build_parser().parse_args(["serve"]), {"CELLSERVE_SNAPSHOT_KEY": "env-key"})
    assert s.snapshot_key is not None and s.snapshot_key.get_secret_value() == "env-key" and not s.log_json


@pytest.mark.parametrize(("cpus", "frontends"), [(1, 0), (2, 0), (3, 2), (4, 3), (16, 8), (64, 8)])
def test_default_frontends_follow_the_cpus(monkeypatch: pytest.MonkeyPatch, cpus: int, frontends: int) -> None:
    from cellserve.config import Settings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert Settings.load(environ={}).frontends == frontends
    assert Settings.load(environ={"CELLSERVE_FRONTENDS": "1"}).frontends == 1  # explicit wins
