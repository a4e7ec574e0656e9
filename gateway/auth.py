"""Gateway API keys, their scopes, and per-key rate limits.

A client presents its key as ``x-memgate-key: KEY`` or ``Authorization: Bearer KEY``. Keys are
configured as SHA-256 hashes (or read from the environment and hashed at load); each has the
namespaces it may use (exact names or ``prefix*`` patterns), whether it may use the memory
management API, and whether it is an admin (erase and list namespaces, every namespace).
With no keys configured, every request is allowed (and ``memgate serve`` binds only to
loopback unless told otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config import KeySettings, Settings
from gateway.errors import Forbidden, RateLimited, Unauthorized

if TYPE_CHECKING:
    from limits import RateLimitItem

log = logging.getLogger("memgate.auth")


@dataclass(frozen=True)
class Principal:
    """Who is calling and what it may do."""

    name: str
    namespaces: tuple[str, ...] = ("*",)
    memory_api: bool = True
    admin: bool = True
    # The gateway key came in the Authorization header (so it must not go upstream).
    via_authorization: bool = False

    def may_use(self, namespace: str) -> bool:
        if self.admin:
            return True
        for pattern in self.namespaces:
            if pattern.endswith("*"):
                if namespace.startswith(pattern[:-1]):
                    return True
            elif namespace == pattern:
                return True
        return False

    def require_namespace(self, namespace: str) -> None:
        if not self.may_use(namespace):
            raise Forbidden(f"this key may not use namespace {namespace!r}", param="namespace")

    def require_memory_api(self, namespace: str) -> None:
        self.require_namespace(namespace)
        if not (self.memory_api or self.admin):
            raise Forbidden("this key may not use the memory management API")

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this operation needs an admin key")


OPEN = Principal(name="anonymous")


class RateLimiter:
    """Token buckets in this process, one per caller: ``per_minute`` requests a minute, bursts
    up to that. With several gateway processes each allows that much: ``SharedRateLimiter``
    counts for the fleet."""

    def __init__(self, *, max_callers: int = 100_000) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._max_callers = max_callers

    async def acheck(self, who: str, per_minute: int) -> None:
        self.check(who, per_minute)

    def wait(self, who: str, per_minute: int, now: float | None = None) -> int:
        """Seconds until ``who`` has a request left (0: now), without using one."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if who not in self._buckets:
                return 0
            tokens, last = self._buckets[who]
        tokens = min(float(per_minute), tokens + (now - last) * per_minute / 60.0)
        return 0 if tokens >= 1.0 else math.ceil((1.0 - tokens) * 60.0 / per_minute)

    def check(self, who: str, per_minute: int, now: float | None = None) -> None:
        if per_minute <= 0:
            return
        now = time.monotonic() if now is None else now
        rate = per_minute / 60.0
        with self._lock:
            if who not in self._buckets and len(self._buckets) >= self._max_callers:
                self._buckets.popitem(last=False)  # the least recently seen caller: refilled
            tokens, last = self._buckets.pop(who, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[who] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / rate)
                raise RateLimited(
                    f"rate limit of {per_minute} requests a minute reached; retry in {wait} s",
                    headers={"retry-after": str(wait)},
                )
            self._buckets[who] = (tokens - 1.0, now)


class SharedRateLimiter:
    """Rate limits counted in Redis for every gateway process that uses the same one: a
    moving window of one minute a caller (``limits``' moving-window strategy, whose log of
    hits lives in a Redis sorted set). If Redis cannot be reached the request is let through
    and the failure logged (at most once a minute): limits are a guard, not a dependency."""

    def __init__(self, uri: str, *, key_prefix: str = "memgate") -> None:
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        self.uri = uri
        self._storage = RedisStorage(
            uri, implementation="redispy", key_prefix=key_prefix, wrap_exceptions=True
        )
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._items: dict[int, RateLimitItem] = {}
        self._warned = -math.inf

    async def acheck(self, who: str, per_minute: int) -> None:
        if per_minute <= 0:
            return
        from limits import RateLimitItemPerMinute
        from limits.errors import StorageError

        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)
        try:
            if await self._limiter.hit(item, who):
                return
            stats = await self._limiter.get_window_stats(item, who)
        except StorageError as exc:
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning("rate limit store %s unreachable, not limiting: %s", self.uri, exc)
            return
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(
            f"rate limit of {per_minute} requests a minute reached; retry in {wait} s",
            headers={"retry-after": str(wait)},
        )


def presented_key(headers: Mapping[str, str]) -> tuple[str | None, bool]:
    """The key the client presented, and whether it came in ``Authorization``."""
    key = headers.get("x-memgate-key")
    if key:
        return key.strip(), False
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), True
    return None, False


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._by_hash: dict[str, KeySettings] = {k.key_sha256: k for k in settings.keys}
        self._default_rpm = settings.auth.requests_per_minute
        # Wrong keys, counted a client address at a time in this process (a guess at keys is
        # slowed down; the right key from that address waits too, until the minute passes).
        self._failed = RateLimiter()
        self._failed_rpm = settings.auth.failed_keys_per_minute
        uri = settings.auth.rate_limit_storage
        self.limiter: RateLimiter | SharedRateLimiter = (
            SharedRateLimiter(uri) if uri else RateLimiter()
        )

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    async def authenticate(self, headers: Mapping[str, str], client: str) -> Principal:
        if not self.enabled:
            await self.limiter.acheck(f"addr:{client}", self._default_rpm)
            return OPEN
        failed = f"failed:{client}"
        if self._failed_rpm > 0 and (wait := self._failed.wait(failed, self._failed_rpm)):
            raise RateLimited(
                f"too many wrong API keys from this address; retry in {wait} s",
                headers={"retry-after": str(wait)},
            )
        key, via_authorization = presented_key(headers)
        found = (
            self._by_hash.get(hashlib.sha256(key.encode()).hexdigest()) if key is not None else None
        )
        if found is None:
            if self._failed_rpm > 0:
                with contextlib.suppress(RateLimited):
                    self._failed.check(failed, self._failed_rpm)
            if key is None:
                raise Unauthorized(
                    "missing API key: send it as 'Authorization: Bearer KEY' or "
                    "'x-memgate-key: KEY'"
                )
            raise Unauthorized("incorrect API key provided")
        rpm = found.requests_per_minute if found.requests_per_minute >= 0 else self._default_rpm
        await self.limiter.acheck(f"key:{found.name}", rpm)
        return Principal(
            name=found.name,
            namespaces=found.namespaces,
            memory_api=found.memory_api,
            admin=found.admin,
            via_authorization=via_authorization,
        )
