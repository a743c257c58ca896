"""The manifests render, validate against the Kubernetes API schemas, and pass checkov."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .k8s import CRD_KINDS, K8S, Doc, find_tool, only, overlays

# Oldest Kubernetes the manifests target (native gRPC probes: 1.24; the preStop `sleep`
# action: 1.30) and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.30.0", "latest"]
OVERLAYS = sorted(overlays())


def test_the_expected_overlays_exist() -> None:
    assert {"default", "gpu", "cpu", "istio"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(rendered: dict[str, list[Doc]], overlay: str) -> None:
    kinds = sorted(d["kind"] for d in rendered[overlay])
    for kind in (
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "NetworkPolicy",
        "ServiceAccount",
        "Namespace",
    ):
        assert kind in kinds, f"{overlay}: no {kind} in {kinds}"
    assert all(d["metadata"].get("namespace") == "cellserve" for d in rendered[overlay] if d["kind"] != "Namespace")


def test_the_default_is_the_gpu_overlay(rendered: dict[str, list[Doc]]) -> None:
    assert rendered["default"] == rendered["gpu"]


def test_istio_adds_only_routing_to_gpu(rendered: dict[str, list[Doc]]) -> None:
    gpu_deployment = only(rendered["gpu"], "Deployment")
    assert only(rendered["istio"], "Deployment") == gpu_deployment
    assert [d["kind"] for d in rendered["istio"] if d["kind"] not in {x["kind"] for x in rendered["gpu"]}] == [
        "DestinationRule"
    ]


# --- kubernetes-validate --strict ------------------------------------------------------------


def _validate(doc: Doc, version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (dev extra)")
    kv.validate(doc, kv.latest_version() if version == "latest" else version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict(rendered: dict[str, list[Doc]], overlay: str, version: str) -> None:
    """Built-in kinds only: ServiceMonitor and DestinationRule are CRDs, without a schema here."""
    for doc in rendered[overlay]:
        if doc["kind"] in CRD_KINDS:
            continue
        _validate(doc, version)


def test_kubernetes_validate_rejects_an_unknown_field(rendered: dict[str, list[Doc]]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (dev extra)")
    deployment = copy.deepcopy(only(rendered["gpu"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# --- checkov -----------------------------------------------------------------------------------

CHECKOV_CONFIG = K8S / ".checkov.yaml"


def _checkov(folder: Path) -> subprocess.CompletedProcess[str]:
    checkov = find_tool("checkov")
    if checkov is None:
        pytest.skip("checkov not installed (.ci/run installs it in a venv of its own)")
    return subprocess.run(
        [checkov, "--config-file", str(CHECKOV_CONFIG), "--directory", str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _write(folder: Path, rendered: dict[str, list[Doc]]) -> Path:
    folder.mkdir()
    for name, docs in rendered.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    return folder


def test_checkov_passes(rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    out = _checkov(_write(tmp_path / "rendered", rendered))
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0", out.stdout), out.stdout


def test_checkov_fails_a_weakened_deployment(rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    docs = copy.deepcopy(rendered["gpu"])
    c = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    c["securityContext"] = {"privileged": True}
    out = _checkov(_write(tmp_path / "weak", {"weak": docs}))
    assert out.returncode != 0 and "FAILED" in out.stdout, out.stdout


def test_every_checkov_skip_is_justified() -> None:
    config = yaml.safe_load(CHECKOV_CONFIG.read_text())
    skips = config.get("skip-check", [])
    lines = CHECKOV_CONFIG.read_text().splitlines()
    for skip in skips:
        at = next(i for i, line in enumerate(lines) if line.strip() == f"- {skip}")
        comment = []
        while at > 0 and lines[at - 1].strip().startswith("#"):
            at -= 1
            comment.append(lines[at])
        assert skip in " ".join(comment) and len(comment) >= 2, f"{skip}: no comment above it says why"
    assert not any(
        "checkov:skip" in p.read_text() or "checkov.io/skip" in p.read_text()
        for p in K8S.rglob("*.yaml")
        if p != CHECKOV_CONFIG
    ), "inline suppressions: justify them in .checkov.yaml"
