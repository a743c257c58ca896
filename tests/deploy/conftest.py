"""Fixtures for the deployment tests: the kustomize renderer and each overlay, rendered once."""

from __future__ import annotations

from pathlib import Path

import pytest

from .k8s import Doc, kustomize_command, overlays, render


@pytest.fixture(scope="session")
def kustomize() -> list[str]:
    command, why = kustomize_command()
    if command is None:
        pytest.skip(f"no kustomize renderer: {why}")
    return command


@pytest.fixture(scope="session")
def rendered(kustomize: list[str]) -> dict[str, list[Doc]]:
    """overlay name -> its rendered objects ("default" is deploy/k8s itself)."""
    return {name: render(kustomize, path) for name, path in overlays().items()}


@pytest.fixture(scope="session")
def overlay_paths() -> dict[str, Path]:
    return overlays()
