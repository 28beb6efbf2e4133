"""Client authentication: the authenticated client, and a per-process cache of tenants and secret hashes.

Invariants:
    * The presented secret is compared in constant time against every live secret of the client; an
      unknown client id costs the same comparison, and every failure is answered no sooner than
      :data:`FAILURE_FLOOR_SECONDS` after the call began, so timing reveals neither which ids exist nor
      what failed (tests/test_auth_timing.py).
    * A disabled tenant fails exactly like a wrong secret.
    * The cache is never trusted on its own. ``authenticate(..., cached=True)`` may answer from it, but
      only for callers that re-check the snapshot inside the very statement that does their work
      (:data:`STILL_VALID`: the tenant still active and unchanged since the snapshot, the secret still
      live). When that check fails the caller evicts the entry and authenticates again from the
      database. A secret revoked or a tenant disabled or edited on any replica therefore stops working
      everywhere at once, with no cross-replica invalidation messages. Callers that cannot re-check in
      their statement use ``cached=False``, which always reads the database (one round trip).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from broker import errors
from broker.crypto import tokens

if TYPE_CHECKING:
    import asyncpg

    from broker.context import Runtime
    from broker.http.auth import Credentials

TOUCH_INTERVAL = timedelta(minutes=5)
FAILURE_FLOOR_SECONDS = 0.02
"""A failed authentication answers no sooner than this after it began (see :func:`authenticate`)."""
CACHE_SECONDS = 60.0
"""How long a snapshot may serve ``cached=True`` callers before it is read again (memory, not safety)."""
MAX_CACHED_CLIENTS = 10_000
_DUMMY_HASH = "hmac-sha256$" + "0" * 64

_LOAD = """
SELECT t.id, t.client_id, t.name, t.kind, t.status, t.allowed_scopes, t.default_scopes, t.access_token_ttl,
       t.refresh_token_ttl, t.updated_at, s.id AS secret_id, s.secret_hash, s.expires_at, s.last_used_at,
       u.mode AS upstream
FROM tenants AS t
JOIN client_secrets AS s ON s.tenant_id = t.id
LEFT JOIN tenant_upstreams AS u ON u.tenant_id = t.id
WHERE t.client_id = $1 AND s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > now())
"""

STILL_VALID = """
SELECT 1 FROM tenants AS t JOIN client_secrets AS s ON s.tenant_id = t.id
WHERE t.id = {tenant} AND t.status = 'active' AND t.updated_at = {updated_at} AND s.id = {secret}
  AND s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > now())
"""
"""A SQL fragment (format the three parameter placeholders in) that selects one row while a snapshot
still holds: embed it in the statement that does the work, see the module docstring."""

_TOUCH = "UPDATE client_secrets SET last_used_at = now() WHERE id = $1"


class StaleClient(Exception):
    """A cached snapshot failed its :data:`STILL_VALID` check; nothing was written. Authenticate again."""


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    """A tenant as it was when its client authenticated, and the secret it used.

    ``from_cache`` is True when the snapshot came from the cache rather than from the database during
    this request (a refusal based on it is worth re-checking against a fresh read). ``upstream`` is the
    gateway mode (``held`` or ``transparent``) of a tenant with an upstream, else None (issuer mode):
    routes dispatch on it with one comparison. Setting or removing an upstream bumps the tenant's
    ``updated_at``, so a stale snapshot fails its :data:`STILL_VALID` check.
    """

    id: uuid.UUID
    client_id: str
    name: str
    kind: str
    status: str
    allowed_scopes: tuple[str, ...]
    default_scopes: tuple[str, ...]
    access_token_ttl: int | None
    refresh_token_ttl: int | None
    updated_at: datetime
    secret_id: uuid.UUID
    from_cache: bool = False
    upstream: str | None = None


@dataclass(frozen=True, slots=True)
class _Secret:
    id: uuid.UUID
    hash: str
    expires_at: datetime | None


@dataclass(slots=True)
class _Entry:
    loaded: float
    client: AuthenticatedClient | None  # None: the client id has no live secret (or does not exist)
    secrets: tuple[_Secret, ...]
    touched: dict[uuid.UUID, datetime]


class ClientCache:
    """Snapshots of recently authenticated clients by client id (a plain class: Litestar inspects dataclasses)."""

    def __init__(self, ttl: float = CACHE_SECONDS, capacity: int = MAX_CACHED_CLIENTS) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"ClientCache(entries={len(self._entries)})"

    def get(self, client_id: str) -> _Entry | None:
        """The entry of ``client_id`` unless missing or older than the cache's lifetime."""
        entry = self._entries.get(client_id)
        if entry is None or time.monotonic() - entry.loaded > self._ttl:
            return None
        return entry

    def put(self, client_id: str, entry: _Entry) -> None:
        """Remember an entry (the whole cache is dropped when it is full)."""
        if len(self._entries) >= self._capacity:
            self._entries.clear()  # crude but bounded; a full cache refills from the database
        self._entries[client_id] = entry

    def evict(self, client_id: str) -> None:
        """Forget a client (its snapshot failed a :data:`STILL_VALID` check)."""
        self._entries.pop(client_id, None)

    def clear(self) -> None:
        """Forget every client."""
        self._entries.clear()


async def authenticate(runtime: Runtime, credentials: Credentials, *, cached: bool = False) -> AuthenticatedClient:
    """Authenticate a client by id and secret.

    Args:
        runtime: The process runtime (hot pool, key ring, client cache).
        credentials: What the request presented.
        cached: Whether a cached snapshot may answer. Only for callers that check :data:`STILL_VALID`
            in their own statement (see the module docstring).

    Raises:
        InvalidClient: unknown client, wrong secret, or disabled tenant.
    """
    started = time.monotonic()
    entry = runtime.clients.get(credentials.client_id) if cached else None
    client = _match(runtime, entry, credentials) if entry is not None else None
    if client is None:
        entry = await _load(runtime, credentials.client_id)
        client = _match(runtime, entry, credentials)
        if client is not None:
            client = replace(client, from_cache=False)
    if client is None:
        await asyncio.sleep(FAILURE_FLOOR_SECONDS - (time.monotonic() - started))
        raise errors.InvalidClient("client authentication failed", debug="unknown client, bad secret or disabled")
    await _touch(runtime, entry, client.secret_id)
    return client


def _match(runtime: Runtime, entry: _Entry, credentials: Credentials) -> AuthenticatedClient | None:
    hash_key = runtime.ring.hash_key
    if not entry.secrets:
        # Unknown client id: spend the same comparison a known one costs.
        tokens.verify_secret(hash_key, credentials.secret, _DUMMY_HASH)
        return None
    now = datetime.now(UTC)
    matched: _Secret | None = None
    for secret in entry.secrets:  # every secret is compared: no early exit
        if tokens.verify_secret(hash_key, credentials.secret, secret.hash):
            matched = secret
    if matched is None or entry.client is None or entry.client.status != "active":
        return None
    if matched.expires_at is not None and matched.expires_at <= now:
        return None
    if matched.id == entry.client.secret_id:
        return entry.client
    return replace(entry.client, secret_id=matched.id)


async def _load(runtime: Runtime, client_id: str) -> _Entry:
    rows = await runtime.hot.fetch(_LOAD, client_id)
    entry = _Entry(
        loaded=time.monotonic(),
        client=_client_of(rows[0]) if rows else None,
        secrets=tuple(_Secret(row["secret_id"], row["secret_hash"], row["expires_at"]) for row in rows),
        touched={row["secret_id"]: row["last_used_at"] for row in rows if row["last_used_at"] is not None},
    )
    if rows:
        runtime.clients.put(client_id, entry)
    else:
        runtime.clients.evict(client_id)
    return entry


def _client_of(row: asyncpg.Record) -> AuthenticatedClient:
    return AuthenticatedClient(
        id=row["id"],
        client_id=row["client_id"],
        name=row["name"],
        kind=row["kind"],
        status=row["status"],
        allowed_scopes=tuple(row["allowed_scopes"]),
        default_scopes=tuple(row["default_scopes"]),
        access_token_ttl=row["access_token_ttl"],
        refresh_token_ttl=row["refresh_token_ttl"],
        updated_at=row["updated_at"],
        secret_id=row["secret_id"],
        from_cache=True,
        upstream=row["upstream"],
    )


async def _touch(runtime: Runtime, entry: _Entry | None, secret_id: uuid.UUID) -> None:
    """Record, at most every :data:`TOUCH_INTERVAL` per process, that a secret was used."""
    if entry is None:  # pragma: no cover - a successful authentication always has an entry
        return
    now = datetime.now(UTC)
    last = entry.touched.get(secret_id)
    if last is not None and now - last <= TOUCH_INTERVAL:
        return
    entry.touched[secret_id] = now
    await runtime.hot.execute(_TOUCH, secret_id)
