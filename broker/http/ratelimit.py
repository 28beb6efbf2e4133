"""Throttling of failed client and admin authentication (brute force), per client id and per address.

Only *failures* count. A request is refused with ``RateLimited`` (429, ``Retry-After``) before its secret is
checked when, over the last sliding window (``BROKER_AUTH_FAILURE_WINDOW_SECONDS``, 60 s):

* **pair**: this address failed for this client id ``BROKER_AUTH_FAILURES_PER_CLIENT_ADDRESS`` times (10):
  one address guessing one client's secret;
* **address**: this address failed ``BROKER_AUTH_FAILURES_PER_ADDRESS`` times (100), whatever the client
  id: one address spraying many client ids (or a shared NAT that is itself hammering);
* **client**: this client id failed ``BROKER_AUTH_FAILURES_PER_CLIENT`` times (100) from all addresses
  together *and* this address failed for it at least once: many addresses guessing one secret each get
  one guess per window, while an address that has not failed (the real client) is never locked out by
  someone else's failures.

Invariants:
    * Success costs nothing: a successful authentication writes no counter, and the check reads counters
      only for keys this process saw fail within the window (a local, bounded set), so a client with no
      recent failures never waits for Redis. With several replicas sharing Redis, each replica lets at
      most one failure per key and window through unchecked before it starts reading the shared counters.
    * The window slides (a weighted pair of fixed windows, as in Cloudflare's and Redis' usual
      "sliding window counter"), so a limit is never reset in one step by a window boundary, and a
      client that stops failing is let in again within one window at most (``Retry-After`` says when).
    * Counters are shared across replicas when ``BROKER_REDIS_URL`` is set; when Redis does not answer
      (``REDIS_TIMEOUT_SECONDS``), the process falls back to its own counters and logs it: authentication
      never depends on Redis being up.
    * Memory is bounded: the in-process counters keep at most ``MAX_LOCAL_KEYS`` keys, oldest evicted.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from broker import errors

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from broker.settings import Settings

log = structlog.get_logger("broker.ratelimit")

MAX_LOCAL_KEYS = 100_000
REDIS_TIMEOUT_SECONDS = 0.25
REDIS_PREFIX = "broker:authfail"
ADMIN = "admin"
"""The pseudo client id of admin API key failures (their own pair and client counters)."""


@dataclass(frozen=True)
class Window:
    """Counts of one key: the previous and the current fixed window, and how far into the current one."""

    previous: int
    current: int
    elapsed: float
    """Fraction of the current window that has passed, 0 <= elapsed < 1."""

    @property
    def estimate(self) -> float:
        """Failures in the last sliding window: the previous window weighted by the part still covered."""
        return self.previous * (1 - self.elapsed) + self.current

    def reaches(self, limit: int) -> bool:
        """Whether ``limit`` failures are counted: the estimate, rounded up, is at least ``limit``.

        Rounding up keeps a window boundary from letting one more failure through (just after it the
        previous window's weight is a hair below 1).
        """
        return self.estimate > limit - 1

    def seconds_until_allowed(self, limit: int, width: int) -> float:
        """How long until :meth:`reaches` turns false if nothing else fails."""
        floor = limit - 1
        if self.estimate <= floor:
            return 0.0
        if self.current > floor:
            # Only the next window can help, once the current count's weight has shrunk enough.
            return (1 - self.elapsed) * width + (1 - floor / self.current) * width
        return max(0.0, 1 - (floor - self.current) / self.previous - self.elapsed) * width


class Counters(Protocol):
    """Sliding-window failure counters."""

    async def add(self, keys: Sequence[str], now: float) -> None:
        """Count one failure on each key."""

    async def read(self, keys: Sequence[str], now: float) -> list[Window]:
        """The counts of each key."""


class LocalCounters:
    """Counters in this process (bounded; the oldest keys are evicted first)."""

    def __init__(self, width: int, max_keys: int = MAX_LOCAL_KEYS) -> None:
        self.width = width
        self.max_keys = max_keys
        self._counts: OrderedDict[str, tuple[int, int, int]] = OrderedDict()  # key -> (index, current, previous)

    def _rolled(self, key: str, index: int) -> tuple[int, int]:
        stored = self._counts.get(key)
        if stored is None:
            return 0, 0
        stored_index, current, previous = stored
        if stored_index == index:
            return current, previous
        if stored_index == index - 1:
            return 0, current
        return 0, 0

    async def add(self, keys: Sequence[str], now: float) -> None:
        """Count one failure on each key."""
        index = int(now // self.width)
        for key in keys:
            current, previous = self._rolled(key, index)
            self._counts[key] = (index, current + 1, previous)
            self._counts.move_to_end(key)
        while len(self._counts) > self.max_keys:
            self._counts.popitem(last=False)

    async def read(self, keys: Sequence[str], now: float) -> list[Window]:
        """The counts of each key."""
        index, elapsed = int(now // self.width), (now % self.width) / self.width
        windows = []
        for key in keys:
            current, previous = self._rolled(key, index)
            windows.append(Window(previous, current, elapsed))
        return windows


class RedisCounters:
    """Counters shared by every replica: one Redis key per key and fixed window, expiring after two."""

    def __init__(self, url: str, width: int) -> None:
        from redis import asyncio as redis  # noqa: PLC0415 - only imported when BROKER_REDIS_URL is set

        self.width = width
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
        )

    def _name(self, key: str, index: int) -> str:
        return f"{REDIS_PREFIX}:{key}:{index}"

    async def add(self, keys: Sequence[str], now: float) -> None:
        """Count one failure on each key (one round trip)."""
        index = int(now // self.width)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            name = self._name(key, index)
            pipe.incr(name)
            pipe.expire(name, 2 * self.width + 1)
        await pipe.execute()

    async def read(self, keys: Sequence[str], now: float) -> list[Window]:
        """The counts of each key (one round trip)."""
        index, elapsed = int(now // self.width), (now % self.width) / self.width
        names = [name for key in keys for name in (self._name(key, index - 1), self._name(key, index))]
        values = await self.client.mget(names)
        counts = [int(v) if v is not None else 0 for v in values]
        return [Window(counts[2 * i], counts[2 * i + 1], elapsed) for i in range(len(keys))]

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


def _hashed(value: str) -> str:
    # Client ids are caller-chosen text up to 256 characters: keys stay short and printable.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class Limits:
    """The three thresholds and the window width (seconds)."""

    window: int
    per_pair: int
    per_address: int
    per_client: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits ``BROKER_AUTH_*`` configures."""
        return cls(
            window=settings.auth_failure_window_seconds,
            per_pair=settings.auth_failures_per_client_address,
            per_address=settings.auth_failures_per_address,
            per_client=settings.auth_failures_per_client,
        )


class AuthThrottle:
    """Failure counters and the refusal rule (see the module docstring). One per serving process."""

    def __init__(self, limits: Limits, shared: Counters | None = None, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self.local = LocalCounters(limits.window)
        self.shared = shared
        self.clock = clock
        self._suspects: OrderedDict[str, float] = OrderedDict()  # keys that failed here -> forget after

    @staticmethod
    def keys(client_id: str, address: str) -> tuple[str, str, str]:
        """The pair, address and client keys of a request."""
        client = _hashed(client_id)
        return f"p:{client}:{address}", f"a:{address}", f"c:{client}"

    def _suspect(self, key: str, now: float) -> bool:
        until = self._suspects.get(key)
        if until is None:
            return False
        if until <= now:
            del self._suspects[key]
            return False
        return True

    def _remember(self, keys: Sequence[str], now: float) -> None:
        # A failure counts until the end of the next window (it is the "previous" window there).
        until = (now // self.limits.window + 2) * self.limits.window
        for key in keys:
            self._suspects[key] = until
            self._suspects.move_to_end(key)
        while len(self._suspects) > MAX_LOCAL_KEYS:
            self._suspects.popitem(last=False)

    async def _counters(self, operation: str, keys: Sequence[str], now: float) -> Any:  # noqa: ANN401
        if self.shared is not None:
            try:
                return await getattr(self.shared, operation)(keys, now)
            except (OSError, TimeoutError, ConnectionError) as exc:
                log.warning("rate limit store unavailable, counting in this process", error=type(exc).__name__)
            except Exception as exc:
                if type(exc).__module__.split(".")[0] != "redis":
                    raise
                log.warning("rate limit store unavailable, counting in this process", error=type(exc).__name__)
        return await getattr(self.local, operation)(keys, now)

    async def check(self, client_id: str, address: str) -> None:
        """Refuse the request before its credentials are checked when a limit is reached.

        Raises:
            RateLimited: a limit is reached; ``retry_after`` says when to try again.
        """
        if not self._suspects:
            return  # nothing failed here recently: not even the keys are worth hashing
        now = self.clock()
        pair, addr, client = self.keys(client_id, address)
        if not (self._suspect(pair, now) or self._suspect(addr, now)):
            return  # the success path: nothing failed here recently, no store is asked
        pair_w, addr_w, client_w = await self._counters("read", (pair, addr, client), now)
        width, limits = self.limits.window, self.limits
        waits = []
        if pair_w.reaches(limits.per_pair):
            waits.append(pair_w.seconds_until_allowed(limits.per_pair, width))
        if addr_w.reaches(limits.per_address):
            waits.append(addr_w.seconds_until_allowed(limits.per_address, width))
        if client_w.reaches(limits.per_client) and pair_w.reaches(1):
            waits.append(
                min(client_w.seconds_until_allowed(limits.per_client, width), pair_w.seconds_until_allowed(1, width))
            )
        if waits:
            retry_after = max(1, math.ceil(max(waits)))
            log.info("authentication throttled", client_id=client_id[:64], address=address, retry_after=retry_after)
            raise errors.RateLimited(
                f"too many failed authentication attempts; retry in {retry_after} s", retry_after=retry_after
            )

    async def failed(self, client_id: str, address: str) -> None:
        """Count a failed authentication of ``client_id`` from ``address``."""
        now = self.clock()
        keys = self.keys(client_id, address)
        self._remember(keys[:2], now)
        await self._counters("add", keys, now)

    async def close(self) -> None:
        """Release the shared store's connections."""
        if isinstance(self.shared, RedisCounters):
            await self.shared.close()


def from_settings(settings: Settings) -> AuthThrottle:
    """The throttle ``settings`` describe: shared through Redis when ``BROKER_REDIS_URL`` is set."""
    limits = Limits.from_settings(settings)
    shared = RedisCounters(settings.redis_url, limits.window) if settings.redis_url else None
    return AuthThrottle(limits, shared)


_STATE_KEY = "auth_throttle"


def of(state: Any, settings: Settings) -> AuthThrottle:  # noqa: ANN401 - Litestar's application State
    """The application's throttle, created on first use (on the serving event loop)."""
    throttle: AuthThrottle | None = getattr(state, _STATE_KEY, None)
    if throttle is None:
        throttle = from_settings(settings)
        setattr(state, _STATE_KEY, throttle)
    return throttle


async def close(state: Any) -> None:  # noqa: ANN401 - Litestar's application State
    """Close the application's throttle, if one was created."""
    throttle: AuthThrottle | None = getattr(state, _STATE_KEY, None)
    if throttle is not None:
        await throttle.close()


def address_of(scope: Any) -> str:  # noqa: ANN401 - an ASGI scope
    """The source address of a request (the peer; see docs/security.md for deployments behind a proxy)."""
    client = scope.get("client")
    return str(client[0])[:64] if client else "unknown"
