"""The Redis backend: redis-py asyncio (hiredis parser when installed), short timeouts, at most
one quick retry. The circuit breaker in `AnswerCache` is the main protection when Redis is down;
this backend only makes sure that a failure is quick and is reported as one of
`BackendTimeout`, `BackendUnavailable` or `BackendError`."""

from __future__ import annotations

import asyncio

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.maint_notifications import MaintNotificationsConfig

from gateway.cache._backend import BackendError, BackendTimeout, BackendUnavailable

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_CONNECTIONS",
    "OPERATION_TIMEOUT",
    "RETRIES",
    "SOCKET_TIMEOUT",
    "RedisBackend",
]

SOCKET_TIMEOUT = 0.05  # s, one read or write; a GET on a LAN takes well under 1 ms
CONNECT_TIMEOUT = 0.1  # s, TCP connect (a refused connect is immediate; this bounds a black hole)
OPERATION_TIMEOUT = 0.25  # s, one whole get or set, retry and reconnect included
RETRIES = 1  # absorbs one stale pooled connection (e.g. after a Redis restart), no more
MAX_CONNECTIONS = 64  # per backend; callers beyond it wait (within OPERATION_TIMEOUT)
_BACKOFF = ExponentialWithJitterBackoff(base=0.005, cap=0.02)


class RedisBackend:
    """`target` is a redis URL ("redis://host:6379/0", "rediss://...", "unix://...") or a
    ready `redis.asyncio.Redis` client (whose timeouts, retry and pool are then the caller's;
    it is not closed by `close`). Values are stored with `SET key value PX ttl`.

    From a URL: a blocking pool of at most `max_connections` (a burst waits for a connection
    instead of opening thousands, which Redis would refuse at `maxclients`), the hiredis parser
    when installed, and no CLIENT MAINT_NOTIFICATIONS handshake (Redis 7.0 refuses it: one
    wasted round trip per connection)."""

    def __init__(
        self,
        target: str | Redis,
        *,
        socket_timeout: float = SOCKET_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        operation_timeout: float = OPERATION_TIMEOUT,
        retries: int = RETRIES,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if operation_timeout <= 0:
            raise ValueError("operation_timeout is positive")
        self._timeout = operation_timeout
        if isinstance(target, str):
            pool = BlockingConnectionPool.from_url(
                target,
                max_connections=max_connections,
                timeout=None,  # the wait is bounded by operation_timeout
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                retry=Retry(_BACKOFF, retries),
                maint_notifications_config=MaintNotificationsConfig(enabled=False),
            )
            self._client: Redis = Redis.from_pool(pool)
            self._owned = True
        else:
            self._client = target
            self._owned = False

    @property
    def client(self) -> Redis:
        return self._client

    async def get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(self._timeout):
                value: object = await self._client.get(key)
        except Exception as exc:
            raise _translate(exc) from exc
        if value is None or isinstance(value, bytes):
            return value
        raise BackendError(f"Redis GET returned {type(value).__name__}, not bytes")

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        milliseconds = max(1, round(ttl_seconds * 1000))
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(key, value, px=milliseconds)
        except Exception as exc:
            raise _translate(exc) from exc

    async def close(self) -> None:
        if self._owned:
            await self._client.aclose()


def _translate(exc: Exception) -> BackendError:
    # builtins.TimeoutError (asyncio's) is an OSError: test timeouts first.
    if isinstance(exc, redis_errors.TimeoutError | TimeoutError):
        return BackendTimeout(f"Redis did not answer in time ({type(exc).__name__})")
    if isinstance(exc, redis_errors.ConnectionError | OSError):
        return BackendUnavailable(f"Redis is unreachable ({type(exc).__name__})")
    return BackendError(f"Redis failed ({type(exc).__name__})")
