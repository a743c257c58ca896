"""Where handoff records live between replicas: a ``SessionStore``, and its Redis implementation.

Key space: ``cellserve:{deployment}:{tenant digest}:{session id}``. The deployment name keeps
two deployments sharing one Redis apart; the tenant part is a SHA-256 digest (the store never
sees a tenant name) and makes another tenant's session a plain miss. Values are sealed records
(``record.py``) that expire in Redis when their snapshot would.

The store is never on the keystroke path: it is touched on drain, on a miss (a request for a
session this replica does not hold) and by the background sync. Every call has a deadline; after
a failure the store is skipped for a back-off that doubles up to ``MAX_BACKOFF_S`` (a miss then
costs nothing while Redis is down), and each outcome is counted in ``StoreStats``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "cellserve"
MAX_BACKOFF_S = 30.0
PIPELINE_CHUNK = 256  # records per round trip on drain
_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


class StoreUnavailable(Exception):
    """The store did not answer in time, refused, or is being skipped after a failure."""


@dataclass
class StoreStats:
    """Cumulative outcomes since start (``metrics.py`` exports them)."""

    puts: int = 0
    put_bytes: int = 0
    put_failures: int = 0
    takes_hit: int = 0
    takes_miss: int = 0
    take_failures: int = 0
    skipped: int = 0  # calls not made: the store failed recently (back-off)


class SessionStore(Protocol):
    stats: StoreStats

    def key(self, tenant: str, session_id: str) -> str: ...

    def sequence_key(self, tenant: str, model: str, sequence: str) -> str: ...

    async def put_many(self, items: Sequence[tuple[str, bytes, float]], deadline: float) -> int:
        """Writes ``(key, value, expires_at)`` items until ``deadline`` (loop time) or the first
        failure; returns how many were written, in order (the first n). Never raises for the
        store's own failures (they are counted and logged)."""
        ...

    async def take(self, key: str) -> bytes | None:
        """The value under ``key``, deleted in the same command; None when absent."""
        ...

    async def close(self) -> None: ...


def tenant_digest(tenant: str) -> str:
    return hashlib.sha256(b"cellserve tenant\x00" + tenant.encode()).hexdigest()[:32]


def is_session_id(session_id: str) -> bool:
    """Only server-issued ids (32 lowercase hex) are ever looked up in the store."""
    return bool(_SESSION_ID.match(session_id))


class RedisSessionStore:
    """A ``SessionStore`` on Redis >= 6.2 (GETDEL), through redis-py's asyncio client.

    ``url``: ``redis://[:password@]host:port/db``, ``rediss://`` for TLS (``?ssl_ca_certs=...``
    and the other redis-py URL options apply), or ``unix:///path``.
    """

    def __init__(self, url: str, deployment: str, timeout_s: float = 0.5, password: str | None = None) -> None:
        import redis.asyncio as aioredis  # only servers that turn handoff on import redis

        self._timeout_s = timeout_s
        self._prefix = f"{KEY_PREFIX}:{deployment}:"
        extra: dict[str, Any] = {} if password is None else {"password": password}
        self._redis: Any = aioredis.Redis.from_url(
            url,
            **extra,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=30,
        )
        self.stats = StoreStats()
        self._down_until = 0.0
        self._backoff_s = 0.0

    def key(self, tenant: str, session_id: str) -> str:
        return f"{self._prefix}{tenant_digest(tenant)}:{session_id}"

    def sequence_key(self, tenant: str, model: str, sequence: str) -> str:
        """Where a KServe sequence id of a moved session points to it (hashed: no ids in clear)."""
        digest = hashlib.sha256(f"{model}\x00{sequence}".encode()).hexdigest()[:32]
        return f"{self._prefix}{tenant_digest(tenant)}:seq:{digest}"

    # ---- back-off after failures ------------------------------------------------------------
    def _check_up(self) -> None:
        if time.monotonic() < self._down_until:
            self.stats.skipped += 1
            raise StoreUnavailable("session store skipped after a recent failure")

    def _failed(self, what: str, exc: BaseException) -> StoreUnavailable:
        self._backoff_s = min(MAX_BACKOFF_S, max(0.5, self._backoff_s * 2))
        self._down_until = time.monotonic() + self._backoff_s
        log.warning("session store %s failed (%s); skipping it for %.1f s", what, type(exc).__name__, self._backoff_s)
        return StoreUnavailable(f"session store {what} failed")

    def _ok(self) -> None:
        self._backoff_s = 0.0

    # ---- operations --------------------------------------------------------------------------
    async def take(self, key: str) -> bytes | None:
        self._check_up()
        try:
            async with asyncio.timeout(self._timeout_s * 2):
                value = await self._redis.getdel(key)
        except Exception as exc:  # redis errors, OSError, TimeoutError: all mean "not now"
            self.stats.take_failures += 1
            raise self._failed("take", exc) from None
        self._ok()
        if value is None:
            self.stats.takes_miss += 1
            return None
        self.stats.takes_hit += 1
        return bytes(value)

    async def put_many(self, items: Sequence[tuple[str, bytes, float]], deadline: float) -> int:
        loop = asyncio.get_running_loop()
        written = 0
        for start in range(0, len(items), PIPELINE_CHUNK):
            left = deadline - loop.time()
            if left <= 0:
                break
            chunk = items[start : start + PIPELINE_CHUNK]
            if time.monotonic() < self._down_until:
                self.stats.skipped += len(items) - start
                break
            now = time.time()
            try:
                async with asyncio.timeout(min(left, self._timeout_s * 4)):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for key, value, expires_at in chunk:
                            ttl_ms = max(1, int((expires_at - now) * 1000))
                            pipe.set(key, value, px=ttl_ms)
                        await pipe.execute()
            except Exception as exc:
                self.stats.put_failures += len(items) - start
                self._failed("write", exc)
                break
            self._ok()
            written += len(chunk)
            self.stats.puts += len(chunk)
            self.stats.put_bytes += sum(len(v) for _, v, _ in chunk)
        return written

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s * 2):
                return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except Exception:  # closing a client whose server is gone
            pass


def open_store(settings: Settings) -> RedisSessionStore | None:
    """The store ``settings`` name (None without ``session_store``); the password comes from
    ``session_store_password_file`` when set (a mounted Secret), else from the URL."""
    if settings.session_store is None:
        return None
    password = None
    if settings.session_store_password_file is not None:
        try:
            password = settings.session_store_password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"session_store_password_file: cannot read it ({type(e).__name__})") from None
    return RedisSessionStore(
        settings.session_store.get_secret_value(),
        settings.session_store_deployment,
        settings.session_store_timeout_s,
        password,
    )
