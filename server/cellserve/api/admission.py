"""Admission of a new stream, the same for every service on the server (cellserve.v1's Session
and KServe's ModelStreamInfer): none while draining, at most ``max_concurrent_streams``."""

from __future__ import annotations

from ..config import Settings
from ..errors import CapacityExceeded, Unavailable

STREAM_RETRY_AFTER_S = 1.0  # streams are long-lived: a slot frees up on the order of seconds


def admit_stream(draining: bool, open_streams: int, settings: Settings) -> None:
    if draining:
        raise Unavailable("the server is shutting down; connect to another replica")
    if open_streams >= settings.max_concurrent_streams:
        raise CapacityExceeded(
            f"too many concurrent streams (max_concurrent_streams={settings.max_concurrent_streams})",
            retry_after_s=STREAM_RETRY_AFTER_S,
        )
