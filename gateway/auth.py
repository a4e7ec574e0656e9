"""Gateway API keys, their scopes, and per-key rate limits.

A client presents its key as ``x-memgate-key: KEY`` or ``Authorization: Bearer KEY``. Keys are
configured as SHA-256 hashes (or read from the environment and hashed at load); each has the
namespaces it may use (exact names or ``prefix*`` patterns), whether it may use the memory
management API, and whether it is an admin (erase and list namespaces, every namespace).
With no keys configured, every request is allowed (and ``memgate serve`` binds only to
loopback unless told otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from gateway.config import KeySettings, Settings
from gateway.errors import Forbidden, RateLimited, Unauthorized

if TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow

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
    """Rate limits: a moving window of one minute a caller (``limits``' moving-window strategy),
    the same rule whether it is counted in this process (``limits``' memory storage) or, with
    ``uri`` (``redis://...``), in Redis for every gateway process that uses the same one.

    Redis is a guard, not a dependency: a call to it that fails or takes longer than
    ``timeout`` seconds opens a circuit for ``cooldown`` seconds, during which (and for that
    request) the limit is counted in this process instead; the failure is logged once a
    circuit. So a hung Redis costs one request ``timeout``, not every request its stall."""

    def __init__(self, uri: str = "", *, timeout: float = 0.25, cooldown: float = 10.0) -> None:
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.uri = uri
        self.timeout = timeout
        self.cooldown = cooldown
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[int, RateLimitItem] = {}
        self._shared: AsyncMovingWindow | None = None
        if uri:
            from limits.aio.storage import RedisStorage
            from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow

            storage = RedisStorage(
                uri,
                implementation="redispy",
                key_prefix="memgate",
                wrap_exceptions=True,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
            self._shared = AsyncMovingWindow(storage)
        self._closed_at = -math.inf  # the circuit to Redis is open until then

    def _item(self, per_minute: int) -> RateLimitItem:
        item = self._items.get(per_minute)
        if item is None:
            from limits import RateLimitItemPerMinute

            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)
        return item

    async def acheck(self, who: str, per_minute: int) -> None:
        """Count a request of ``who``; ``RateLimited`` (with its retry-after) over the limit."""
        if per_minute <= 0:
            return
        if self._shared is None or time.monotonic() < self._closed_at:
            self.check(who, per_minute)
            return
        from limits.errors import StorageError

        item = self._item(per_minute)
        try:
            async with asyncio.timeout(self.timeout):
                if await self._shared.hit(item, who):
                    return
                stats = await self._shared.get_window_stats(item, who)
        except (StorageError, TimeoutError) as exc:
            self._closed_at = time.monotonic() + self.cooldown
            log.warning(
                "rate limit store %s failed (%s): counting in this process for %g s",
                self.uri,
                str(exc) or type(exc).__name__,
                self.cooldown,
            )
            self.check(who, per_minute)
            return
        _refuse(per_minute, stats.reset_time)

    def check(self, who: str, per_minute: int) -> None:
        """``acheck`` counted in this process (non-blocking: fit for the event loop)."""
        if per_minute <= 0:
            return
        item = self._item(per_minute)
        if not self._local.hit(item, who):
            _refuse(per_minute, self._local.get_window_stats(item, who).reset_time)

    def wait(self, who: str, per_minute: int) -> int:
        """Seconds until ``who`` may make a request again in this process (0: now), without
        counting one."""
        item = self._item(per_minute)
        if self._local.test(item, who):
            return 0
        return _seconds_until(self._local.get_window_stats(item, who).reset_time)


def _seconds_until(reset_time: float) -> int:
    return max(1, math.ceil(reset_time - time.time()))


def _refuse(per_minute: int, reset_time: float) -> NoReturn:
    wait = _seconds_until(reset_time)
    raise RateLimited(
        f"rate limit of {per_minute} requests a minute reached; retry in {wait} s",
        headers={"retry-after": str(wait)},
    )


# Wrong keys are counted a client address and the first characters of the key presented: a
# guess at one key is slowed down, and so is that key from that address, but a tenant sending
# a wrong key does not lock out another tenant's key from the same address (behind one proxy).
KEY_PREFIX_CHARS = 8


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
        # Wrong keys, counted in this process by client address and key prefix
        # (``KEY_PREFIX_CHARS``): a guess at a key is slowed down, and the right key with that
        # prefix from that address waits too, until a minute after the first wrong one.
        self._failed = RateLimiter()
        self._failed_rpm = settings.auth.failed_keys_per_minute
        self.limiter = RateLimiter(settings.auth.rate_limit_storage)

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    async def authenticate(self, headers: Mapping[str, str], client: str) -> Principal:
        if not self.enabled:
            await self.limiter.acheck(f"addr:{client}", self._default_rpm)
            return OPEN
        key, via_authorization = presented_key(headers)
        failed = f"failed:{client}:{(key or '')[:KEY_PREFIX_CHARS]}"
        if self._failed_rpm > 0 and (wait := self._failed.wait(failed, self._failed_rpm)):
            raise RateLimited(
                f"too many wrong API keys from this address; retry in {wait} s",
                headers={"retry-after": str(wait)},
            )
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
