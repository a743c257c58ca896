"""Client test fixtures: real `cellserve serve` processes (``tests/servers.py``) on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import SNAPSHOT_KEY, ServerProcess, start_server

KEY_ENV = {"CELLSERVE_SNAPSHOT_KEY": SNAPSHOT_KEY}
TRANSPORTS = ["stream", "unary"]


@pytest.fixture(scope="session")
def server(model_dir: Path) -> Iterator[ServerProcess]:
    """The shared server of the client tests (both tiny models, the shared snapshot key)."""
    s = start_server(model_dir, env=KEY_ENV)
    try:
        yield s
    finally:
        s.terminate()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value
