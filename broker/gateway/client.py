"""Calls to a tenant's upstream: one pooled httpx client, timeouts, bounded retries and a circuit breaker.

Invariants:
    * The upstream credentials travel only in the ``PLAID-CLIENT-ID``/``PLAID-SECRET`` headers of the
      request; no log line, error description, audit detail or metric carries them (``Upstream`` masks
      its ``repr``, and failures are described by exception type and base URL only).
    * A request is retried only when that cannot do harm: ``safe`` calls (introspection, revocation,
      user reads and removals: repeating them changes nothing) on timeouts, transport errors and 5xx;
      every call when the connection could not be opened (the request never left). Token issuance that
      may have reached the upstream is never repeated, so a caller never gets two grants for one request.
    * Each upstream base URL has a circuit breaker: after ``upstream_breaker_failures`` consecutive
      failures (transport error, timeout, 5xx, malformed answer) it opens for
      ``upstream_breaker_open_seconds``; calls then fail at once with 503 and ``Retry-After``. After that
      one probe goes through (half-open): success closes the breaker, failure opens it again.
    * An upstream that answered but refused (4xx) is healthy: the answer is relayed, not counted.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from broker import errors
from broker.observability import metrics

if TYPE_CHECKING:
    from broker.settings import Settings

log = structlog.get_logger("broker.gateway")

PLAID_VERSION = "2020-09-14"
RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0)
UNAVAILABLE_RETRY_AFTER = 2
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True, repr=False)
class Upstream:
    """A gateway tenant's upstream: where it is, who the tenant is there, and the mode of its tokens."""

    tenant_id: uuid.UUID
    base_url: str
    client_id: str
    secret: str
    mode: str

    def __repr__(self) -> str:
        return f"Upstream(base_url={self.base_url!r}, client_id={self.client_id!r}, mode={self.mode!r}, secret=***)"

    @property
    def held(self) -> bool:
        """Whether broker holds the upstream refresh tokens (the default) rather than passing them on."""
        return self.mode == "held"

    def headers(self) -> dict[str, str]:
        """The request headers that authenticate the tenant at its upstream."""
        return {
            "PLAID-CLIENT-ID": self.client_id,
            "PLAID-SECRET": self.secret,
            "Plaid-Version": PLAID_VERSION,
            "Accept": "application/json",
        }


@dataclass(frozen=True)
class Reply:
    """An upstream's JSON answer (any status below 500)."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        """Whether the upstream accepted the request (2xx)."""
        return 200 <= self.status < 300  # noqa: PLR2004

    @property
    def request_id(self) -> str | None:
        """The upstream's own request id, kept in audit rows."""
        value = self.body.get("request_id")
        return value if isinstance(value, str) else None

    @property
    def bad_credentials(self) -> bool:
        """Whether the upstream refused the tenant's upstream credentials (the operator's configuration)."""
        return (
            self.status == 401  # noqa: PLR2004
            or self.body.get("error") == "invalid_client"
            or self.body.get("error_code") == "INVALID_API_KEYS"
        )

    def refused(self) -> errors.UpstreamError:
        """The error that relays this refusal to the caller: same status, the upstream's error body.

        Except when the upstream refused the tenant's *upstream* credentials: relaying that as
        ``invalid_client`` would tell the caller its own broker credentials are wrong. It is a gateway
        misconfiguration, answered 502 (and audited with the upstream's answer).
        """
        if self.bad_credentials:
            return errors.UpstreamError(
                "the upstream refused this tenant's upstream credentials; the operator must update them",
                status=502,
                retry_after=UNAVAILABLE_RETRY_AFTER,
                upstream_request_id=self.request_id,
                debug=f"upstream {self.status} refused the upstream credentials",
            )
        return errors.UpstreamError(
            "the upstream refused the request",
            status=self.status,
            body=self.body,
            upstream_request_id=self.request_id,
            debug=f"upstream {self.status}, upstream request_id {self.request_id}",
        )


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


@dataclass
class Breaker:
    """Per-upstream circuit breakers (closed, open, half-open), counted in this process."""

    threshold: int
    open_seconds: float
    _circuits: dict[str, _Circuit] = field(default_factory=dict)

    def state(self, key: str) -> str:
        """``closed``, ``open`` or ``half_open`` (for tests and metrics)."""
        circuit = self._circuits.get(key)
        if circuit is None or circuit.opened_at is None:
            return "closed"
        return "open" if time.monotonic() - circuit.opened_at < self.open_seconds else "half_open"

    def before(self, key: str) -> None:
        """Let a call through, or refuse it at once while the circuit is open (one probe when half-open).

        Raises:
            UpstreamError: 503 while the circuit is open.
        """
        circuit = self._circuits.setdefault(key, _Circuit())
        if circuit.opened_at is None:
            return
        remaining = self.open_seconds - (time.monotonic() - circuit.opened_at)
        if remaining > 0 or circuit.probing:
            retry_after = max(1, math.ceil(remaining)) if remaining > 0 else 1
            raise errors.UpstreamError(
                "the upstream is unavailable, retry later",
                status=503,
                retry_after=retry_after,
                debug=f"circuit open for {key}",
            )
        circuit.probing = True

    def success(self, key: str) -> None:
        """The upstream answered: close the circuit."""
        self._circuits[key] = _Circuit()

    def failure(self, key: str) -> None:
        """The upstream failed: count it, and open (or re-open) the circuit at the threshold."""
        circuit = self._circuits.setdefault(key, _Circuit())
        circuit.failures += 1
        if circuit.probing or circuit.failures >= self.threshold:
            if circuit.opened_at is None or circuit.probing:
                log.warning("upstream circuit opened", upstream=key, failures=circuit.failures)
            circuit.opened_at = time.monotonic()
            circuit.probing = False


class UpstreamClient:
    """The process's client for every upstream (a plain class: one pooled ``httpx.AsyncClient``)."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.breaker = Breaker(settings.upstream_breaker_failures, settings.upstream_breaker_open_seconds)

    def __repr__(self) -> str:
        return "UpstreamClient()"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            settings = self._settings
            timeout = httpx.Timeout(
                settings.upstream_timeout_seconds, connect=settings.upstream_connect_timeout_seconds
            )
            limits = httpx.Limits(
                max_connections=settings.upstream_max_connections,
                max_keepalive_connections=settings.upstream_max_connections,
            )
            self._client = httpx.AsyncClient(
                timeout=timeout,
                limits=limits,
                transport=self._transport,
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post(self, upstream: Upstream, path: str, body: dict[str, Any], *, safe: bool) -> Reply:
        """POST ``body`` as JSON to ``upstream`` and return its answer (see the module invariants).

        Raises:
            UpstreamError: 503 (unreachable, timed out, circuit open) or 502 (5xx, malformed answer),
                with ``Retry-After``. A 4xx is returned, not raised: the caller relays it.
        """
        key = upstream.base_url
        attempts = 1 + (self._settings.upstream_retries if safe else 0)
        connect_attempts = 1 + self._settings.upstream_retries
        attempt = 0
        while True:
            attempt += 1
            try:
                self.breaker.before(key)
            except errors.UpstreamError:
                metrics.UPSTREAM_REQUESTS.inc(path, "circuit_open")
                raise
            started = time.perf_counter()
            try:
                reply = await self._once(upstream, path, body)
            except httpx.ConnectError as exc:  # never sent: retrying is always safe
                failure = _unavailable(exc, key)
                retry = attempt < connect_attempts
            except httpx.PoolTimeout as exc:  # our own pool is exhausted: never sent
                self.breaker.success(key)  # not the upstream's fault
                raise _unavailable(exc, key) from None
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                failure = _unavailable(exc, key) if isinstance(exc, httpx.TimeoutException) else _bad(exc, key)
                retry = attempt < attempts
            except _Malformed as exc:
                failure = errors.UpstreamError(
                    "the upstream sent an invalid answer",
                    status=502,
                    retry_after=UNAVAILABLE_RETRY_AFTER,
                    debug=f"malformed answer from {key}: {exc}",
                )
                retry = False
            else:
                metrics.UPSTREAM_DURATION.observe(time.perf_counter() - started, path)
                if reply.status < 500:  # noqa: PLR2004
                    self.breaker.success(key)
                    metrics.UPSTREAM_REQUESTS.inc(path, "ok" if reply.ok else "refused")
                    return reply
                failure = errors.UpstreamError(
                    "the upstream failed, retry later",
                    status=502,
                    retry_after=UNAVAILABLE_RETRY_AFTER,
                    debug=f"upstream {reply.status} from {key}, upstream request_id {reply.request_id}",
                )
                retry = attempt < attempts
            self.breaker.failure(key)
            metrics.UPSTREAM_REQUESTS.inc(path, "unavailable" if failure.http_status == 503 else "failed")  # noqa: PLR2004
            if not retry:
                raise failure
            await asyncio.sleep(RETRY_DELAYS[min(attempt - 1, len(RETRY_DELAYS) - 1)])

    async def _once(self, upstream: Upstream, path: str, body: dict[str, Any]) -> Reply:
        url = upstream.base_url + path
        async with self._http().stream("POST", url, json=body, headers=upstream.headers()) as response:
            raw = bytearray()
            async for chunk in response.aiter_bytes():
                raw += chunk
                if len(raw) > MAX_BODY_BYTES:
                    raise _Malformed("answer too large")
        if response.status_code >= 500:  # noqa: PLR2004
            parsed = _json(bytes(raw))
            return Reply(response.status_code, parsed if parsed is not None else {})
        parsed = _json(bytes(raw))
        if parsed is None:
            raise _Malformed(f"status {response.status_code}, not a JSON object")
        return Reply(response.status_code, parsed)


class _Malformed(Exception):
    """The upstream's answer is not a JSON object."""


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _unavailable(exc: Exception, key: str) -> errors.UpstreamError:
    return errors.UpstreamError(
        "the upstream is unavailable, retry later",
        status=503,
        retry_after=UNAVAILABLE_RETRY_AFTER,
        debug=f"{type(exc).__name__} calling {key}",
    )


def _bad(exc: Exception, key: str) -> errors.UpstreamError:
    return errors.UpstreamError(
        "the upstream failed, retry later",
        status=502,
        retry_after=UNAVAILABLE_RETRY_AFTER,
        debug=f"{type(exc).__name__} calling {key}",
    )
