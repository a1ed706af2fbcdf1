"""The answer cache: sealed answers encrypted (AES-256-GCM) under a hashed key covering
provider region, dataset, subject pseudonym, field set and purpose; kept in Redis or memory
behind a circuit breaker (`gateway.breaker`), so that when Redis is down the gateway answers
uncached and recovers by itself. Authorisation always comes first: the cache never decides who
may see an answer."""

from gateway.cache._backend import BackendTimeout, BackendUnavailable, CacheBackend, MemoryBackend
from gateway.cache._cache import AnswerCache
from gateway.cache._key import cache_key, redis_key
from gateway.cache._redis import RedisBackend

__all__ = [
    "AnswerCache",
    "BackendTimeout",
    "BackendUnavailable",
    "CacheBackend",
    "MemoryBackend",
    "RedisBackend",
    "cache_key",
    "redis_key",
]
