"""The blocking API: ``Client``, ``Session`` and ``CompletionStream``, with the same shape as
their asyncio twins.

One implementation serves both: the blocking objects run the asyncio ones on an event loop in
a private daemon thread (one per ``Client``), so failover, pipelining and the stream transport
behave identically. Every method blocks until its coroutine finishes on that loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from ._client import DEFAULT_FAILOVER, DEFAULT_TARGET, AsyncClient
from ._errors import ClosedError
from ._security import PemArg, TlsArg
from ._session import AsyncCompletionStream, AsyncSession, Transport
from ._types import (
    Completion,
    CompletionChunk,
    FailoverPolicy,
    GateInspection,
    ModelInfo,
    Prediction,
    SessionInfo,
    Suggestion,
)

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cellserve-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coro.close()
            raise ClosedError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class Client:
    """The blocking client; see ``AsyncClient`` for the arguments."""

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
        self._loop = _LoopThread()

        async def make() -> AsyncClient:  # grpc.aio objects belong to the loop they are made on
            return AsyncClient(
                targets,
                credentials=credentials,
                tls=tls,
                client_cert=client_cert,
                client_key=client_key,
                token=token,
                timeout=timeout,
                options=options,
                transport=transport,
                failover=failover,
                max_outstanding=max_outstanding,
            )

        try:
            self._async = self._loop.run(make())
        except BaseException:
            self._loop.stop()
            raise

    @property
    def targets(self) -> tuple[str, ...]:
        return self._async.targets

    def models(self) -> tuple[ModelInfo, ...]:
        return self._loop.run(self._async.models())

    def inspect_gates(
        self,
        text: str,
        *,
        model: str | None = None,
        last_chars: int | None = None,
        top_units: int | None = None,
        top_k: int | None = None,
    ) -> GateInspection:
        """See ``AsyncClient.inspect_gates``."""
        coro = self._async.inspect_gates(text, model=model, last_chars=last_chars, top_units=top_units, top_k=top_k)
        return self._loop.run(coro)

    def open(self, model: str | None = None, *, transport: Transport | None = None, memory: bool = True) -> Session:
        return Session(self._loop, self._loop.run(self._async.open(model, transport=transport, memory=memory)))

    def resume(
        self,
        blob: bytes,
        replay: str = "",
        *,
        transport: Transport | None = None,
        top_k: int | None = None,
        logprobs: bool = False,
        gates: bool = False,
    ) -> Session:
        coro = self._async.resume(blob, replay, transport=transport, top_k=top_k, logprobs=logprobs, gates=gates)
        return Session(self._loop, self._loop.run(coro))

    def close(self) -> None:
        try:
            self._loop.run(self._async.close())
        except ClosedError:
            pass  # closed already
        finally:
            self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Session:
    """The blocking session; see ``AsyncSession`` for the methods."""

    def __init__(self, loop: _LoopThread, session: AsyncSession) -> None:
        self._loop = loop
        self._async = session

    @property
    def session_id(self) -> str:
        return self._async.session_id

    @property
    def routing_key(self) -> str:
        return self._async.routing_key

    @property
    def model(self) -> ModelInfo:
        return self._async.model

    @property
    def position(self) -> int:
        return self._async.position

    @property
    def target(self) -> str:
        return self._async.target

    @property
    def transport(self) -> Transport:
        return self._async.transport

    @property
    def closed(self) -> bool:
        return self._async.closed

    @property
    def failovers(self) -> int:
        return self._async.failovers

    @property
    def last_prediction(self) -> Prediction | None:
        return self._async.last_prediction

    def info(self) -> SessionInfo:
        return self._loop.run(self._async.info())

    def append(
        self,
        text: str,
        *,
        top_k: int | None = None,
        logprobs: bool = False,
        gates: bool = False,
        only_last: bool = False,
        memory: bool = True,
    ) -> Prediction:
        return self._loop.run(
            self._async.append(text, top_k=top_k, logprobs=logprobs, gates=gates, only_last=only_last, memory=memory)
        )

    def complete(
        self,
        *,
        max_chars: int | None = None,
        stop: tuple[str, ...] | list[str] = (),
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int | None = None,
        n: int | None = None,
        memory: bool = True,
    ) -> CompletionStream:
        coro = self._async.complete(
            max_chars=max_chars,
            stop=stop,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            n=n,
            memory=memory,
        )
        return CompletionStream(self._loop, self._loop.run(coro))

    def rewind(self, chars: int) -> int:
        return self._loop.run(self._async.rewind(chars))

    def reset(self) -> int:
        return self._loop.run(self._async.reset())

    def suggest(self, n: int = 3, scope: str = "word", max_chars: int | None = None) -> list[Suggestion]:
        """See ``AsyncSession.suggest``."""
        return self._loop.run(self._async.suggest(n, scope, max_chars))

    def snapshot(self) -> bytes:
        return self._loop.run(self._async.snapshot())

    def close(self) -> None:
        self._loop.run(self._async.close())

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._async).replace("<AsyncSession", "<Session", 1)


class CompletionStream:
    """The chunks of a completion (``for chunk in stream``), then its ``completions``."""

    def __init__(self, loop: _LoopThread, stream: AsyncCompletionStream) -> None:
        self._loop = loop
        self._async = stream

    def __iter__(self) -> Iterator[CompletionChunk]:
        return self

    def __next__(self) -> CompletionChunk:
        try:
            return self._loop.run(self._async.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def collect(self) -> tuple[Completion, ...]:
        return self._loop.run(self._async.collect())

    @property
    def completions(self) -> tuple[Completion, ...]:
        return self._async.completions

    @property
    def text(self) -> str:
        return self._async.text
