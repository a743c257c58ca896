"""``AsyncClient``: the asyncio entry point (``Client`` in ``_sync`` is its blocking twin)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from . import _convert, _errors
from ._pool import Pool
from ._rpc import Channel
from ._security import PemArg, TlsArg, channel_credentials, resolve_token
from ._session import AsyncSession, Transport
from ._types import AppendOptions, FailoverPolicy, GateInspection, ModelInfo

DEFAULT_TARGET = "localhost:50051"
DEFAULT_FAILOVER = FailoverPolicy()
T = TypeVar("T")


class AsyncClient:
    """A client of one cellserve service, reachable at one or more targets ("host:port").

    ``targets``: one target or several replicas sharing the snapshot key; sessions open on the
    first that answers and fail over to the others. ``tls``: True trusts the system roots, a
    path trusts that CA bundle (PEM); ``client_cert``/``client_key`` (paths or PEM bytes)
    present a client certificate for mTLS; ``credentials`` overrides all three. ``token``
    (default: ``$CELLSERVE_TOKEN``) is sent as ``authorization: Bearer <token>``; the server
    keeps sessions private to the tenant that opened them.
    ``timeout`` (seconds, None: no limit) bounds every wait for an answer. ``options`` are
    extra gRPC channel options. ``transport``: "stream" (one bidirectional stream per session,
    at most ``max_outstanding`` unanswered requests) or "unary". ``failover`` configures
    snapshots and retries (``FailoverPolicy``); None turns both off.
    """

    def __init__(
        self,
        targets: str | Sequence[str] = DEFAULT_TARGET,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        tls: TlsArg = False,
        client_cert: PemArg = None,
        client_key: PemArg = None,
        token: str | None = None,
        timeout: float | None = 30.0,
        options: Sequence[tuple[str, Any]] = (),
        transport: Transport = "stream",
        failover: FailoverPolicy | None = DEFAULT_FAILOVER,
        max_outstanding: int = 32,
    ) -> None:
        if transport not in ("stream", "unary"):
            raise ValueError(f"transport must be 'stream' or 'unary', not {transport!r}")
        if credentials is None:
            credentials = channel_credentials(tls, client_cert, client_key)
        self._pool = Pool(
            [targets] if isinstance(targets, str) else list(targets),
            credentials=credentials,
            token=resolve_token(token),
            timeout=timeout,
            options=options,
            max_outstanding=max_outstanding,
        )
        self._transport: Transport = transport
        self._policy = FailoverPolicy.of(failover)
        self._sessions: set[AsyncSession] = set()
        self._closed = False

    @property
    def targets(self) -> tuple[str, ...]:
        return self._pool.targets

    async def models(self) -> tuple[ModelInfo, ...]:
        """The models the server has loaded (the first target that answers)."""
        self._check_open()
        resp = await self._first_answer(lambda ch: ch.list_models(self._pool.metadata(), self._pool.timeout))
        return tuple(_convert.model_info(m) for m in resp.models)

    async def inspect_gates(
        self,
        text: str,
        *,
        model: str | None = None,
        last_chars: int | None = None,
        top_units: int | None = None,
        top_k: int | None = None,
    ) -> GateInspection:
        """The gates of ``text`` read from the initial state (no session): per reported
        character and layer, each gate's mean, the ``top_units`` units that changed most (server
        default 4) and the ``top_k`` next characters (default 5). ``last_chars``: report only
        the last characters (the server reports at most 512 per call); the text before them
        still builds up the state. Asks the targets in turn while they are unavailable."""
        self._check_open()
        req = _convert.inspect_gates_request(text, model, last_chars, top_units, top_k)
        resp = await self._first_answer(lambda ch: ch.inspect_gates(req, self._pool.metadata(), self._pool.timeout))
        return _convert.gate_inspection(resp)

    async def _first_answer(self, call: Callable[[Channel], Awaitable[T]]) -> T:
        """A session-less call on the targets in turn while they are unavailable (failover on)."""
        last: _errors.CellserveError | None = None
        # With failover off (failover=None), one target: no call is tried twice.
        for index in range(len(self._pool.targets) if self._policy.enabled else 1):
            try:
                return await call(self._pool.channel(index))
            except _errors.Unavailable as exc:
                last = exc
        assert last is not None
        raise last

    async def open(
        self, model: str | None = None, *, transport: Transport | None = None, memory: bool = True
    ) -> AsyncSession:
        """A new session on ``model`` (None: the server's default model). ``memory`` False: the
        session keeps no session memory (its predictions are the model's alone)."""
        self._check_open()
        session = await AsyncSession.open(
            self._pool, model, transport=transport or self._transport, policy=self._policy, memory=memory
        )
        self._track(session)
        return session

    async def resume(
        self,
        blob: bytes,
        replay: str = "",
        *,
        transport: Transport | None = None,
        top_k: int | None = None,
        logprobs: bool = False,
        gates: bool = False,
    ) -> AsyncSession:
        """A new session from a ``Session.snapshot()`` blob, on any server with the same key and
        weights, followed by ``replay`` (text typed since). The prediction after the replay is
        the session's ``last_prediction``."""
        self._check_open()
        session = await AsyncSession.resume(
            self._pool,
            blob,
            replay,
            transport=transport or self._transport,
            policy=self._policy,
            append=AppendOptions(top_k, logprobs, gates),
        )
        self._track(session)
        return session

    def _track(self, session: AsyncSession) -> None:
        # Closed sessions are dropped here, so a long-lived client does not collect them.
        self._sessions = {s for s in self._sessions if not s.closed}
        self._sessions.add(session)

    async def close(self) -> None:
        """Closes the sessions still open and the channels. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for session in list(self._sessions):
            try:
                await session.close()
            except _errors.CellserveError:
                pass
        self._sessions.clear()
        await self._pool.close()

    def _check_open(self) -> None:
        if self._closed:
            raise _errors.ClosedError("the client is closed")

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
