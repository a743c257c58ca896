"""The channels of a client, one per target, and what every call carries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from ._rpc import Channel, Metadata

ROUTING_HEADER = "x-session-id"  # header-hashing routers (Envoy, Istio) keep a session on one pod
AUTH_HEADER = "authorization"


class Pool:
    """Channels are made on first use and shared by every session of the client."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None,
        token: str | None,
        timeout: float | None,
        options: Sequence[tuple[str, Any]],
        max_outstanding: int,
    ) -> None:
        if not targets:
            raise ValueError("at least one target is needed")
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be at least 1")
        self.targets = tuple(targets)
        self.timeout = timeout
        self.max_outstanding = max_outstanding
        self._credentials = credentials
        self._options = tuple(options)
        self._auth: Metadata = ((AUTH_HEADER, f"Bearer {token}"),) if token else ()
        self._channels: dict[int, Channel] = {}

    def channel(self, index: int) -> Channel:
        index %= len(self.targets)
        ch = self._channels.get(index)
        if ch is None:
            ch = self._channels[index] = Channel(
                self.targets[index], credentials=self._credentials, options=self._options
            )
        return ch

    def metadata(self, routing_key: str | None = None) -> Metadata:
        """The auth header (the server derives the session owner from it) and, for calls of a
        session, its routing key: chosen by the client before OpenSession and kept across
        resumes, because Resume issues a new server session id."""
        return self._auth + (((ROUTING_HEADER, routing_key),) if routing_key else ())

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()
